"""Pure-numpy kernels: the reference path (tests, machines without numba) and the float ops.

Layout: activations are NHWC (channels last), so a pixel's channels are one run of packed words.
Packed activations: (N, H, W, words) or (N, words) uint64. Packed conv kernels: (O, kh, kw, words).

A binary layer's integer dot is ``d = K - 2 * popcount(x XOR w)`` over its K valid taps. Its
output is either float (``d * mul + add`` per output channel: the folded kernel scale, bias and
batch norm) or packed bits (``bit = sgn * d < thr`` per channel: batch norm + sign folded into an
integer threshold, exact by construction). With ``pad_value`` 1 a padded tap is +1 (bit 0); with
``pad_value`` 0 it contributes nothing, so the dot runs over the valid taps only and subtracts the
kernel's own popcount at the padded taps (the correction term).
"""

from __future__ import annotations

import numpy as np

from .bits import pack_bool, popcount
from .geometry import out_size


def tap_validity(h, w, kh, kw, stride, dilation, pads, ho, wo) -> np.ndarray:
    """(ho, wo, kh*kw) bool: whether each kernel tap of each output pixel falls inside the input."""
    (pt, _), (pl, _) = pads
    ih = np.arange(ho)[:, None] * stride[0] - pt + np.arange(kh)[None, :] * dilation[0]
    iw = np.arange(wo)[:, None] * stride[1] - pl + np.arange(kw)[None, :] * dilation[1]
    vh = (ih >= 0) & (ih < h)
    vw = (iw >= 0) & (iw < w)
    return (vh[:, None, :, None] & vw[None, :, None, :]).reshape(ho, wo, kh * kw)


def _patches(x, kh, kw, stride, dilation, pads, fill, ho, wo):
    """im2col: (N, ho, wo, kh*kw, C) windows of NHWC ``x`` padded with ``fill``."""
    (pt, pb), (pl, pr) = pads
    n, h, w, c = x.shape
    xp = np.full((n, h + pt + pb, w + pl + pr, c), fill, dtype=x.dtype)
    xp[:, pt : pt + h, pl : pl + w] = x
    out = np.empty((n, ho, wo, kh * kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            out[:, :, :, i * kw + j] = xp[
                :, r0 : r0 + stride[0] * (ho - 1) + 1 : stride[0], c0 : c0 + stride[1] * (wo - 1) + 1 : stride[1]
            ]
    return out


def conv_hw(x, w, stride, dilation, pads) -> tuple[int, int]:
    """Output (height, width) of a conv of NHWC ``x`` with a kernel (O, kh, kw, ...)."""
    (pt, pb), (pl, pr) = pads
    ho = out_size(x.shape[1], w.shape[1], stride[0], dilation[0], pt, pb)
    wo = out_size(x.shape[2], w.shape[2], stride[1], dilation[1], pl, pr)
    return ho, wo


def _finish(d, mode, mul, add, sgn, thr):
    """Turn integer dots (..., O) into the layer's output: float or packed threshold bits."""
    if mode == "float":
        return (d.astype(np.float32) * mul + add).astype(np.float32)
    return pack_bool(sgn.astype(np.int64) * d < thr)


def _xor_popcount(p, w, chunk=4096):
    """(P, Kw) x (O, Kw) uint64 -> (P, O) int64 sum of popcount(p XOR w)."""
    out = np.empty((p.shape[0], w.shape[0]), dtype=np.int64)
    for s in range(0, p.shape[0], chunk):
        blk = p[s : s + chunk]
        out[s : s + chunk] = popcount(blk[:, None, :] ^ w[None, :, :]).sum(axis=-1)
    return out


def _and_popcount(p, w, chunk=4096):
    """(P, Kw) x (O, Kw) uint64 -> (P, O) int64 sum of popcount(p AND w)."""
    out = np.empty((p.shape[0], w.shape[0]), dtype=np.int64)
    for s in range(0, p.shape[0], chunk):
        blk = p[s : s + chunk]
        out[s : s + chunk] = popcount(blk[:, None, :] & w[None, :, :]).sum(axis=-1)
    return out


def _group_slices(total_words, out_channels, groups):
    """(input word slice, output channel slice) of each of ``groups`` groups."""
    wg, og = total_words // groups, out_channels // groups
    return [(slice(g * wg, (g + 1) * wg), slice(g * og, (g + 1) * og)) for g in range(groups)]


def bconv2d_dots(x, w, c_in, stride, dilation, pads, pad_value, groups=1):
    """Integer dots (N, ho, wo, O) of a binary conv of packed NHWC ``x`` with packed ``w``
    (O, kh, kw, words). ``c_in`` is the channel count of one group; with ``groups`` > 1 each
    group's channels are packed into their own words (``bits.pack_sign(..., groups=)``)."""
    if groups > 1:
        parts = [
            bconv2d_dots(x[..., xs], w[ws], c_in, stride, dilation, pads, pad_value)
            for xs, ws in _group_slices(x.shape[-1], w.shape[0], groups)
        ]
        return np.concatenate(parts, axis=-1)
    n, h, wd_in, words = x.shape
    o, kh, kw, _ = w.shape
    ho, wo = conv_hw(x, w, stride, dilation, pads)
    taps = kh * kw
    p = _patches(x, kh, kw, stride, dilation, pads, np.uint64(0), ho, wo)
    pc = _xor_popcount(p.reshape(n * ho * wo, taps * words), w.reshape(o, taps * words))
    pc = pc.reshape(n, ho, wo, o)
    if pad_value == 0 and any(v for pair in pads for v in pair):
        valid = tap_validity(h, wd_in, kh, kw, stride, dilation, pads, ho, wo)
        wpc = popcount(w).sum(axis=-1).reshape(o, taps)  # kernel bits per tap
        corr = (~valid).astype(np.int64) @ wpc.T  # (ho, wo, o): kernel bits at padded taps
        kvalid = c_in * valid.sum(axis=-1)[:, :, None]
        return kvalid - 2 * (pc - corr)
    return c_in * taps - 2 * pc


def bconv2d(x, w, c_in, stride, dilation, pads, pad_value, mode, mul=None, add=None, sgn=None, thr=None, groups=1):
    """Binary conv of packed NHWC ``x`` (N, H, W, words) with packed ``w`` (O, kh, kw, words)."""
    d = bconv2d_dots(x, w, c_in, stride, dilation, pads, pad_value, groups)
    return _finish(d, mode, mul, add, sgn, thr)


def bdense(x, w, k, mode, mul=None, add=None, sgn=None, thr=None):
    """Binary dense of packed ``x`` (N, words) with packed ``w`` (O, words), K valid bits."""
    d = k - 2 * _xor_popcount(x, w)
    return _finish(d, mode, mul, add, sgn, thr)


def plane_dots(p, w, planes):
    """Dots of multi-bit activations q = sum_b 2^b q_b (q_b in {0, 1}) with a sign kernel.

    ``p`` (P, planes * Kw): each row the bit-planes of one receptive field, plane b in words
    [b Kw, (b + 1) Kw); ``w`` (O, Kw) kernel sign bits (1 = -1). Per plane the dot of {0, 1}
    with +/-1 is popcount(q_b) - 2 popcount(q_b AND w): two popcounts, exact integers."""
    kw = w.shape[1]
    d = np.zeros((p.shape[0], w.shape[0]), np.int64)
    for b in range(planes):
        pb = np.ascontiguousarray(p[:, b * kw : (b + 1) * kw])
        d += (popcount(pb).sum(axis=-1)[:, None] - 2 * _and_popcount(pb, w)) << b
    return d


def bconv2d_planes(x, w, planes, stride, dilation, pads, mode, mul=None, add=None, sgn=None, thr=None):
    """Conv of ``planes``-bit activations (packed bit-planes, NHWC (N, H, W, planes * words),
    zero padding) with packed sign kernel ``w`` (O, kh, kw, words): ``plane_dots`` per pixel."""
    n = x.shape[0]
    o, kh, kw, words = w.shape
    ho, wo = conv_hw(x, w, stride, dilation, pads)
    taps = kh * kw
    p = _patches(x, kh, kw, stride, dilation, pads, np.uint64(0), ho, wo)
    # (P, taps, planes, words) -> (P, planes, taps, words): each plane one run of taps * words
    p = p.reshape(n * ho * wo, taps, planes, words).transpose(0, 2, 1, 3).reshape(n * ho * wo, -1)
    d = plane_dots(p, w.reshape(o, taps * words), planes).reshape(n, ho, wo, o)
    return _finish(d, mode, mul, add, sgn, thr)


def bdense_planes(x, w, planes, mode, mul=None, add=None, sgn=None, thr=None):
    """Dense layer of ``planes``-bit activations (N, planes * words) with packed ``w`` (O, words)."""
    return _finish(plane_dots(x, w, planes), mode, mul, add, sgn, thr)


def maxpool2d_bits(x, kernel, stride, pads, ceil_mode, and_mask):
    """Max-pool of packed sign bits. A window's max is -1 (bit 1) iff all its values are -1: AND.

    ``and_mask`` (words,) selects AND per channel; channels with a 0 take the OR instead, which is
    the max-pool of integer dots seen through a decreasing threshold (negative batch-norm scale).
    Padded taps are ignored (torch pads max-pool with -inf).
    """
    n, h, w, words = x.shape
    (pt, pb), (pl, pr) = pads
    ho = out_size(h, kernel[0], stride[0], 1, pt, pb, ceil_mode)
    wo = out_size(w, kernel[1], stride[1], 1, pl, pr, ceil_mode)
    all_ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    acc_and = np.full((n, ho, wo, words), all_ones, dtype=np.uint64)
    acc_or = np.zeros((n, ho, wo, words), dtype=np.uint64)
    for i in range(ho):
        r0, r1 = max(i * stride[0] - pt, 0), min(i * stride[0] - pt + kernel[0], h)
        for j in range(wo):
            c0, c1 = max(j * stride[1] - pl, 0), min(j * stride[1] - pl + kernel[1], w)
            win = x[:, r0:r1, c0:c1].reshape(n, -1, words)
            acc_and[:, i, j] = np.bitwise_and.reduce(win, axis=1)
            acc_or[:, i, j] = np.bitwise_or.reduce(win, axis=1)
    return (acc_and & and_mask) | (acc_or & ~and_mask)


# ----------------------------------------------------------------------------- float ops (NHWC)


def conv2d(x, wmat, bias, kernel, stride, dilation, pads, pad_value, groups=1):
    """Float conv: NHWC ``x``, ``wmat`` (kh*kw*C/groups, O) float32 (im2col and one matmul per
    group; group g reads channels [g C/G, (g+1) C/G) and writes outputs [g O/G, (g+1) O/G))."""
    n, h, w, c = x.shape
    kh, kw = kernel
    (pt, pb), (pl, pr) = pads
    ho = out_size(h, kh, stride[0], dilation[0], pt, pb)
    wo = out_size(w, kw, stride[1], dilation[1], pl, pr)
    p = _patches(x, kh, kw, stride, dilation, pads, np.float32(pad_value), ho, wo)
    cg, og = c // groups, wmat.shape[1] // groups
    p = p.reshape(n * ho * wo, kh * kw, groups, cg)
    parts = [p[:, :, g].reshape(n * ho * wo, kh * kw * cg) @ wmat[:, g * og : (g + 1) * og] for g in range(groups)]
    y = parts[0] if groups == 1 else np.concatenate(parts, axis=-1)
    if bias is not None:
        y += bias
    return y.reshape(n, ho, wo, -1)


def dense(x, wmat, bias):
    """Float dense: (N, K) @ (K, O) + bias."""
    y = x @ wmat
    if bias is not None:
        y += bias
    return y


def _pool_windows(h, w, kernel, stride, pads, ceil_mode):
    (pt, pb), (pl, pr) = pads
    ho = out_size(h, kernel[0], stride[0], 1, pt, pb, ceil_mode)
    wo = out_size(w, kernel[1], stride[1], 1, pl, pr, ceil_mode)
    return ho, wo


def _tap_views(x, kernel, stride, pads, ho, wo, fill):
    """Yield, for every tap of the pooling window, the (N, ho, wo, C) strided view of ``x``
    padded with ``fill`` (also past the padding, where ceil_mode's last window reaches)."""
    n, h, w, c = x.shape
    (pt, _), (pl, _) = pads
    hp = max(h + pt, (ho - 1) * stride[0] + kernel[0])
    wp = max(w + pl, (wo - 1) * stride[1] + kernel[1])
    xp = np.full((n, hp, wp, c), fill, dtype=x.dtype)
    xp[:, pt : pt + h, pl : pl + w] = x
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield xp[:, i : i + stride[0] * (ho - 1) + 1 : stride[0], j : j + stride[1] * (wo - 1) + 1 : stride[1]]


def maxpool2d(x, kernel, stride, pads, ceil_mode):
    """Float max-pool, padding ignored (-inf), torch's output-size rule; one pass per tap."""
    ho, wo = _pool_windows(x.shape[1], x.shape[2], kernel, stride, pads, ceil_mode)
    out = None
    for view in _tap_views(x, kernel, stride, pads, ho, wo, -np.inf):
        out = view.copy() if out is None else np.maximum(out, view, out=out)
    return out


def _pool_divisor(size, k, s, before, after, n_out, count_include_pad):
    """Per output position along one axis: how many of its k taps torch's average pool counts."""
    start = np.arange(n_out) * s - before
    end = np.minimum(start + k, size + after)  # count_include_pad counts padding, not beyond it
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def avgpool2d(x, kernel, stride, pads, ceil_mode, count_include_pad, divisor_override):
    """Float average pool with torch's divisor rule (padding counts when count_include_pad)."""
    n, h, w, c = x.shape
    ho, wo = _pool_windows(h, w, kernel, stride, pads, ceil_mode)
    out = np.zeros((n, ho, wo, c), np.float32)
    for view in _tap_views(x.astype(np.float32, copy=False), kernel, stride, pads, ho, wo, 0.0):
        out += view
    return (
        out
        / avgpool_divisors((h, w), (ho, wo), kernel, stride, pads, count_include_pad, divisor_override)[
            None, :, :, None
        ]
    )


def avgpool_divisors(size, out_hw, kernel, stride, pads, count_include_pad, divisor_override) -> np.ndarray:
    """(ho, wo) float32: what torch's average pool divides each window's sum by."""
    if divisor_override:
        return np.full(out_hw, divisor_override, np.float32)
    (pt, pb), (pl, pr) = pads
    dh = _pool_divisor(size[0], kernel[0], stride[0], pt, pb, out_hw[0], count_include_pad)
    dw = _pool_divisor(size[1], kernel[1], stride[1], pl, pr, out_hw[1], count_include_pad)
    return (dh[:, None] * dw[None, :]).astype(np.float32)
