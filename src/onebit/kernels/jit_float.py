"""numba kernels for the float ops around the binary layers, each ending in a fused epilogue.

In a residual BNN (Bi-Real Net, QuickNet) most of an inference happens outside the binary
convolutions: the real-valued stem, batch norm, relu, the residual add, depthwise "blur"
convolutions, pooling, and the sign + packing before the next binary layer. Run as separate numpy
passes over batch-sized arrays they cost more than the binary layers themselves. Here:

- ``Epilogue`` / ``epilogue``: the element-wise ops that follow a convolution (per-channel
  ``y * mul + add``, i.e. a folded batch norm or a bias; relu; PReLU; the add of a residual
  branch), applied to one output pixel while it is in cache, then stored as float and/or packed
  into sign bits (bit = 1 iff the value is < 0, so 0 is +1) for the next binary layer. The binary
  convolution (``onebit.kernels.jit``) and every convolution here end in it.
- ``conv2d``: an ungrouped float convolution is im2col tiles times the weight matrix through BLAS
  (numpy's matmul: a hand-written numba loop reached half its speed on a 7x7 stem), each tile
  finished by the epilogue; depthwise convolutions run as a direct kernel vectorised over
  channels; other grouped convolutions as a direct kernel over groups.
- ``maxpool2d`` / ``avgpool2d``: one pass each, torch's output-size and divisor rules.

The epilogue's arithmetic is numpy's, one rounding per operation in the same order (these kernels
are compiled without fast-math, so no multiply-add is contracted): a fused chain gives the same
float32 values, and the same bits, as running its ops one by one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .geometry import out_size
from .reference import _pool_windows, avgpool_divisors

# epilogue op codes
AFFINE, RELU, RESIDUAL, PRELU = 1, 2, 3, 4

_NO_F = np.zeros((1, 1, 1, 1), np.float32)
_NO_B = np.zeros((1, 1, 1, 1), np.uint64)


class Epilogue(NamedTuple):
    """What follows a convolution, per output pixel: ``codes`` (S,) int64 run in order, each
    AFFINE (``y * mul[s] + add[s]``), RELU, RESIDUAL (``y + residual``, same shape as the output)
    or PRELU (``y`` where ``y >= 0`` else ``y * mul[s]``); ``mul`` / ``add`` (S, O) float32 per
    channel; then the float result is kept when ``store`` and its sign bits packed when ``pack``."""

    codes: np.ndarray
    mul: np.ndarray
    add: np.ndarray
    residual: np.ndarray
    store: bool
    pack: bool


def make_epilogue(steps, channels, residual=None, store=True, pack=False) -> Epilogue:
    """An ``Epilogue`` from ``steps``: (code, mul, add) with per-channel arrays or None."""
    s = max(len(steps), 1)
    codes = np.array([c for c, _, _ in steps], np.int64)
    mul = np.ones((s, channels), np.float32)
    add = np.zeros((s, channels), np.float32)
    for i, (_, m, a) in enumerate(steps):
        if m is not None:
            mul[i] = np.asarray(m, np.float32).reshape(-1)
        if a is not None:
            add[i] = np.asarray(a, np.float32).reshape(-1)
    res = _NO_F if residual is None else np.ascontiguousarray(residual, np.float32)
    return Epilogue(codes, mul, add, res, bool(store), bool(pack))


# no element-wise ops, the float result stored: its arrays are never indexed, so one serves any width
STORE = make_epilogue([], 1)


def outputs(lead: tuple, channels: int, e: Epilogue) -> tuple[np.ndarray, np.ndarray]:
    """The (float, bits) output buffers an epilogue writes; the one it does not write is tiny."""
    out_f = np.empty(lead + (channels,), np.float32) if e.store else _NO_F
    out_b = np.empty(lead + ((channels + 63) // 64,), np.uint64) if e.pack else _NO_B
    return out_f, out_b


def results(out_f: np.ndarray, out_b: np.ndarray, e: Epilogue):
    """(float or None, bits or None), as the epilogue wrote them."""
    return (out_f if e.store else None), (out_b if e.pack else None)


@njit(cache=True, inline="always")
def epilogue(y, n_out, codes, p_mul, p_add, res, n, oh, ow, store, out_f, pack, out_b):
    """Finish output pixel (n, oh, ow): ``y`` (its ``n_out`` float32 values; past ``n_out`` up to
    a whole word it holds zeros) through ``codes``, then stored and/or packed (see ``Epilogue``)."""
    for s in range(codes.shape[0]):
        c = codes[s]
        if c == AFFINE:
            for o in range(n_out):
                y[o] = y[o] * p_mul[s, o] + p_add[s, o]
        elif c == RELU:
            for o in range(n_out):
                if y[o] < 0:
                    y[o] = np.float32(0)
        elif c == RESIDUAL:
            for o in range(n_out):
                y[o] = y[o] + res[n, oh, ow, o]
        elif c == PRELU:
            for o in range(n_out):
                if y[o] < 0:
                    y[o] = y[o] * p_mul[s, o]
    if store:
        for o in range(n_out):
            out_f[n, oh, ow, o] = y[o]
    if pack:
        for q in range(out_b.shape[3]):
            word = np.uint64(0)
            for b in range(64):
                word |= np.uint64(y[q * 64 + b] < 0) << np.uint64(b)
            out_b[n, oh, ow, q] = word


@njit(cache=True, inline="always")
def scratch_size(channels, pack):
    """Length of a pixel's scratch vector for ``epilogue``: whole 64-bit words when packing (the
    zeros past ``channels`` are the padding bits), else ``channels``."""
    return (channels + 63) // 64 * 64 if pack else channels


@njit(cache=True, inline="always")
def window(o, stride, pad, k, size):
    """[start, stop) of the input rows (or columns) pooling window ``o`` covers, clipped to the
    input: padding and ceil_mode's overhang are never read."""
    start = o * stride - pad
    return max(start, 0), min(start + k, size)


@njit(parallel=True, cache=True)
def _im2col(x, start, stop, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, pad_value, cols):
    """Rows [start, stop) of the im2col matrix of NHWC ``x`` (row = output pixel n*ho*wo + oh*wo
    + ow, column = (i*kw + j)*C + c) into ``cols``. A window row wholly inside the image is one
    contiguous run of kw*C values in NHWC (undilated): copied as such."""
    h, wid, c = x.shape[1], x.shape[2], x.shape[3]
    rows = x.reshape(x.shape[0], h, wid * c)
    run = kw * c
    for r in prange(stop - start):
        p = start + r
        n = p // (ho * wo)
        oh = (p // wo) % ho
        ow = p % wo
        iw0 = ow * sw - pl
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            base = i * run
            if ih < 0 or ih >= h:
                for t in range(run):
                    cols[r, base + t] = pad_value
            elif dw == 1 and iw0 >= 0 and iw0 + kw <= wid:
                src = iw0 * c
                for t in range(run):
                    cols[r, base + t] = rows[n, ih, src + t]
            else:
                for j in range(kw):
                    iw = iw0 + j * dw
                    inside = iw >= 0 and iw < wid
                    for ch in range(c):
                        cols[r, base + j * c + ch] = x[n, ih, iw, ch] if inside else pad_value


@njit(parallel=True, cache=True)
def _finish_rows(y, start, stop, ho, wo, codes, p_mul, p_add, res, store, out_f, pack, out_b):
    """The epilogue over rows [start, stop) of the output pixels, whose values are ``y[:stop-start]``;
    threads over blocks of 64 rows, each with one scratch vector."""
    n_out = y.shape[1]
    size = scratch_size(n_out, pack)
    for blk in prange((stop - start + 63) // 64):
        v = np.zeros(size, np.float32)
        for r in range(blk * 64, min(stop - start, blk * 64 + 64)):
            p = start + r
            for o in range(n_out):
                v[o] = y[r, o]
            n, oh, ow = p // (ho * wo), (p // wo) % ho, p % wo
            epilogue(v, n_out, codes, p_mul, p_add, res, n, oh, ow, store, out_f, pack, out_b)


@njit(parallel=True, cache=True)
def _depthwise(
    x, wmat, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, pad_value, codes, p_mul, p_add, res, store, out_f, pack, out_b
):
    """Depthwise conv (channel c reads only channel c; ``wmat`` (kh*kw, C)), the innermost loop
    over channels, then the epilogue; threads over output rows."""
    h, wid, c = x.shape[1], x.shape[2], x.shape[3]
    size = scratch_size(c, pack)
    for row in prange(x.shape[0] * ho):
        n = row // ho
        oh = row % ho
        y = np.zeros(size, np.float32)
        for ow in range(wo):
            for o in range(c):
                y[o] = np.float32(0)
            for i in range(kh):
                ih = oh * sh - pt + i * dh
                for j in range(kw):
                    iw = ow * sw - pl + j * dw
                    t = i * kw + j
                    if ih >= 0 and ih < h and iw >= 0 and iw < wid:
                        for o in range(c):
                            y[o] += x[n, ih, iw, o] * wmat[t, o]
                    else:
                        for o in range(c):
                            y[o] += pad_value * wmat[t, o]
            epilogue(y, c, codes, p_mul, p_add, res, n, oh, ow, store, out_f, pack, out_b)


@njit(parallel=True, cache=True)
def _grouped(
    x,
    wmat,
    groups,
    kh,
    kw,
    sh,
    sw,
    dh,
    dw,
    pt,
    pl,
    ho,
    wo,
    pad_value,
    codes,
    p_mul,
    p_add,
    res,
    store,
    out_f,
    pack,
    out_b,
):
    """Grouped conv: group g reads channels [g C/G, (g+1) C/G) and writes outputs [g O/G, (g+1)
    O/G) (``wmat`` (kh*kw*C/G, O)), then the epilogue; threads over output rows."""
    h, wid = x.shape[1], x.shape[2]
    n_out = wmat.shape[1]
    cg = x.shape[3] // groups
    og = n_out // groups
    size = scratch_size(n_out, pack)
    for row in prange(x.shape[0] * ho):
        n = row // ho
        oh = row % ho
        y = np.zeros(size, np.float32)
        for ow in range(wo):
            for o in range(n_out):
                y[o] = np.float32(0)
            for i in range(kh):
                ih = oh * sh - pt + i * dh
                for j in range(kw):
                    iw = ow * sw - pl + j * dw
                    inside = ih >= 0 and ih < h and iw >= 0 and iw < wid
                    base = (i * kw + j) * cg
                    for g in range(groups):
                        for ch in range(cg):
                            v = x[n, ih, iw, g * cg + ch] if inside else pad_value
                            for o in range(g * og, (g + 1) * og):
                                y[o] += v * wmat[base + ch, o]
            epilogue(y, n_out, codes, p_mul, p_add, res, n, oh, ow, store, out_f, pack, out_b)


_TILE_BYTES = 1 << 21  # an im2col tile and its product stay in the core's L2 (1-2 MB)


def conv2d(x, wmat, bias, kernel, stride, dilation, pads, pad_value, groups=1, post: Epilogue | None = None):
    """``reference.conv2d`` (NHWC float32 ``x``, ``wmat`` (kh*kw*C/groups, O), optional bias).
    With ``post`` the epilogue follows (a bias then belongs in it, as its first AFFINE step) and
    the result is (float output or None, packed bits or None)."""
    if post is not None and bias is not None:
        raise ValueError("conv2d: give the bias inside post (its first AFFINE step) or as bias, not both")
    e = post if post is not None else STORE if bias is None else make_epilogue([(AFFINE, None, bias)], wmat.shape[1])
    n, h, wid, c = x.shape
    kh, kw = kernel
    (pt, pb), (pl, pr) = pads
    ho = out_size(h, kh, stride[0], dilation[0], pt, pb)
    wo = out_size(wid, kw, stride[1], dilation[1], pl, pr)
    o = wmat.shape[1]
    x = np.ascontiguousarray(x, np.float32)
    out_f, out_b = outputs((n, ho, wo), o, e)
    geometry = (kh, kw, stride[0], stride[1], dilation[0], dilation[1], pt, pl, ho, wo, np.float32(pad_value))
    tail = (e.codes, e.mul, e.add, e.residual, e.store, out_f, e.pack, out_b)
    if groups > 1 and groups == c == o:
        _depthwise(x, wmat, *geometry, *tail)
    elif groups > 1:
        _grouped(x, wmat, groups, *geometry, *tail)
    else:
        _gemm_tiles(x, wmat, geometry, tail)
    return out_f if post is None else results(out_f, out_b, e)


def _gemm_tiles(x, wmat, geometry, tail):
    """Ungrouped conv: im2col rows in tiles (a 1x1 stride-1 unpadded conv reads ``x`` as its own
    im2col matrix), each times ``wmat`` in BLAS and finished by the epilogue."""
    kh, kw, sh, sw, _, _, pt, pl, ho, wo, _ = geometry
    k, o = wmat.shape
    rows = x.shape[0] * ho * wo
    direct = kh == kw == sh == sw == 1 and pt == pl == 0 and ho == x.shape[1] and wo == x.shape[2]
    tile = int(min(rows, max(256, _TILE_BYTES // (4 * (k + o)))))
    cols = None if direct else np.empty((tile, k), np.float32)
    flat = x.reshape(rows, k) if direct else None
    y = np.empty((tile, o), np.float32)
    for s in range(0, rows, tile):
        e = min(rows, s + tile)
        if direct:
            a = flat[s:e]
        else:
            _im2col(x, s, e, *geometry, cols)
            a = cols[: e - s]
        np.matmul(a, wmat, out=y[: e - s])
        _finish_rows(y, s, e, ho, wo, *tail)


@njit(parallel=True, cache=True)
def _maxpool(x, kh, kw, sh, sw, pt, pl, ho, wo, out):
    n_img, h, wid, c = x.shape
    for row in prange(n_img * ho):
        n = row // ho
        oh = row % ho
        r0, r1 = window(oh, sh, pt, kh, h)
        for ow in range(wo):
            c0, c1 = window(ow, sw, pl, kw, wid)
            for o in range(c):
                out[n, oh, ow, o] = -np.inf
            for i in range(r0, r1):
                for j in range(c0, c1):
                    for o in range(c):
                        v = x[n, i, j, o]
                        if v > out[n, oh, ow, o] or v != v:  # NaN wins, as in np.maximum
                            out[n, oh, ow, o] = v


def maxpool2d(x, kernel, stride, pads, ceil_mode):
    """Same contract as ``reference.maxpool2d`` (padding is -inf: it never wins)."""
    n, h, wid, c = x.shape
    (pt, _), (pl, _) = pads
    ho, wo = _pool_windows(h, wid, kernel, stride, pads, ceil_mode)
    out = np.empty((n, ho, wo, c), np.float32)
    _maxpool(np.ascontiguousarray(x, np.float32), kernel[0], kernel[1], stride[0], stride[1], pt, pl, ho, wo, out)
    return out


@njit(parallel=True, cache=True)
def _avgpool(x, kh, kw, sh, sw, pt, pl, ho, wo, div, out):
    """Window sums in the reference's tap order (padding adds 0), divided by ``div`` (ho, wo)."""
    n_img, h, wid, c = x.shape
    for row in prange(n_img * ho):
        n = row // ho
        oh = row % ho
        for ow in range(wo):
            for o in range(c):
                out[n, oh, ow, o] = np.float32(0)
            for i in range(kh):
                ih = oh * sh - pt + i
                for j in range(kw):
                    iw = ow * sw - pl + j
                    if ih >= 0 and ih < h and iw >= 0 and iw < wid:
                        for o in range(c):
                            out[n, oh, ow, o] += x[n, ih, iw, o]
                    else:
                        for o in range(c):
                            out[n, oh, ow, o] += np.float32(0)
            d = div[oh, ow]
            for o in range(c):
                out[n, oh, ow, o] = out[n, oh, ow, o] / d


def avgpool2d(x, kernel, stride, pads, ceil_mode, count_include_pad, divisor_override):
    """Same contract as ``reference.avgpool2d``, the same sums and divisors."""
    n, h, wid, c = x.shape
    (pt, _), (pl, _) = pads
    ho, wo = _pool_windows(h, wid, kernel, stride, pads, ceil_mode)
    div = avgpool_divisors((h, wid), (ho, wo), kernel, stride, pads, count_include_pad, divisor_override)
    out = np.empty((n, ho, wo, c), np.float32)
    x = np.ascontiguousarray(x, np.float32)
    _avgpool(x, kernel[0], kernel[1], stride[0], stride[1], pt, pl, ho, wo, div, out)
    return out
