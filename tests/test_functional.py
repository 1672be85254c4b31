"""onebit.functional: the one sign (sign(0) = +1) and the straight-through functions."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onebit import functional as fn

floats = st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=64)


@settings(max_examples=60, deadline=None)
@given(floats)
def test_sign_is_plus_one_at_and_above_zero(values):
    x = torch.tensor(values, dtype=torch.float32)
    s = fn.sign(x)
    assert s.dtype == x.dtype and set(s.tolist()) <= {-1.0, 1.0}
    assert torch.equal(s == 1, x >= 0)  # -0.0 and 0.0 both give +1


@settings(max_examples=60, deadline=None)
@given(floats, st.lists(st.booleans(), min_size=64, max_size=64))
def test_write_sign_in_place_equals_sign_negated_where_flipped(values, flips):
    w = torch.tensor(values, dtype=torch.float32)
    flip = torch.tensor(flips[: len(values)])
    expected = torch.where(flip, -fn.sign(w), fn.sign(w))
    fn.write_sign(w, flip)
    assert torch.equal(w, expected)


@settings(max_examples=40, deadline=None)
@given(floats, st.sampled_from([None, 0.5, 1.0, 1.3]))
def test_ste_sign_gradient_is_the_clip_mask(values, clip):
    x = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    y = fn.ste_sign(x, clip)
    y.backward(torch.full_like(x, 3.0))
    assert torch.equal(y, fn.sign(x.detach()))
    expected = torch.full_like(x, 3.0) if clip is None else 3.0 * (x.detach().abs() <= clip)
    assert torch.equal(x.grad, expected)


def test_no_grad_computes_only_the_sign():
    x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    with torch.no_grad():
        y = fn.ste_sign(x)
    assert y.grad_fn is None and y.tolist() == [-1.0, 1.0, 1.0]


@pytest.mark.parametrize("n, expected", [(1, [0.0, 2.0, 2.0, 0.0]), (2, [0.5, 1.5, 2.5, 0.5])])
def test_round_identity_rounds_half_to_even_and_passes_the_gradient(n, expected):
    x = torch.tensor([0.5, 1.5, 2.5, 0.26], requires_grad=True)
    y = fn.round_identity(x, n)
    y.sum().backward()
    assert y.tolist() == expected and torch.equal(x.grad, torch.ones_like(x))
