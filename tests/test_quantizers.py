"""Quantizers: forward values and pseudo-gradients equal Larq's (larq/quantizers_test.py)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onebit import quantizers as q

POINTS = torch.tensor([-2.0, -1.0, -0.5, -0.0, 0.0, 0.3, 1.0, 1.5])


def value_and_grad(quantizer, x):
    x = x.clone().requires_grad_(True)
    y = quantizer(x)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad


def sign_ref(x):
    return torch.where(x >= 0, 1.0, -1.0)


@pytest.mark.parametrize(
    "quantizer, grad_ref",
    [
        (q.SteSign(), lambda x: (x.abs() <= 1).float()),
        (q.SteSign(clip_value=0.5), lambda x: (x.abs() <= 0.5).float()),
        (q.SteSign(clip_value=None), lambda x: torch.ones_like(x)),
        (q.ApproxSign(), lambda x: torch.where(x.abs() <= 1, 2 - 2 * x.abs(), 0.0)),
        (
            q.SwishSign(),
            lambda x: 5 * (2 - 5 * x * torch.tanh(5 * x / 2)) / (1 + torch.cosh(5 * x)),
        ),
        (
            q.SwishSign(beta=10.0),
            lambda x: 10 * (2 - 10 * x * torch.tanh(10 * x / 2)) / (1 + torch.cosh(10 * x)),
        ),
    ],
    ids=["ste", "ste-clip0.5", "ste-noclip", "approx", "swish5", "swish10"],
)
def test_sign_quantizers_values_and_pseudo_gradients(quantizer, grad_ref):
    y, g = value_and_grad(quantizer, POINTS)
    assert torch.equal(y, sign_ref(POINTS))
    assert not (y == 0).any(), "sign(0) must be +1, never 0"
    torch.testing.assert_close(g, grad_ref(POINTS))


@pytest.mark.parametrize("name", ["ste_sign", "approx_sign", "swish_sign"])
def test_binary_inputs_unchanged_and_zero_maps_to_plus_one(name):
    quantizer = q.get(name)
    pm = torch.tensor([-1.0, 1.0, 1.0, -1.0])
    assert torch.equal(quantizer(pm), pm)
    assert torch.equal(quantizer(torch.zeros(3, 4)), torch.ones(3, 4))


def test_magnitude_aware_sign_scales_per_output_channel():
    x = torch.randn(4, 3, 3, 3)
    y, g = value_and_grad(q.MagnitudeAwareSign(), x)
    scale = x.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(torch.sign(y), sign_ref(x))
    torch.testing.assert_close(y.abs().mean(dim=(1, 2, 3), keepdim=True), scale)
    torch.testing.assert_close(g, scale.expand_as(x) * (x.abs() <= 1).float())


@pytest.mark.parametrize("clip", [1.0, None])
def test_ste_heaviside(clip):
    y, g = value_and_grad(q.SteHeaviside(clip_value=clip), POINTS)
    assert torch.equal(y, (POINTS > 0).float())
    expected = torch.ones_like(POINTS) if clip is None else (POINTS.abs() <= 1).float()
    assert torch.equal(g, expected)


@pytest.mark.parametrize(
    "quantizer, threshold",
    [
        (q.SteTern(), lambda x: 0.05),
        (q.SteTern(threshold_value=0.4), lambda x: 0.4),
        (q.SteTern(ternary_weight_networks=True), lambda x: 0.7 * x.abs().mean().item()),
    ],
    ids=["default", "custom", "twn"],
)
def test_ste_tern(quantizer, threshold):
    x = torch.cat([torch.linspace(-2, 2, 41), torch.tensor([0.05, -0.05, 0.4, -0.4])])
    y, g = value_and_grad(quantizer, x)
    t = threshold(x)
    expected = torch.where(x >= t, 1.0, torch.where(x <= -t, -1.0, 0.0))
    assert torch.equal(y, expected)
    assert torch.equal(g, (x.abs() <= 1).float())
    assert q.SteTern().precision == 2


def test_ste_tern_keeps_ternary_values():
    x = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.equal(q.SteTern()(x), x)


@pytest.mark.parametrize("k_bit", [1, 2, 4, 6, 8])
def test_dorefa_activations(k_bit):
    n = 2**k_bit - 1
    levels = torch.arange(n + 1, dtype=torch.float32)
    # Points strictly inside ((2i-1)/2n, (2i+1)/2n) map to i/n.
    offsets = torch.tensor([-0.49, -0.2, 0.0, 0.2, 0.49])
    x = ((levels[:, None] + offsets[None, :]) / n).flatten()
    y, g = value_and_grad(q.DoReFa(k_bit=k_bit), x)
    expected = (levels[:, None].expand(-1, 5) / n).flatten()
    inside = (x >= 0) & (x <= 1)
    torch.testing.assert_close(y[inside], expected[inside], atol=1e-6, rtol=0)
    assert torch.equal(g, inside.float())


def test_dorefa_rounds_half_to_even():
    # n = 3 (2 bits): x * 3 = 0.5 -> 0 and 1.5 -> 2, as tf.round.
    y = q.DoReFa(k_bit=2)(torch.tensor([0.5 / 3, 1.5 / 3]))
    torch.testing.assert_close(y, torch.tensor([0.0, 2 / 3]))


@pytest.mark.parametrize("k_bit", [1, 2, 4])
def test_dorefa_weights(k_bit):
    x = torch.linspace(-3, 3, 25)
    y, g = value_and_grad(q.DoReFa(k_bit=k_bit, mode="weights"), x)
    n = 2**k_bit - 1
    t = torch.tanh(x)
    peak = t.abs().max()
    expected = 2 * torch.round((t / (2 * peak) + 0.5) * n) / n - 1
    torch.testing.assert_close(y, expected)
    assert y.min() >= -1 and y.max() <= 1
    torch.testing.assert_close(g, (1 / torch.cosh(x) ** 2) / peak)


def test_dorefa_weights_all_zero_input():
    # 0/0 -> 0 as Larq's divide_no_nan: x' = 0.5, round(1.5) = 2 (half to even), q = 2*2/3 - 1.
    y = q.DoReFa(k_bit=2, mode="weights")(torch.zeros(3))
    torch.testing.assert_close(y, torch.full((3,), 1 / 3))


def test_noop_is_identity_with_precision():
    x = torch.randn(5, requires_grad=True)
    y, g = value_and_grad(q.NoOp(precision=1), x.detach())
    assert torch.equal(y, x.detach()) and torch.equal(g, torch.ones(5))
    assert q.NoOp(precision=4).precision == 4


@pytest.mark.parametrize(
    "name, cls, precision",
    [
        ("ste_sign", q.SteSign, 1),
        ("approx_sign", q.ApproxSign, 1),
        ("swish_sign", q.SwishSign, 1),
        ("magnitude_aware_sign", q.MagnitudeAwareSign, 1),
        ("ste_heaviside", q.SteHeaviside, 1),
        ("ste_tern", q.SteTern, 2),
        ("dorefa", q.DoReFa, 2),
        ("dorefa_quantizer", q.DoReFa, 2),
        ("noop", q.NoOp, 1),
        ("SteSign", q.SteSign, 1),
    ],
)
def test_get_by_name(name, cls, precision):
    quantizer = q.get(name)
    assert isinstance(quantizer, cls)
    assert quantizer.precision == precision


def test_get_passes_modules_and_callables_through():
    module = q.SteSign(clip_value=2.0)
    assert q.get(module) is module
    fn = q.set_precision(3)(lambda x: x)
    assert q.get(fn) is fn and q.precision_of(fn) == 3
    assert q.get(None) is None and q.get("none") is None


@pytest.mark.parametrize("bad", [42, "unknown", 1.5])
def test_get_rejects_with_valid_names(bad):
    with pytest.raises(ValueError, match="ste_sign") as err:
        q.get(bad)
    assert repr(bad) in str(err.value)


def test_dorefa_bad_mode():
    with pytest.raises(ValueError, match="'unknown'.*activations"):
        q.DoReFa(mode="unknown")
    quantizer = q.DoReFa()
    quantizer.mode = "unknown"
    with pytest.raises(ValueError, match="'unknown'"):
        quantizer(torch.zeros(2))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_noop_bad_precision(bad):
    with pytest.raises(ValueError, match="precision"):
        q.NoOp(precision=bad)


def test_sign_quantizer_keeps_dtype_and_saves_mask_not_input():
    x = torch.randn(8, dtype=torch.bfloat16, requires_grad=True)
    y = q.SteSign()(x)
    assert y.dtype == torch.bfloat16
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0].dtype == torch.bool


def test_quantizers_repr_shows_arguments():
    assert "clip_value=0.5" in repr(q.SteSign(0.5))
    assert "k_bit=4" in repr(q.DoReFa(4))
    assert math.isclose(q.SwishSign(beta=2.0).beta, 2.0)


# ------------------------------------------------------------------ properties on random tensors

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-30, -1e-30, 0.05, -0.05]
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
values = st.one_of(st.floats(-6, 6, width=32), st.sampled_from(SPECIAL))


def tensors(shape_strategy=shapes, elements=values):
    return hnp.arrays(np.float32, shape_strategy, elements=elements).map(torch.from_numpy)


def value_and_grad_with(quantizer, x, upstream):
    x = x.clone().requires_grad_(True)
    y = quantizer(x)
    y.backward(upstream)
    return y.detach(), x.grad


def swish_grad_ref(x, beta):
    bx = beta * x.double()
    return (beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))).float()


@settings(max_examples=60, deadline=None)
@given(
    tensors(),
    st.sampled_from(["ste", "approx", "swish"]),
    st.sampled_from([None, 0.25, 1.0, 1.5]),
    st.sampled_from([1.0, 5.0, 10.0]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_sign_quantizers_on_random_tensors(x, kind, clip, beta, dtype):
    """+/-1 with sign(0) = sign(-0.0) = +1, in the input's dtype, and the pseudo-gradient formula."""
    x = x.to(dtype)
    quantizer = {"ste": q.SteSign(clip), "approx": q.ApproxSign(), "swish": q.SwishSign(beta)}[kind]
    upstream = torch.linspace(-2, 3, x.numel(), dtype=dtype).reshape(x.shape)
    y, g = value_and_grad_with(quantizer, x, upstream)
    assert y.dtype == dtype and torch.equal(y, sign_ref(x).to(dtype))
    with torch.no_grad():
        assert torch.equal(quantizer(x), y)
    a = x.abs()
    if kind == "ste":
        assert torch.equal(g, upstream if clip is None else upstream * (a <= clip))
    elif kind == "approx":
        assert torch.equal(g, upstream * torch.where(a <= 1, 2 - 2 * a, 0.0).to(dtype))
    else:
        torch.testing.assert_close(g, upstream * swish_grad_ref(x, beta).to(dtype), rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(tensors(), st.sampled_from([None, 0.5, 1.0]))
def test_ste_heaviside_on_random_tensors(x, clip):
    y, g = value_and_grad_with(q.SteHeaviside(clip), x, torch.ones_like(x))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y, (x > 0).float())  # 0 and -0.0 give 0
    assert torch.equal(g, torch.ones_like(x) if clip is None else (x.abs() <= clip).float())


@settings(max_examples=40, deadline=None)
@given(tensors(), st.sampled_from([0.05, 0.3, 1.0]), st.booleans(), st.sampled_from([None, 1.0]))
def test_ste_tern_on_random_tensors(x, threshold, twn, clip):
    quantizer = q.SteTern(threshold_value=threshold, ternary_weight_networks=twn, clip_value=clip)
    y, g = value_and_grad_with(quantizer, x, torch.ones_like(x))
    assert set(y.unique().tolist()) <= {-1.0, 0.0, 1.0}
    t = 0.7 * x.abs().mean() if twn else torch.tensor(threshold)
    if t > 0:
        assert torch.equal(y, torch.where(x >= t, 1.0, torch.where(x <= -t, -1.0, 0.0)))
    else:  # TWN on an all-zero tensor: everything is 0
        assert torch.equal(y, torch.zeros_like(x))
    assert torch.equal(g, torch.ones_like(x) if clip is None else (x.abs() <= clip).float())


@settings(max_examples=40, deadline=None)
@given(tensors(elements=st.one_of(values, st.floats(-0.5, 1.5, width=32))), st.integers(1, 8))
def test_dorefa_activations_on_the_k_bit_grid(x, k_bit):
    n = 2**k_bit - 1
    y, g = value_and_grad_with(q.DoReFa(k_bit), x, torch.ones_like(x))
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(torch.round(y * n) / n, y)  # on the grid {i / n}
    assert ((y - x.clamp(0, 1)).abs() <= 0.5 / n + 1e-6).all()  # the nearest grid point
    assert torch.equal(g, ((x >= 0) & (x <= 1)).float())


@settings(max_examples=40, deadline=None)
@given(tensors(), st.integers(1, 8))
def test_dorefa_weights_on_the_k_bit_grid(x, k_bit):
    n = 2**k_bit - 1
    y, g = value_and_grad_with(q.DoReFa(k_bit, mode="weights"), x, torch.ones_like(x))
    assert y.min() >= -1 and y.max() <= 1
    levels = (y + 1) * n / 2  # on the grid {2 i / n - 1}
    torch.testing.assert_close(levels, torch.round(levels), rtol=0, atol=1e-4)
    assert torch.isfinite(g).all()
    peak = torch.tanh(x.double()).abs().max()
    if peak > 0:
        want = (1 / torch.cosh(x.double()) ** 2 / peak).float()
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)
    else:  # all zero: Larq's divide_no_nan passes no gradient
        assert torch.equal(g, torch.zeros_like(x))


@settings(max_examples=40, deadline=None)
@given(tensors(), st.sampled_from([None, 0.5, 1.0]))
def test_magnitude_aware_sign_is_plus_minus_alpha_per_output_channel(x, clip):
    y, g = value_and_grad_with(q.MagnitudeAwareSign(clip), x, torch.ones_like(x))
    alpha = x.abs().reshape(x.shape[0], -1).mean(1)
    rows, signs = y.reshape(x.shape[0], -1), sign_ref(x).reshape(x.shape[0], -1)
    for row, s, a in zip(rows, signs, alpha):
        a_row = row.abs().max()
        torch.testing.assert_close(a_row, a, rtol=1e-5, atol=0)
        assert torch.equal(row, a_row * s)  # +alpha where x >= 0 (0 and -0.0 too), else -alpha
    scale = y.abs().reshape(x.shape[0], -1).amax(1).reshape((-1,) + (1,) * (x.dim() - 1))
    mask = torch.ones_like(x) if clip is None else (x.abs() <= clip).float()
    assert torch.equal(g, scale.expand_as(x) * mask)
