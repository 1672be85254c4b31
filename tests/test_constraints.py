"""WeightClip and the constraint registry."""

import pytest
import torch

import onebit as ob
from onebit import constraints


@pytest.mark.parametrize("clip", [0.75, 1.0, 2.0])
def test_weight_clip_equals_clamp(clip):
    w = torch.linspace(-3, 3, 13)
    expected = w.clamp(-clip, clip)
    out = constraints.WeightClip(clip)(w)
    assert out is w and torch.equal(w, expected)


def test_get():
    assert isinstance(constraints.get("weight_clip"), constraints.WeightClip)
    assert constraints.get(None) is None
    fn = lambda w: w  # noqa: E731
    assert constraints.get(fn) is fn


@pytest.mark.parametrize(
    "bad, message",
    [
        ("clip", "unknown constraint 'clip'; valid names: weight_clip"),
        (3, "cannot use 3 as a constraint"),
    ],
)
def test_get_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        constraints.get(bad)


def test_weight_clip_rejects_non_positive():
    with pytest.raises(ValueError, match="clip_value=0 must be > 0"):
        constraints.WeightClip(0)


def _clipped_layer():
    layer = ob.QuantLinear(4, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    with torch.no_grad():
        layer.weight.fill_(5.0)
    return layer


def _step(optimizer, *layers):
    optimizer.zero_grad()
    sum(m(torch.ones(2, 4)).sum() for m in layers).backward()
    optimizer.step()


def test_enforced_after_every_step_of_an_optimizer_holding_the_weight():
    layer, other = _clipped_layer(), _clipped_layer()
    _step(torch.optim.SGD([layer.weight], lr=0.0), layer)
    assert layer.weight.abs().max() <= 1.0
    assert other.weight.abs().max() == 5.0, "a weight the optimizer does not hold is left alone"


def test_follows_new_param_groups_new_constraints_and_replaced_weights():
    layer, later = _clipped_layer(), ob.QuantLinear(4, 3, kernel_quantizer="ste_sign")
    opt = torch.optim.SGD([layer.weight], lr=0.0)
    _step(opt, layer)
    opt.add_param_group({"params": [later.weight]})
    later.kernel_constraint = "weight_clip"  # a constraint set after construction
    with torch.no_grad():
        later.weight.fill_(-7.0)
    _step(opt, layer, later)
    assert later.weight.min() == -1.0
    layer.weight = torch.nn.Parameter(torch.full((3, 4), 9.0))  # replaced, not held by opt
    opt.param_groups[0]["params"] = [layer.weight]
    _step(opt, layer, later)
    assert layer.weight.max() == 1.0


def test_removing_a_constraint_stops_it():
    layer = _clipped_layer()
    opt = torch.optim.SGD([layer.weight], lr=0.0)
    layer.kernel_constraint = None
    _step(opt, layer)
    assert layer.weight.max() == 5.0


def test_one_hook_for_the_process(monkeypatch):
    """Constraints are enforced by one optimizer post-hook, installed once."""
    first = constraints._hook
    _clipped_layer(), _clipped_layer()
    assert constraints._hook is not None and (first is None or constraints._hook is first)
