"""numba kernels for the binary ops: XOR + popcount on 64-bit words, threads over output rows.

``popcount`` is a tiny intrinsic that emits LLVM's ``llvm.ctpop.i64``; LLVM lowers it to the
``popcnt`` instruction (or ``vpopcntq`` where AVX-512 VPOPCNTDQ exists) and vectorizes the
reduction loops. Each kernel computes the same integers as ``onebit.kernels.reference`` (tests check that
they are equal) and fuses the output transform: float ``d * mul + add`` or threshold bits packed on
the fly, so a binary layer writes packed bits directly.

The float kernels around them (convolutions, pools, the fused epilogue) live in
``onebit.kernels.jit_float`` and are re-exported here, so ``jit_kernels()`` is the one entry.

Importing this module raises ImportError when numba is missing; the runtime then uses numpy.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .bits import popcount as _popcount_np
from .jit_float import (
    AFFINE,
    PRELU,
    RELU,
    RESIDUAL,
    STORE,
    Epilogue,
    avgpool2d,
    conv2d,
    epilogue,
    make_epilogue,
    maxpool2d,
    outputs,
    results,
    scratch_size,
    window,
)
from .reference import _finish, _group_slices, _pool_windows, conv_hw

__all__ = [
    "AFFINE",
    "PRELU",
    "RELU",
    "RESIDUAL",
    "Epilogue",
    "avgpool2d",
    "bconv2d",
    "bconv2d_planes",
    "bdense",
    "bdense_planes",
    "bit_thresholds",
    "conv2d",
    "kernel_matrix",
    "make_epilogue",
    "maxpool2d",
    "maxpool2d_bits",
    "pack_sign_count",
    "popcount",
    "sign_and_mask",
    "unpack_sign_into",
]


@intrinsic
def popcount(typingctx, x):
    """Set bits of a uint64 as int64, via llvm.ctpop.i64."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return sig, codegen


@njit(cache=True, fastmath=True, inline="always")
def _emit(dots, n_out, mode, mul, add, t2, flip, out_f, out_b):
    """Write one pixel's dots: float (mode 0) into out_f or threshold bits (mode 1) into out_b.

    Bits use the branch-free form ``(d < t2) != flip`` (see ``bit_thresholds``) with ``t2`` and
    ``flip`` padded to whole words, so both loops vectorize (int32 -> float32 converts in SIMD)."""
    if mode == 0:
        for o in range(n_out):
            out_f[o] = np.float32(np.int32(dots[o])) * mul[o] + add[o]
    else:
        for q in range(out_b.shape[0]):
            word = np.uint64(0)
            for b in range(64):
                o = q * 64 + b
                bit = np.uint64((dots[o] < t2[o]) != flip[o])
                word |= bit << np.uint64(b)
            out_b[q] = word


@njit(cache=True, inline="always")
def _gather(x, n, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, patch, oob):
    """Copy one output pixel's receptive field (kh*kw taps of packed words) into ``patch``;
    taps outside the input get zero words (+1, bit 0) and are flagged in ``oob``. Returns their count."""
    h, wid, words = x.shape[1], x.shape[2], x.shape[3]
    n_oob = 0
    for i in range(kh):
        ih = oh * sh - pt + i * dh
        for j in range(kw):
            iw = ow * sw - pl + j * dw
            t = i * kw + j
            if ih >= 0 and ih < h and iw >= 0 and iw < wid:
                for q in range(words):
                    patch[t * words + q] = x[n, ih, iw, q]
                oob[t] = False
            else:
                for q in range(words):
                    patch[t * words + q] = 0
                oob[t] = True
                n_oob += 1
    return n_oob


@njit(cache=True, inline="always")
def _to_dots(acc, n_out, n_oob, oob, wpc_t, c_in, taps, pad_one):
    """Popcounts -> dots in place: K - 2 pc, or over the valid taps only for zero padding, where
    the kernel's own bits at the padded taps (``wpc_t`` (taps, O)) come back out of pc."""
    if n_oob > 0 and not pad_one:
        k_valid = c_in * (taps - n_oob)
        for o in range(n_out):
            acc[o] = k_valid - 2 * acc[o]
        for t in range(taps):
            if oob[t]:
                for o in range(n_out):
                    acc[o] += 2 * wpc_t[t, o]
    else:
        k_full = c_in * taps
        for o in range(n_out):
            acc[o] = k_full - 2 * acc[o]


@njit(cache=True, inline="always")
def _xor_popcount_pair(patch0, patch1, wt, acc0, acc1):
    """acc[o] = sum_k popcount(patch[k] XOR wt[k, o]) for two pixels' patches. Four kernel words
    per pass over the outputs: the accumulators (too many for registers) are loaded and stored a
    quarter as often: 1.15-1.4x faster than one word per pass on Bi-Real Net's 3x3 layer shapes
    (interleaved A/B, one thread, AVX-512 VPOPCNTDQ)."""
    kwords, n_out = wt.shape
    for o in range(n_out):
        acc0[o] = 0
        acc1[o] = 0
    k = 0
    while k + 4 <= kwords:
        a0, a1, a2, a3 = patch0[k], patch0[k + 1], patch0[k + 2], patch0[k + 3]
        b0, b1, b2, b3 = patch1[k], patch1[k + 1], patch1[k + 2], patch1[k + 3]
        for o in range(n_out):
            w0, w1, w2, w3 = wt[k, o], wt[k + 1, o], wt[k + 2, o], wt[k + 3, o]
            acc0[o] += popcount(a0 ^ w0) + popcount(a1 ^ w1) + popcount(a2 ^ w2) + popcount(a3 ^ w3)
            acc1[o] += popcount(b0 ^ w0) + popcount(b1 ^ w1) + popcount(b2 ^ w2) + popcount(b3 ^ w3)
        k += 4
    while k < kwords:
        a0, b0 = patch0[k], patch1[k]
        for o in range(n_out):
            w0 = wt[k, o]
            acc0[o] += popcount(a0 ^ w0)
            acc1[o] += popcount(b0 ^ w0)
        k += 1


@njit(cache=True, inline="always")
def _finish_pixel(acc, y, n_out, mode_args, post, n, oh, ow, out_f, out_b):
    """Output pixel (n, oh, ow) of a binary conv from its dots: mode 0 ``d * mul + add`` then the
    epilogue ``post`` (``jit_float.epilogue``: float store and/or sign bits), mode 1 threshold bits."""
    mode, mul, add, t2, flip = mode_args
    if mode == 0:
        codes, p_mul, p_add, res, store, pack = post
        for o in range(n_out):
            y[o] = np.float32(np.int32(acc[o])) * mul[o] + add[o]
        epilogue(y, n_out, codes, p_mul, p_add, res, n, oh, ow, store, out_f, pack, out_b)
    else:
        _emit(acc, n_out, 1, mul, add, t2, flip, y, out_b[n, oh, ow])


@njit(parallel=True, cache=True)
def _bconv2d(x, wt, wpc_t, c_in, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, pad_one, mode_args, post, out_f, out_b):
    """Threads over output rows; two output pixels at a time share each kernel word loaded, and
    the innermost loop runs over output channels (``wt`` is (kh*kw*words, O)), so it vectorizes
    without horizontal sums. ``mode_args``: (mode, mul, add, t2, flip); ``post``: the epilogue's
    (codes, mul, add, residual, store, pack). No fast-math: the integer loops vectorize without
    it, and the epilogue keeps numpy's rounding."""
    n_img = x.shape[0]
    kwords, n_out = wt.shape
    taps = kh * kw
    for row in prange(n_img * ho):
        n = row // ho
        oh = row % ho
        patch0 = np.empty(kwords, dtype=np.uint64)
        patch1 = np.empty(kwords, dtype=np.uint64)
        n_acc = mode_args[3].shape[0] if mode_args[0] == 1 else n_out  # whole output words for bits
        acc0 = np.zeros(n_acc, dtype=np.int64)
        acc1 = np.zeros(n_acc, dtype=np.int64)
        y = np.zeros(scratch_size(n_out, True), dtype=np.float32)  # whole words: a post may pack
        oob0 = np.zeros(taps, dtype=np.bool_)
        oob1 = np.zeros(taps, dtype=np.bool_)
        for ow0 in range(0, wo, 2):
            ow1 = min(ow0 + 1, wo - 1)
            n0 = _gather(x, n, oh, ow0, kh, kw, sh, sw, dh, dw, pt, pl, patch0, oob0)
            n1 = _gather(x, n, oh, ow1, kh, kw, sh, sw, dh, dw, pt, pl, patch1, oob1)
            _xor_popcount_pair(patch0, patch1, wt, acc0, acc1)
            _to_dots(acc0, n_out, n0, oob0, wpc_t, c_in, taps, pad_one)
            _finish_pixel(acc0, y, n_out, mode_args, post, n, oh, ow0, out_f, out_b)
            if ow1 != ow0:
                _to_dots(acc1, n_out, n1, oob1, wpc_t, c_in, taps, pad_one)
                _finish_pixel(acc1, y, n_out, mode_args, post, n, oh, ow1, out_f, out_b)


@njit(parallel=True, cache=True, fastmath=True)
def _bdense_dots(x, w, k, dots):
    n_img, words = x.shape
    n_out = w.shape[0]
    for o in prange(n_out):
        for n in range(n_img):
            acc = 0
            for q in range(words):
                acc += popcount(x[n, q] ^ w[o, q])
            dots[n, o] = k - 2 * acc


@njit(parallel=True, cache=True, fastmath=True)
def _bdense_emit(dots, n_out, mode, mul, add, t2, flip, out_f, out_b):
    for n in prange(dots.shape[0]):
        _emit(dots[n], n_out, mode, mul, add, t2, flip, out_f[n], out_b[n])


@njit(parallel=True, cache=True)
def _maxpool_bits(x, kh, kw, sh, sw, pt, pl, ho, wo, and_mask, out):
    n_img, h, wid, words = x.shape
    for row in prange(n_img * ho):
        n = row // ho
        oh = row % ho
        r0, r1 = window(oh, sh, pt, kh, h)
        for ow in range(wo):
            c0, c1 = window(ow, sw, pl, kw, wid)
            for q in range(words):
                a = np.uint64(0xFFFFFFFFFFFFFFFF)
                b = np.uint64(0)
                for i in range(r0, r1):
                    for j in range(c0, c1):
                        v = x[n, i, j, q]
                        a &= v
                        b |= v
                m = and_mask[q]
                out[n, oh, ow, q] = (a & m) | (b & ~m)


_DUMMY_F = np.zeros((1,), np.float32)
_DUMMY_I = np.zeros((1,), np.int64)
_DUMMY_B = np.zeros((1,), np.bool_)


def bit_thresholds(sgn, thr):
    """(sgn, thr) of ``bit = sgn * d < thr`` (sgn = +/-1) -> (t2, flip) of ``bit = (d < t2) != flip``,
    padded to whole 64-bit words with channels whose bit is always 0. For sgn = -1,
    ``-d < thr`` is ``not d < 1 - thr`` on integers."""
    sgn = np.asarray(sgn, np.int64)
    thr = np.asarray(thr, np.int64)
    if not np.isin(sgn, (-1, 1)).all():
        raise ValueError(f"threshold signs must be +1 or -1, got {sorted(set(sgn.tolist()))}")
    n_pad = -(-sgn.shape[0] // 64) * 64
    t2 = np.full(n_pad, np.iinfo(np.int64).min, np.int64)
    flip = np.zeros(n_pad, np.bool_)
    t2[: sgn.shape[0]] = np.where(sgn > 0, thr, 1 - thr)
    flip[: sgn.shape[0]] = sgn < 0
    return t2, flip


def _mode_args(mode, mul, add, sgn, thr):
    if mode == "float":
        return 0, np.asarray(mul, np.float32), np.asarray(add, np.float32), _DUMMY_I, _DUMMY_B
    t2, flip = bit_thresholds(sgn, thr)
    return 1, _DUMMY_F, _DUMMY_F, t2, flip


def kernel_matrix(w):
    """Packed conv kernel (O, kh, kw, words) -> the (kh*kw*words, O) matrix ``_bconv2d`` reads."""
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def bconv2d(
    x,
    w,
    c_in,
    stride,
    dilation,
    pads,
    pad_value,
    mode,
    mul=None,
    add=None,
    sgn=None,
    thr=None,
    wpc=None,
    wt=None,
    groups=1,
    post: Epilogue | None = None,
):
    """Same contract as ``reference.bconv2d``; ``wpc`` (O, kh*kw) kernel bits per tap and
    ``wt`` = ``kernel_matrix(w)`` (both computed here when not given). Grouped convolutions run
    group by group (float dots, exact below 2^24) and finish in numpy.

    ``post`` (float mode, ungrouped): the ``Epilogue`` run on each output pixel after ``d * mul +
    add``; the result is then ``(float or None, bits or None)`` as ``post`` stores and packs."""
    if groups > 1:
        parts = []
        for xs, ws in _group_slices(x.shape[-1], w.shape[0], groups):
            ones = np.ones(ws.stop - ws.start, np.float32)
            args = (x[..., xs], w[ws], c_in, stride, dilation, pads, pad_value, "float", ones, 0 * ones)
            parts.append(bconv2d(*args))
        return _finish(np.concatenate(parts, axis=-1).astype(np.int64), mode, mul, add, sgn, thr)
    if wpc is None:
        wpc = _popcount_np(w).sum(axis=-1).reshape(w.shape[0], -1)
    if wt is None:
        wt = kernel_matrix(w)
    o, kh, kw, _ = w.shape
    ho, wo = conv_hw(x, w, stride, dilation, pads)
    geometry = (kh, kw, stride[0], stride[1], dilation[0], dilation[1], pads[0][0], pads[1][0], ho, wo)
    m, mul, add, t2, flip = _mode_args(mode, mul, add, sgn, thr)
    e = post if post is not None else STORE
    out_f, out_b = outputs((x.shape[0], ho, wo), o, e) if m == 0 else _outputs(1, (x.shape[0], ho, wo), o)
    wpc_t = np.ascontiguousarray(np.asarray(wpc, np.int64).T)
    x = np.ascontiguousarray(x)
    _bconv2d(x, wt, wpc_t, c_in, *geometry, pad_value != 0, (m, mul, add, t2, flip), tuple(e), out_f, out_b)
    if m == 1:
        return out_b
    return out_f if post is None else results(out_f, out_b, e)


def _conv_setup(x, w, stride, dilation, pads, mode, mul, add, sgn, thr):
    """A binary conv's kernel geometry arguments, its mode arguments and its output buffers."""
    o, kh, kw, _ = w.shape
    ho, wo = conv_hw(x, w, stride, dilation, pads)
    geometry = (kh, kw, stride[0], stride[1], dilation[0], dilation[1], pads[0][0], pads[1][0], ho, wo)
    m = _mode_args(mode, mul, add, sgn, thr)
    return geometry, m, _outputs(m[0], (x.shape[0], ho, wo), o)


def _outputs(m, lead, o):
    """(float output, bits output) buffers of a binary layer in mode ``m``; the unused one tiny."""
    if m == 0:
        return np.empty(lead + (o,), np.float32), np.empty(lead + (1,), np.uint64)
    return np.empty(lead + (1,), np.float32), np.empty(lead + ((o + 63) // 64,), np.uint64)


@njit(parallel=True, cache=True, fastmath=True)
def _bconv2d_planes(x, wt, planes, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, mode, mul, add, t2, flip, out_f, out_b):
    """Conv of bit-plane activations (zero padding, so padded taps are all-zero words) with a
    packed sign kernel ``wt`` (kh*kw*words, O): per plane b, 2^b (popcount(q_b) - 2 popcount(q_b
    AND w)) summed; threads over output rows."""
    n_img = x.shape[0]
    kwords, n_out = wt.shape
    taps = kh * kw
    words = kwords // taps
    for row in prange(n_img * ho):
        n = row // ho
        oh = row % ho
        patch = np.empty(taps * planes * words, dtype=np.uint64)
        oob = np.zeros(taps, dtype=np.bool_)
        acc = np.zeros(t2.shape[0] if mode == 1 else n_out, dtype=np.int64)
        for ow in range(wo):
            _gather(x, n, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, patch, oob)
            for o in range(acc.shape[0]):
                acc[o] = 0
            for t in range(taps):
                for b in range(planes):
                    for q in range(words):
                        pv = patch[(t * planes + b) * words + q]
                        ones = popcount(pv)
                        wrow = wt[t * words + q]
                        for o in range(n_out):
                            acc[o] += (ones - 2 * popcount(pv & wrow[o])) << b
            _emit(acc, n_out, mode, mul, add, t2, flip, out_f[n, oh, ow], out_b[n, oh, ow])


def bconv2d_planes(x, w, planes, stride, dilation, pads, mode, mul=None, add=None, sgn=None, thr=None):
    """Same contract as ``reference.bconv2d_planes``."""
    geometry, (m, mul, add, t2, flip), (out_f, out_b) = _conv_setup(
        x, w, stride, dilation, pads, mode, mul, add, sgn, thr
    )
    x = np.ascontiguousarray(x)
    _bconv2d_planes(x, kernel_matrix(w), planes, *geometry, m, mul, add, t2, flip, out_f, out_b)
    return out_f if m == 0 else out_b


def bdense_planes(x, w, planes, mode, mul=None, add=None, sgn=None, thr=None):
    """Same contract as ``reference.bdense_planes`` (a 1x1 convolution of a 1x1 map)."""
    x4 = x.reshape(x.shape[0], 1, 1, x.shape[1])
    y = bconv2d_planes(
        x4, w.reshape(w.shape[0], 1, 1, -1), planes, (1, 1), (1, 1), ((0, 0), (0, 0)), mode, mul, add, sgn, thr
    )
    return y.reshape(x.shape[0], -1)


def bdense(x, w, k, mode, mul=None, add=None, sgn=None, thr=None):
    """Same contract as ``kernels_numpy.bdense``."""
    n = x.shape[0]
    o = w.shape[0]
    m, mul, add, t2, flip = _mode_args(mode, mul, add, sgn, thr)
    dots = np.zeros((n, t2.shape[0] if m == 1 else o), np.int64)
    _bdense_dots(np.ascontiguousarray(x), w, k, dots)
    if m == 0:
        out_f, out_b = np.empty((n, o), np.float32), np.empty((n, 1), np.uint64)
    else:
        out_f, out_b = np.empty((n, 1), np.float32), np.empty((n, (o + 63) // 64), np.uint64)
    _bdense_emit(dots, o, m, mul, add, t2, flip, out_f, out_b)
    return out_f if m == 0 else out_b


def maxpool2d_bits(x, kernel, stride, pads, ceil_mode, and_mask):
    """Same contract as ``kernels_numpy.maxpool2d_bits``."""
    n, h, wid, words = x.shape
    (pt, _), (pl, _) = pads
    ho, wo = _pool_windows(h, wid, kernel, stride, pads, ceil_mode)
    out = np.empty((n, ho, wo, words), np.uint64)
    _maxpool_bits(np.ascontiguousarray(x), kernel[0], kernel[1], stride[0], stride[1], pt, pl, ho, wo, and_mask, out)
    return out


@njit(parallel=True, cache=True)
def _pack_sign_count(x, out):
    a, b, c, k = x.shape
    words = out.shape[3]
    bad = 0
    for r in prange(a * b):
        i = r // b
        j = r % b
        for m in range(c):
            for q in range(words):
                lo = q * 64
                hi = min(lo + 64, k)
                word = np.uint64(0)
                for t in range(lo, hi):
                    v = x[i, j, m, t]
                    word |= np.uint64(v < 0) << np.uint64(t - lo)
                    bad += np.int64((v != 1.0) & (v != -1.0))
                out[i, j, m, q] = word
    return bad


def pack_sign_count(x: np.ndarray) -> tuple[np.ndarray, int]:
    """``bits.pack_sign`` of a 4-D float32 array of any strides (a zero-copy view of a torch
    tensor) in threads, plus the count of values that are not exactly +/-1, so ``onebit.xnor``
    can tell a binary kernel from one that is not binary yet in the same pass."""
    out = np.empty(x.shape[:3] + ((x.shape[3] + 63) // 64,), np.uint64)
    return out, int(_pack_sign_count(x, out))


@njit(parallel=True, cache=True)
def _sign_and_mask(x, clip, out, mask):
    """out = +1 where x >= 0 else -1 (NaN: -1), mask = |x| <= clip, in one read of x."""
    n = x.shape[0]
    chunk = 1 << 14
    for c in prange((n + chunk - 1) // chunk):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            v = x[i]
            out[i] = np.float32(1.0) if v >= 0 else np.float32(-1.0)
            mask[i] = abs(v) <= clip


def sign_and_mask(x: np.ndarray, clip: float, out: np.ndarray, mask: np.ndarray) -> None:
    """Fill flat float32 ``out`` with sign(x) (sign(0) = +1) and bool ``mask`` with |x| <= clip."""
    _sign_and_mask(x, np.float32(clip), out, mask)


@njit(parallel=True, cache=True)
def _unpack_sign_into(bits, out):
    n, h, w, c = out.shape
    for r in prange(n * h):
        i = r // h
        j = r % h
        for k in range(w):
            for ch in range(c):
                word = bits[i, j, k, ch >> 6]
                out[i, j, k, ch] = np.float32(1.0) - np.float32(2.0) * np.float32(
                    (word >> np.uint64(ch & 63)) & np.uint64(1)
                )


def unpack_sign_into(bits: np.ndarray, out: np.ndarray) -> None:
    """Inverse of ``pack_sign_count``: +/-1 float32 values of packed ``bits`` (N, H, W, words)
    written into ``out`` (N, H, W, C), a view of any strides (a torch tensor's NHWC view)."""
    _unpack_sign_into(bits, out)
