"""numba kernels for the binary ops: XOR + popcount on 64-bit words, threads over output rows.

``popcount`` is a tiny intrinsic that emits LLVM's ``llvm.ctpop.i64``; LLVM lowers it to the
``popcnt`` instruction (or ``vpopcntq`` where AVX-512 VPOPCNTDQ exists) and vectorizes the
reduction loops. Each kernel computes the same integers as ``kernels_numpy`` (tests check that
they are equal) and fuses the output transform: float ``d * mul + add`` or threshold bits packed on
the fly, so a binary layer writes packed bits directly.

Importing this module raises ImportError when numba is missing; the runtime then uses numpy.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernels_numpy import out_size


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
def _emit(dots, n_out, mode, mul, add, sgn, thr, out_f, out_b):
    """Write one pixel's dots: float (mode 0) into out_f or threshold bits (mode 1) into out_b."""
    if mode == 0:
        for o in range(n_out):
            out_f[o] = np.float32(dots[o]) * mul[o] + add[o]
    else:
        for q in range(out_b.shape[0]):
            word = np.uint64(0)
            for b in range(64):
                o = q * 64 + b
                if o < n_out and sgn[o] * dots[o] < thr[o]:
                    word |= np.uint64(1) << np.uint64(b)
            out_b[q] = word


@njit(parallel=True, cache=True, fastmath=True)
def _bconv2d(x, w, wpc, c_in, sh, sw, dh, dw, pt, pl, ho, wo, pad_one, mode, mul, add, sgn, thr,
             out_f, out_b):
    n_img, h, wid, words = x.shape
    n_out, kh, kw, _ = w.shape
    taps = kh * kw
    kwords = taps * words
    wf = w.reshape(n_out, kwords)
    k_full = c_in * taps
    for row in prange(n_img * ho):
        n = row // ho
        oh = row % ho
        patch = np.zeros(kwords, dtype=np.uint64)
        dots = np.empty(n_out, dtype=np.int64)
        oob = np.zeros(taps, dtype=np.bool_)
        for ow in range(wo):
            n_oob = 0
            for i in range(kh):
                ih = oh * sh - pt + i * dh
                for j in range(kw):
                    iw = ow * sw - pl + j * dw
                    base = (i * kw + j) * words
                    if ih >= 0 and ih < h and iw >= 0 and iw < wid:
                        for q in range(words):
                            patch[base + q] = x[n, ih, iw, q]
                        oob[i * kw + j] = False
                    else:
                        for q in range(words):
                            patch[base + q] = 0
                        oob[i * kw + j] = True
                        n_oob += 1
            o = 0
            while o + 4 <= n_out:  # four output channels per pass over the patch
                a0 = 0
                a1 = 0
                a2 = 0
                a3 = 0
                for k in range(kwords):
                    p = patch[k]
                    a0 += popcount(p ^ wf[o, k])
                    a1 += popcount(p ^ wf[o + 1, k])
                    a2 += popcount(p ^ wf[o + 2, k])
                    a3 += popcount(p ^ wf[o + 3, k])
                dots[o] = a0
                dots[o + 1] = a1
                dots[o + 2] = a2
                dots[o + 3] = a3
                o += 4
            while o < n_out:
                a0 = 0
                for k in range(kwords):
                    a0 += popcount(patch[k] ^ wf[o, k])
                dots[o] = a0
                o += 1
            if n_oob > 0 and not pad_one:
                k_valid = c_in * (taps - n_oob)
                for o in range(n_out):
                    corr = 0
                    for t in range(taps):
                        if oob[t]:
                            corr += wpc[o, t]
                    dots[o] = k_valid - 2 * (dots[o] - corr)
            else:
                for o in range(n_out):
                    dots[o] = k_full - 2 * dots[o]
            _emit(dots, n_out, mode, mul, add, sgn, thr, out_f[n, oh, ow], out_b[n, oh, ow])


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
def _bdense_emit(dots, mode, mul, add, sgn, thr, out_f, out_b):
    n_img, n_out = dots.shape
    for n in prange(n_img):
        _emit(dots[n], n_out, mode, mul, add, sgn, thr, out_f[n], out_b[n])


@njit(parallel=True, cache=True)
def _maxpool_bits(x, kh, kw, sh, sw, pt, pl, ho, wo, and_mask, out):
    n_img, h, wid, words = x.shape
    for row in prange(n_img * ho):
        n = row // ho
        oh = row % ho
        r0 = max(oh * sh - pt, 0)
        r1 = min(oh * sh - pt + kh, h)
        for ow in range(wo):
            c0 = max(ow * sw - pl, 0)
            c1 = min(ow * sw - pl + kw, wid)
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


def _mode_args(n_out, mode, mul, add, sgn, thr):
    if mode == "float":
        return 0, np.asarray(mul, np.float32), np.asarray(add, np.float32), _DUMMY_I, _DUMMY_I
    return 1, _DUMMY_F, _DUMMY_F, np.asarray(sgn, np.int64), np.asarray(thr, np.int64)


def bconv2d(x, w, c_in, stride, dilation, pads, pad_value, mode, mul=None, add=None, sgn=None,
            thr=None, wpc=None):
    """Same contract as ``kernels_numpy.bconv2d``; ``wpc`` (O, kh*kw) kernel bits per tap."""
    n, h, wid, words = x.shape
    o, kh, kw, _ = w.shape
    (pt, pb), (pl, pr) = pads
    ho = out_size(h, kh, stride[0], dilation[0], pt, pb)
    wo = out_size(wid, kw, stride[1], dilation[1], pl, pr)
    m, mul, add, sgn, thr = _mode_args(o, mode, mul, add, sgn, thr)
    if m == 0:
        out_f = np.empty((n, ho, wo, o), np.float32)
        out_b = np.empty((n, ho, wo, 1), np.uint64)
    else:
        out_f = np.empty((n, ho, wo, 1), np.float32)
        out_b = np.empty((n, ho, wo, (o + 63) // 64), np.uint64)
    _bconv2d(np.ascontiguousarray(x), w, wpc, c_in, stride[0], stride[1], dilation[0], dilation[1],
             pt, pl, ho, wo, pad_value != 0, m, mul, add, sgn, thr, out_f, out_b)
    return out_f if m == 0 else out_b


def bdense(x, w, k, mode, mul=None, add=None, sgn=None, thr=None):
    """Same contract as ``kernels_numpy.bdense``."""
    n = x.shape[0]
    o = w.shape[0]
    dots = np.empty((n, o), np.int64)
    _bdense_dots(np.ascontiguousarray(x), w, k, dots)
    m, mul, add, sgn, thr = _mode_args(o, mode, mul, add, sgn, thr)
    if m == 0:
        out_f, out_b = np.empty((n, o), np.float32), np.empty((n, 1), np.uint64)
    else:
        out_f, out_b = np.empty((n, 1), np.float32), np.empty((n, (o + 63) // 64), np.uint64)
    _bdense_emit(dots, m, mul, add, sgn, thr, out_f, out_b)
    return out_f if m == 0 else out_b


def maxpool2d_bits(x, kernel, stride, pads, ceil_mode, and_mask):
    """Same contract as ``kernels_numpy.maxpool2d_bits``."""
    n, h, wid, words = x.shape
    (pt, pb), (pl, pr) = pads
    ho = out_size(h, kernel[0], stride[0], 1, pt, pb, ceil_mode)
    wo = out_size(wid, kernel[1], stride[1], 1, pl, pr, ceil_mode)
    out = np.empty((n, ho, wo, words), np.uint64)
    _maxpool_bits(np.ascontiguousarray(x), kernel[0], kernel[1], stride[0], stride[1], pt, pl, ho,
                  wo, and_mask, out)
    return out
