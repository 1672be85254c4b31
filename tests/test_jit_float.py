"""onebit.kernels.jit_float: the float convolutions and pools around binary layers and the fused
epilogue, against the numpy reference kernels and numpy's own op-by-op arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from onebit.kernels import jit_kernels, out_size, reference
from onebit.kernels.bits import pack_sign, unpack_sign

JIT = jit_kernels()
if JIT is not None:
    from onebit.kernels import jit_float
pytestmark = pytest.mark.skipif(JIT is None, reason="numba not installed: the numba kernels are not checked")

CODES = ("affine", "relu", "residual", "prelu")


def _steps(rng, codes, o):
    """Epilogue steps (code, mul, add) with random per-channel arrays, as ``make_epilogue`` takes."""
    k = JIT
    table = {"affine": k.AFFINE, "relu": k.RELU, "residual": k.RESIDUAL, "prelu": k.PRELU}
    steps = []
    for name in codes:
        mul = rng.standard_normal(o).astype(np.float32) if name in ("affine", "prelu") else None
        add = rng.standard_normal(o).astype(np.float32) if name == "affine" else None
        steps.append((table[name], mul, add))
    return steps


def numpy_ops(y, steps, residual):
    """The steps one numpy op at a time, as the runtime runs them unfused."""
    k = JIT
    for code, mul, add in steps:
        if code == k.AFFINE:
            y = y * mul + add
        elif code == k.RELU:
            y = np.maximum(y, np.float32(0))
        elif code == k.RESIDUAL:
            y = y + residual
        else:
            y = np.where(y >= 0, y, y * mul).astype(np.float32)
    return y


epilogue_cases = st.fixed_dictionaries(
    dict(
        n=st.integers(1, 2),
        h=st.integers(1, 5),
        w=st.integers(1, 5),
        c=st.integers(1, 150),  # mostly not a multiple of 64: a partly used last word
        codes=st.lists(st.sampled_from(CODES), max_size=5),
        pad=st.sampled_from([0, 1]),
        store=st.booleans(),
        pack=st.booleans(),
        seed=st.integers(0, 2**32 - 1),
    )
)


@settings(max_examples=40, deadline=None)
@given(case=epilogue_cases)
def test_epilogue_is_numpys_arithmetic_op_by_op(case):
    """A 1x1 identity convolution (exact) then the epilogue: the float values equal numpy's op by
    op exactly (no contracted multiply-add), and the bits are pack_sign of them. pad=1 sends the
    rows through im2col (the border reads the pad value), pad=0 reads the input as its own matrix."""
    rng = np.random.default_rng(case["seed"])
    n, h, w, c, pad = (case[k] for k in ("n", "h", "w", "c", "pad"))
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0  # exact zeros: sign(0) = +1 must hold through the chain
    pad_value = np.float32(rng.standard_normal())
    steps = _steps(rng, case["codes"], c)
    residual = rng.standard_normal((n, h + 2 * pad, w + 2 * pad, c)).astype(np.float32)
    post = JIT.make_epilogue(steps, c, residual=residual, store=case["store"], pack=case["pack"])
    eye = np.eye(c, dtype=np.float32)
    f, b = JIT.conv2d(x, eye, None, (1, 1), (1, 1), (1, 1), ((pad, pad), (pad, pad)), pad_value, post=post)
    want = numpy_ops(np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=pad_value), steps, residual)
    assert (f is None) != case["store"] and (b is None) != case["pack"]
    if case["store"]:
        assert f.dtype == np.float32 and np.array_equal(f, want)
    if case["pack"]:
        assert b.dtype == np.uint64 and np.array_equal(b, pack_sign(want))


conv_cases = st.fixed_dictionaries(
    dict(
        n=st.integers(1, 2),
        h=st.integers(1, 8),
        w=st.integers(1, 8),
        groups=st.sampled_from(["one", "two", "depthwise"]),
        cg=st.integers(1, 20),
        og=st.integers(1, 70),
        kh=st.integers(1, 4),
        kw=st.integers(1, 4),
        stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
        pads=st.tuples(
            st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3))
        ),
        pad_value=st.sampled_from([0.0, 1.0, -0.5]),
        codes=st.lists(st.sampled_from(CODES), max_size=4),
        seed=st.integers(0, 2**32 - 1),
    )
)


@settings(max_examples=60, deadline=None)
@given(case=conv_cases, tiny_tiles=st.booleans())
def test_conv2d_with_epilogue_equals_reference(case, tiny_tiles, monkeypatch_module):
    """Ungrouped (BLAS over im2col tiles), grouped and depthwise convolutions with a bias and an
    epilogue == the numpy reference conv then numpy's ops, within float rounding (the sums' order
    differs); bits agree wherever the value is not within rounding of 0."""
    g = {"one": 1, "two": 2, "depthwise": None}[case["groups"]]
    cg, og = (case["cg"], case["og"]) if g else (1, 1)
    g = g or case["cg"] + 1  # depthwise: C = O = groups
    c, o = g * cg, g * og
    (pt, pb), (pl, pr) = case["pads"]
    ho = out_size(case["h"], case["kh"], case["stride"][0], case["dilation"][0], pt, pb)
    wo = out_size(case["w"], case["kw"], case["stride"][1], case["dilation"][1], pl, pr)
    assume(ho > 0 and wo > 0)
    monkeypatch_module.setattr(jit_float, "_TILE_BYTES", 256 if tiny_tiles else 1 << 21)
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["h"], case["w"], c)).astype(np.float32)
    wmat = rng.standard_normal((case["kh"] * case["kw"] * cg, o)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    steps = _steps(rng, case["codes"], o)
    residual = rng.standard_normal((case["n"], ho, wo, o)).astype(np.float32)
    geometry = ((case["kh"], case["kw"]), case["stride"], case["dilation"], case["pads"], case["pad_value"])
    want = numpy_ops(reference.conv2d(x, wmat, bias, *geometry, groups=g), steps, residual)
    plain = JIT.conv2d(x, wmat, bias, *geometry, groups=g)
    np.testing.assert_allclose(plain, reference.conv2d(x, wmat, bias, *geometry, groups=g), rtol=1e-4, atol=1e-4)
    post = JIT.make_epilogue([(JIT.AFFINE, None, bias)] + steps, o, residual=residual, store=True, pack=True)
    f, b = JIT.conv2d(x, wmat, None, *geometry, groups=g, post=post)
    scale = 1e-4 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(f, want, rtol=1e-4, atol=scale)
    clear = np.abs(want) > scale
    assert np.array_equal((unpack_sign(b, o) < 0)[clear], (want < 0)[clear])


@pytest.fixture(scope="module")
def monkeypatch_module():
    """A monkeypatch that hypothesis' repeated examples may share (function-scoped fixtures are not
    reset between examples)."""
    with pytest.MonkeyPatch.context() as mp:
        yield mp


binary_cases = st.fixed_dictionaries(
    dict(
        n=st.integers(1, 2),
        h=st.integers(1, 6),
        w=st.integers(1, 6),
        c=st.integers(1, 150),
        o=st.integers(1, 140),
        k=st.integers(1, 3),
        stride=st.integers(1, 2),
        pad=st.integers(0, 1),
        pad_value=st.sampled_from([0, 1]),
        codes=st.lists(st.sampled_from(CODES), max_size=4),
        pack=st.booleans(),
        seed=st.integers(0, 2**32 - 1),
    )
)


@settings(max_examples=40, deadline=None)
@given(case=binary_cases)
def test_binary_conv_epilogue_is_exact(case):
    """A binary conv's float output (integer dots * mul + add) through the epilogue equals the
    reference layer then numpy's ops exactly, floats and bits: a fused residual block computes
    what the ops one by one compute."""
    rng = np.random.default_rng(case["seed"])
    n, h, w, c, o, k, pad = (case[key] for key in ("n", "h", "w", "c", "o", "k", "pad"))
    ho = out_size(h, k, case["stride"], 1, pad, pad)
    assume(ho > 0)
    xp = pack_sign(rng.standard_normal((n, h, w, c)).astype(np.float32))
    wp = pack_sign(rng.standard_normal((o, k, k, c)).astype(np.float32))
    mul, add = rng.standard_normal(o).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    geometry = (c, (case["stride"],) * 2, (1, 1), ((pad, pad), (pad, pad)), case["pad_value"], "float", mul, add)
    ref = reference.bconv2d(xp, wp, *geometry)
    steps = _steps(rng, case["codes"], o)
    residual = rng.standard_normal(ref.shape).astype(np.float32)
    want = numpy_ops(ref, steps, residual)
    post = JIT.make_epilogue(steps, o, residual=residual, store=True, pack=case["pack"])
    f, b = JIT.bconv2d(xp, wp, *geometry, post=post)
    assert np.array_equal(f, want)
    if case["pack"]:
        assert np.array_equal(b, pack_sign(want))


def test_bias_goes_in_one_place():
    x, wmat = np.zeros((1, 2, 2, 3), np.float32), np.zeros((3, 4), np.float32)
    post = JIT.make_epilogue([], 4)
    with pytest.raises(ValueError, match="not both"):
        JIT.conv2d(x, wmat, np.zeros(4, np.float32), (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0)), 0.0, post=post)
