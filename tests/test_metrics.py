"""Flip metrics: FlipCounter for any optimizer, log flip ratio, Larq's FlipRatio."""

import math

import pytest
import torch
from torch import nn

import onebit as ob
from onebit.metrics import FlipCounter, FlipRatio, log_flip_ratio


@pytest.mark.parametrize(
    "flips, n, expected",
    [
        (0, 100, math.log(1e-9)),
        (10, 100, math.log(0.1 + 1e-9)),
        (100, 100, math.log(1 + 1e-9)),
    ],
)
def test_log_flip_ratio(flips, n, expected):
    assert log_flip_ratio(flips, n) == pytest.approx(expected)
    assert log_flip_ratio(torch.tensor(flips), n).item() == pytest.approx(expected)


def test_counts_sign_changes_of_latent_weights_per_layer_and_in_total():
    a = nn.Parameter(torch.tensor([0.5, -0.5, 0.0, 0.2]))
    b = nn.Parameter(torch.tensor([[1.0, -1.0]]))
    counter = FlipCounter([("a", a), ("b", b)])
    opt = torch.optim.SGD([a, b], lr=1.0)
    counter.attach(opt)
    a.grad = torch.tensor(
        [1.0, -1.0, 0.5, 0.1]
    )  # 0.5 -> -0.5 flips, -0.5 -> 0.5 flips, 0 -> -0.5 flips, 0.2 -> 0.1 keeps
    b.grad = torch.tensor([[0.0, -3.0]])  # -1 -> 2 flips
    opt.step()
    assert counter.flips["a"].item() == 3 and counter.flips["b"].item() == 1
    assert counter.total.item() == 4
    assert counter.ratio().item() == pytest.approx(4 / 6)
    assert counter.log_ratio().item() == pytest.approx(math.log(4 / 6 + 1e-9))
    assert counter.log_ratios()["b"].item() == pytest.approx(math.log(0.5 + 1e-9))


def test_agrees_with_bop_flip_count():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(1000).sign())
    bop = ob.optim.Bop([w], gamma=0.5, threshold=1e-3)
    counter = FlipCounter([w])
    counter.attach(bop)
    for _ in range(3):
        w.grad = torch.randn(1000)
        bop.step()
        assert counter.total.item() == bop.last_flips.item() > 0


def test_first_update_reports_the_flips_since_construction():
    w = nn.Parameter(torch.tensor([1.0, -1.0, 1.0]))
    counter = FlipCounter([w])
    with torch.no_grad():
        w.neg_()
    assert counter.update()["0"].item() == 3  # the snapshot is the counter's construction
    assert counter.update()["0"].item() == 0


def test_needs_parameters():
    with pytest.raises(ValueError, match="no parameters"):
        FlipCounter([])


def test_larq_flip_ratio_worked_example():
    metric = FlipRatio()
    results = []
    for values in ([1, 1], [2, 2], [1, 2]):
        metric.update(torch.tensor(values))
        results.append(metric.result())
    assert results == [0.0, 1.0, 0.75]
    assert (metric.total, metric.count) == (1.5, 3)
    metric.reset()
    assert metric.result() == 0.0 and torch.equal(metric.previous, torch.tensor([1, 2]))


def test_larq_flip_ratio_wrong_shape():
    metric = FlipRatio()
    metric.update(torch.zeros(2))
    with pytest.raises(ValueError, match=r"tracks shape \(2,\), got \(3,\)"):
        metric.update(torch.zeros(3))
