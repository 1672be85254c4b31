"""onebit.kernels: bit packing, popcount, geometry and the binary conv / dense / pool kernels
(numpy reference and numba), checked against torch on random shapes (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onebit.kernels import jit_kernels, out_size, reference, words_for
from onebit.kernels.bits import pack_bool, pack_planes, pack_sign, popcount, quantize_levels, unpack_sign

JIT = jit_kernels()
KERNELS = [
    pytest.param(reference, id="numpy"),
    pytest.param(JIT, id="numba", marks=pytest.mark.skipif(JIT is None, reason="numba not installed")),
]

SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 1e-45, -1e-45]
values32 = st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from(SPECIAL))
channels = st.integers(1, 200)  # mostly not multiples of 64: last words partly used
leading = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


def sign_ref(x):
    return np.where(x >= 0, np.float32(1), np.float32(-1))


def pack_ref(bits):
    """Bit i of word j = bits[..., 64 j + i], one bit at a time."""
    c = bits.shape[-1]
    out = np.zeros(bits.shape[:-1] + (words_for(c),), np.uint64)
    for i in range(c):
        out[..., i // 64] |= bits[..., i].astype(np.uint64) << np.uint64(i % 64)
    return out


# ------------------------------------------------------------------------------------ bit packing


@settings(max_examples=60, deadline=None)
@given(st.data(), leading, channels)
def test_pack_sign_round_trips_any_shape_and_channel_count(data, lead, c):
    x = data.draw(hnp.arrays(np.float32, lead + (c,), elements=values32))
    words = pack_sign(x)
    assert words.dtype == np.uint64 and words.shape == lead + (words_for(c),)
    assert np.array_equal(words, pack_ref(x < 0))  # bit 1 iff x < 0: 0 and -0.0 are +1
    if c % 64:
        assert not (words[..., -1] >> np.uint64(c % 64)).any()  # the unused bits are 0
    back = unpack_sign(words, c)
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.array_equal(back, sign_ref(x))
    assert np.array_equal(pack_sign(back), words)


@settings(max_examples=40, deadline=None)
@given(st.data(), leading, channels)
def test_pack_bool_round_trips(data, lead, c):
    bits = data.draw(hnp.arrays(np.bool_, lead + (c,)))
    words = pack_bool(bits)
    assert np.array_equal(words, pack_ref(bits))
    assert np.array_equal(unpack_sign(words, c) < 0, bits)
    assert np.array_equal(popcount(words).sum(axis=-1), bits.sum(axis=-1))


uint64s = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, 2**64 - 1, 2**63 - 1]))


@settings(max_examples=40, deadline=None)
@given(st.lists(uint64s, min_size=1, max_size=40))
def test_popcount_equals_counting_bits(values):
    words = np.array(values, np.uint64)
    want = np.array([bin(v).count("1") for v in values], np.int64)
    got = popcount(words)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    assert np.array_equal(popcount(words.reshape(1, -1, 1)), want.reshape(1, -1, 1))


@pytest.mark.skipif(JIT is None, reason="numba not installed")
@settings(max_examples=20, deadline=None)
@given(st.lists(uint64s, min_size=1, max_size=40))
def test_numba_popcount_intrinsic_equals_counting_bits(values):
    words = np.array(values, np.uint64)
    got = _numba_popcounts()(words)
    assert np.array_equal(got, [bin(v).count("1") for v in values])


_POPCOUNTS = []


def _numba_popcounts():
    """An njit loop over ``jit.popcount`` (the intrinsic runs inside numba only), compiled once."""
    if not _POPCOUNTS:
        from numba import njit

        pc = JIT.popcount

        @njit
        def counts(words):
            out = np.empty(words.shape[0], np.int64)
            for i in range(words.shape[0]):
                out[i] = pc(words[i])
            return out

        _POPCOUNTS.append(counts)
    return _POPCOUNTS[0]


@pytest.mark.skipif(JIT is None, reason="numba not installed")
@settings(max_examples=30, deadline=None)
@given(st.data(), hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=3), channels, st.booleans())
def test_numba_pack_sign_count_and_unpack_into(data, lead, c, binary):
    elements = st.sampled_from([-1.0, 1.0]) if binary else values32
    x = data.draw(hnp.arrays(np.float32, lead + (c,), elements=elements))
    words, bad = JIT.pack_sign_count(x)
    assert np.array_equal(words, pack_sign(x))
    assert bad == int(((x != 1) & (x != -1)).sum())
    strided = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)  # an NCHW tensor's NHWC view
    words2, _ = JIT.pack_sign_count(strided)
    assert np.array_equal(words2, words)
    out = np.full(x.shape, 7.0, np.float32)
    JIT.unpack_sign_into(words, out)
    assert np.array_equal(out, sign_ref(x))


# --------------------------------------------------------------------------------------- geometry


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(0, 2),
    st.booleans(),
)
def test_out_size_equals_torch_max_pool(size, k, stride, pad, ceil_mode):
    assume(pad <= k // 2 and size + 2 * pad >= k)
    y = F.max_pool2d(torch.zeros(1, 1, size, 1), (k, 1), (stride, 1), (pad, 0), ceil_mode=ceil_mode)
    assert out_size(size, k, stride, 1, pad, pad, ceil_mode) == y.shape[2]


# ------------------------------------------------------------------------ binary conv / dense / pool


def pm_one(gen, shape):
    """A random +/-1 float32 tensor."""
    return torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)


def thresholds(gen, o):
    """Random (sgn, thr) of the bits mode: bit = sgn * d < thr."""
    sgn = np.where(torch.rand(o, generator=gen).numpy() < 0.5, -1, 1)
    thr = torch.randint(-12, 13, (o,), generator=gen).numpy()
    return sgn, thr


conv_cases = st.fixed_dictionaries(
    dict(
        n=st.integers(1, 2),
        h=st.integers(1, 7),
        w=st.integers(1, 7),
        c=st.integers(1, 150),
        o=st.integers(1, 70),
        kh=st.integers(1, 4),
        kw=st.integers(1, 4),
        stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        pads=st.tuples(
            st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3))
        ),
        pad_value=st.sampled_from([0, 1]),
        seed=st.integers(0, 2**32 - 1),
    )
)


@pytest.mark.parametrize("kernels", KERNELS)
@settings(max_examples=40, deadline=None)
@given(case=conv_cases)
def test_binary_conv_equals_torch_conv(kernels, case):
    """Packed XOR + popcount conv == F.conv2d of the +/-1 tensors padded with the pad value."""
    n, h, w, c, o, kh, kw = (case[k] for k in ("n", "h", "w", "c", "o", "kh", "kw"))
    stride, dilation, pads, pad_value = case["stride"], case["dilation"], case["pads"], case["pad_value"]
    (pt, pb), (pl, pr) = pads
    ho = out_size(h, kh, stride[0], dilation[0], pt, pb)
    wo = out_size(w, kw, stride[1], dilation[1], pl, pr)
    assume(ho > 0 and wo > 0)
    gen = torch.Generator().manual_seed(case["seed"])
    x, k = pm_one(gen, (n, c, h, w)), pm_one(gen, (o, c, kh, kw))
    want = F.conv2d(F.pad(x, (pl, pr, pt, pb), value=float(pad_value)), k, stride=stride, dilation=dilation)
    want = want.permute(0, 2, 3, 1).numpy()  # NHWC, exact integers
    xp = pack_sign(x.permute(0, 2, 3, 1).numpy())
    kp = pack_sign(k.permute(0, 2, 3, 1).numpy())
    args = (xp, kp, c, stride, dilation, pads, pad_value)
    got = kernels.bconv2d(*args, "float", np.ones(o, np.float32), np.zeros(o, np.float32))
    assert got.shape == (n, ho, wo, o) and np.array_equal(got, want)
    sgn, thr = thresholds(gen, o)
    bits = kernels.bconv2d(*args, "bits", sgn=sgn, thr=thr)
    assert np.array_equal(bits, pack_bool(sgn * want < thr))


dense_cases = st.fixed_dictionaries(
    dict(n=st.integers(1, 4), k=st.integers(1, 300), o=st.integers(1, 140), seed=st.integers(0, 2**32 - 1))
)


@pytest.mark.parametrize("kernels", KERNELS)
@settings(max_examples=40, deadline=None)
@given(case=dense_cases)
def test_binary_dense_equals_torch_linear(kernels, case):
    n, k, o = case["n"], case["k"], case["o"]
    gen = torch.Generator().manual_seed(case["seed"])
    x, w = pm_one(gen, (n, k)), pm_one(gen, (o, k))
    want = F.linear(x, w).numpy()
    args = (pack_sign(x.numpy()), pack_sign(w.numpy()), k)
    got = kernels.bdense(*args, "float", np.ones(o, np.float32), np.zeros(o, np.float32))
    assert got.shape == (n, o) and np.array_equal(got, want)
    sgn, thr = thresholds(gen, o)
    assert np.array_equal(kernels.bdense(*args, "bits", sgn=sgn, thr=thr), pack_bool(sgn * want < thr))


pool_cases = st.fixed_dictionaries(
    dict(
        n=st.integers(1, 2),
        h=st.integers(1, 8),
        w=st.integers(1, 8),
        c=st.integers(1, 150),
        kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
        stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
        ceil_mode=st.booleans(),
        seed=st.integers(0, 2**32 - 1),
    )
)


@pytest.mark.parametrize("kernels", KERNELS)
@settings(max_examples=40, deadline=None)
@given(case=pool_cases)
def test_max_pool_on_bits_equals_torch(kernels, case):
    """AND channels: torch's max-pool of the +/-1 values; OR channels: its min-pool."""
    n, h, w, c, kernel, stride, pad = (case[k] for k in ("n", "h", "w", "c", "kernel", "stride", "pad"))
    assume(
        all(p <= k // 2 for p, k in zip(pad, kernel)) and h + 2 * pad[0] >= kernel[0] and w + 2 * pad[1] >= kernel[1]
    )
    gen = torch.Generator().manual_seed(case["seed"])
    x = pm_one(gen, (n, c, h, w))
    use_and = torch.rand(c, generator=gen) < 0.5
    pool = dict(kernel_size=kernel, stride=stride, padding=pad, ceil_mode=case["ceil_mode"])
    want = torch.where(use_and[:, None, None], F.max_pool2d(x, **pool), -F.max_pool2d(-x, **pool))
    want = want.permute(0, 2, 3, 1).numpy()
    and_mask = pack_bool(use_and.numpy())
    pads = ((pad[0], pad[0]), (pad[1], pad[1]))
    got = kernels.maxpool2d_bits(
        pack_sign(x.permute(0, 2, 3, 1).numpy()), kernel, stride, pads, case["ceil_mode"], and_mask
    )
    assert got.shape[:3] == want.shape[:3]
    assert np.array_equal(unpack_sign(got, c), want)


grouped_cases = st.fixed_dictionaries(
    dict(
        n=st.integers(1, 2),
        h=st.integers(1, 7),
        w=st.integers(1, 7),
        groups=st.integers(1, 6),
        cg=st.integers(1, 80),  # channels per group: mostly not a multiple of 64
        og=st.integers(1, 5),  # outputs per group (depth multiplier for cg = 1)
        k=st.integers(1, 3),
        stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
        dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
        pads=st.tuples(
            st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))
        ),
        pad_value=st.sampled_from([0, 1]),
        seed=st.integers(0, 2**32 - 1),
    )
)


def _geometry(case, k):
    (pt, pb), (pl, pr) = case["pads"]
    ho = out_size(case["h"], k, case["stride"][0], case["dilation"][0], pt, pb)
    wo = out_size(case["w"], k, case["stride"][1], case["dilation"][1], pl, pr)
    return ho, wo, (pl, pr, pt, pb)


@pytest.mark.parametrize("kernels", KERNELS)
@settings(max_examples=30, deadline=None)
@given(case=grouped_cases)
def test_grouped_convs_equal_torch(kernels, case):
    """Grouped and depthwise convs, binary (each group packed in its own words) and float, ==
    F.conv2d(groups=...) of the same tensors."""
    g, cg, og, k = case["groups"], case["cg"], case["og"], case["k"]
    ho, wo, torch_pads = _geometry(case, k)
    assume(ho > 0 and wo > 0)
    gen = torch.Generator().manual_seed(case["seed"])
    c, o = g * cg, g * og
    x, wt = pm_one(gen, (case["n"], c, case["h"], case["w"])), pm_one(gen, (o, cg, k, k))
    conv = dict(stride=case["stride"], dilation=case["dilation"], groups=g)
    want = F.conv2d(F.pad(x, torch_pads, value=float(case["pad_value"])), wt, **conv).permute(0, 2, 3, 1).numpy()
    args = (case["stride"], case["dilation"], case["pads"], case["pad_value"])
    xp, kp = pack_sign(x.permute(0, 2, 3, 1).numpy(), g), pack_sign(wt.permute(0, 2, 3, 1).numpy())
    assert xp.shape[-1] == g * words_for(cg)
    ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
    got = kernels.bconv2d(xp, kp, cg, *args, "float", ones, zeros, groups=g)
    assert got.shape == want.shape and np.array_equal(got, want)
    sgn, thr = thresholds(gen, o)
    assert np.array_equal(
        kernels.bconv2d(xp, kp, cg, *args, "bits", sgn=sgn, thr=thr, groups=g), pack_bool(sgn * want < thr)
    )
    xf = torch.randn(x.shape, generator=gen)
    wf = torch.randn(wt.shape, generator=gen)
    want_f = F.conv2d(F.pad(xf, torch_pads, value=float(case["pad_value"])), wf, **conv).permute(0, 2, 3, 1).numpy()
    wmat = np.ascontiguousarray(wf.permute(2, 3, 1, 0).reshape(-1, o).numpy())
    got_f = kernels.conv2d(xf.permute(0, 2, 3, 1).numpy(), wmat, None, (k, k), *args, groups=g)
    np.testing.assert_allclose(got_f, want_f, rtol=1e-5, atol=1e-4)


plane_cases = st.fixed_dictionaries(
    dict(
        n=st.integers(1, 2),
        h=st.integers(1, 6),
        w=st.integers(1, 6),
        c=st.integers(1, 150),
        o=st.integers(1, 70),
        k=st.integers(1, 3),
        bits=st.integers(1, 4),
        stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
        dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
        pads=st.tuples(
            st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))
        ),
        seed=st.integers(0, 2**32 - 1),
    )
)


@pytest.mark.parametrize("kernels", KERNELS)
@settings(max_examples=30, deadline=None)
@given(case=plane_cases)
def test_bit_plane_conv_and_dense_equal_torch(kernels, case):
    """k-bit activations (levels 0 .. 2^k - 1 as packed bit-planes, zero padding) with a +/-1
    kernel: two popcounts per plane == F.conv2d / F.linear of the integer levels."""
    n, c, o, k, bits = (case[key] for key in ("n", "c", "o", "k", "bits"))
    ho, wo, torch_pads = _geometry(case, k)
    assume(ho > 0 and wo > 0)
    gen = torch.Generator().manual_seed(case["seed"])
    x = torch.rand((n, c, case["h"], case["w"]), generator=gen) * 1.2 - 0.1  # clipped at both ends
    q = torch.from_numpy(quantize_levels(x.numpy(), 2**bits - 1)).float()
    assert torch.equal(q, torch.round(torch.clamp(x, 0, 1) * (2**bits - 1)))  # torch's rule
    wt = pm_one(gen, (o, c, k, k))
    want = F.conv2d(F.pad(q, torch_pads), wt, stride=case["stride"], dilation=case["dilation"])
    want = want.permute(0, 2, 3, 1).numpy()
    xp = pack_planes(q.permute(0, 2, 3, 1).numpy().astype(np.int64), bits)
    kp = pack_sign(wt.permute(0, 2, 3, 1).numpy())
    ones, zeros = np.ones(o, np.float32), np.zeros(o, np.float32)
    geometry = (case["stride"], case["dilation"], case["pads"])
    got = kernels.bconv2d_planes(xp, kp, bits, *geometry, "float", ones, zeros)
    assert got.shape == want.shape and np.array_equal(got, want)
    sgn, thr = thresholds(gen, o)
    assert np.array_equal(
        kernels.bconv2d_planes(xp, kp, bits, *geometry, "bits", sgn=sgn, thr=thr), pack_bool(sgn * want < thr)
    )
    qd, wd = q.reshape(n, -1), pm_one(gen, (o, c * case["h"] * case["w"]))
    want_d = F.linear(qd, wd).numpy()
    got_d = kernels.bdense_planes(
        pack_planes(qd.numpy().astype(np.int64), bits), pack_sign(wd.numpy()), bits, "float", ones, zeros
    )
    assert np.array_equal(got_d, want_d)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("k,stride,pad", [(1, 1, 0), (2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 3, 1), (3, 3, 0)])
def test_float_pools_equal_torch(kernels, k, stride, pad, ceil_mode):
    """Max and average pools with torch's output sizes and divisors; the numba pools give the
    reference's values exactly (same taps, same order)."""
    x = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(k + 7 * stride))
    nhwc = x.permute(0, 2, 3, 1).numpy()
    pads = ((pad, pad), (pad, pad))
    want = F.max_pool2d(x, k, stride, pad, ceil_mode=ceil_mode).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(kernels.maxpool2d(nhwc, (k, k), (stride, stride), pads, ceil_mode), want)
    for count_include_pad in (False, True):
        for divisor in (None, 5):
            avg = F.avg_pool2d(
                x, k, stride, pad, ceil_mode=ceil_mode, count_include_pad=count_include_pad, divisor_override=divisor
            )
            args = (nhwc, (k, k), (stride, stride), pads, ceil_mode, count_include_pad, divisor)
            got = kernels.avgpool2d(*args)
            np.testing.assert_allclose(got, avg.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)
            assert np.array_equal(got, reference.avgpool2d(*args))
