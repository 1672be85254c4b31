"""Popcount forward of binary layers in training: torch's exact outputs from XOR + popcount.

When a layer's input and kernel are both exactly +/-1, its output is an integer (exact in fp32
while the reduction length K < 2^24) that the bit-packed kernels of ``onebit.kernels`` compute
several times faster than an fp32 convolution. ``conv2d`` and ``linear`` pack both operands, run
the numba kernel inside an ``autograd.Function`` and return the tensor F.conv2d / F.linear would
(same values, same memory format); backward calls the very ops autograd runs for F.conv2d /
F.linear on the same tensors, so gradients are bit-identical. Both return None where the path
does not apply (switched off, no numba, not CPU float32, kernel not +/-1, ...) and the layer runs
torch's op. A bias is added to the integer once (correctly rounded); F.conv2d does the same for
channels_last inputs, other layouts may differ from it by one ulp.

Switch: ``popcount_forward`` in ``onebit.settings`` ("auto", "on", "off"; the training config key
``xnor_forward``). "on": every layer call it can run (numba required); "auto" (the default): calls
of at least ``MIN_MACS`` multiply-accumulates, when numba imports (``pip install 'onebit[jit]'``);
smaller ones gain nothing measurable and never load numba; "off": torch's path.

Threads: each call runs numba with torch's thread count (``torch.get_num_threads()``), so both
use the same cores. numba's default threading layer (GNU OpenMP, a second pool next to torch's)
measured faster than ``NUMBA_THREADING_LAYER=workqueue``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import settings
from ..functional import use_torch_threads
from ..kernels import jit_kernels
from ..kernels.geometry import out_size

__all__ = ["MIN_MACS", "available", "conv2d", "linear"]

_MAX_K = 2**24  # integer dots stay exact in fp32 below this reduction length
# "auto" leaves smaller layer calls to torch. Measured on 2 cores: BinaryNet's binary layers at
# batch 50 (0.4-7.5 G MACs) gain; the small CNN's (21-142 M at batch 64) change nothing in a step.
MIN_MACS = 2**28


def available() -> bool:
    """Whether the popcount forward can run here (numba imports)."""
    return jit_kernels() is not None


def _wanted(macs: int) -> bool:
    """Whether the switch asks for the popcount forward of a call of ``macs`` multiply-accumulates
    (numba is imported only then)."""
    mode = settings.get("popcount_forward")
    if mode == "off" or (mode == "auto" and macs < MIN_MACS):
        return False
    return available()


def _applicable(x, w, bias) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and w.device.type == "cpu"
        and x.layout == torch.strided
        and w.layout == torch.strided
        and (bias is None or bias.dtype == torch.float32)
    )


def _pack(t: torch.Tensor):
    """(words, count of values not +/-1) of a tensor packed along dim 1 (channels / features),
    read through a zero-copy numpy view of its memory, whatever its strides."""
    a = t.detach().numpy()
    use_torch_threads()
    return jit_kernels().pack_sign_count(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a[None, None])


def _channels_last(t: torch.Tensor) -> bool:
    """``t.suggest_memory_format() == channels_last`` (torch's rule, which picks F.conv2d's output
    layout; ambiguous strides such as N111 count as NCHW)."""
    sizes, strides = t.shape, t.stride()
    if t.dim() != 4 or strides[1] == 0:
        return False
    low = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < low or (d == 0 and low == strides[1]):
            return False
        low = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


class _Conv2d(torch.autograd.Function):
    """Popcount forward, torch's convolution_backward (on the padded input, as the layer pads)."""

    @staticmethod
    def forward(ctx, x, w, bias, xbits, wbits, geometry):
        stride, dilation, pads, pad_value, conv_padding, extra, out_cl = geometry
        kn = jit_kernels()
        o = w.shape[0]
        add = np.zeros(o, np.float32) if bias is None else bias.detach().numpy()
        use_torch_threads()
        out = kn.bconv2d(
            xbits, wbits, x.shape[1], stride, dilation, pads, pad_value, "float", np.ones(o, np.float32), add
        )
        y = torch.from_numpy(out).permute(0, 3, 1, 2)
        if not out_cl:  # NCHW as F.conv2d gives it (clone also sets canonical strides)
            y = y.clone(memory_format=torch.contiguous_format)
        need_x, need_w = ctx.needs_input_grad[:2]
        # convolution_backward reads the input only for the kernel's gradient, the kernel only
        # for the input's: save just what is needed, remember the rest's layout. The +/-1 input
        # is kept as its packed bits (32x smaller) and unpacked in backward, exactly.
        bits = torch.from_numpy(xbits.view(np.int64)) if need_w else None
        ctx.save_for_backward(bits, w if need_x else None)
        ctx.layouts = [(t.shape, t.stride()) for t in (x, w)]
        ctx.geometry = (stride, dilation, conv_padding, extra, pad_value)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        bits, w = ctx.saved_tensors
        stride, dilation, conv_padding, extra, pad_value = ctx.geometry
        x = torch.empty_strided(*ctx.layouts[0], dtype=grad.dtype)
        if bits is not None:  # the +/-1 input, unpacked into its forward layout
            use_torch_threads()
            jit_kernels().unpack_sign_into(bits.numpy().view(np.uint64), x.detach().numpy().transpose(0, 2, 3, 1))
        if w is None:
            w = torch.empty_strided(*ctx.layouts[1], dtype=grad.dtype)
        if extra:  # the layer's own constant padding, redone as its forward did it
            x = torch.constant_pad_nd(x, extra, pad_value)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad,
            x,
            w,
            [w.shape[0]] if ctx.has_bias else None,
            list(stride),
            list(conv_padding),
            list(dilation),
            False,
            [0, 0],
            1,
            [need_x, need_w, need_b and ctx.has_bias],
        )
        if need_x and extra:
            gx = torch.constant_pad_nd(gx, [-p for p in extra])
        return gx, gw, gb, None, None, None


def conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pads: Sequence[tuple[int, int]],
    pad_value: float,
    conv_padding: Sequence[int],
) -> torch.Tensor | None:
    """The popcount F.conv2d of +/-1 ``x`` (N, C, H, W) and ``w`` (O, C, kh, kw), or None.

    ``pads``: the full (before, after) padding per spatial dim, of ``pad_value`` (0 or 1).
    ``conv_padding``: the symmetric part the layer's torch path hands to the convolution; the
    rest it pads itself with ``pad_value`` first (the backward repeats exactly that). The caller
    guarantees ``x`` is +/-1 (a sign quantizer's output); ``w`` is checked here.
    """
    pads = tuple((int(b), int(a)) for b, a in pads)
    if not any(b or a for b, a in pads):
        pad_value = 0.0
    if x.dim() != 4 or pad_value not in (0.0, 1.0) or not _applicable(x, w, bias):
        return None
    k = w.shape[1] * w.shape[2] * w.shape[3]
    out = [out_size(x.shape[2 + i], w.shape[2 + i], stride[i], dilation[i], b, a) for i, (b, a) in enumerate(pads)]
    if k >= _MAX_K or 0 in x.shape or min(out) < 1 or not _wanted(x.shape[0] * out[0] * out[1] * w.shape[0] * k):
        return None
    wbits, bad = _pack(w)
    if bad:
        return None
    xbits, _ = _pack(x)
    extra = []
    for (b, a), p in zip(reversed(pads), reversed(list(conv_padding))):
        extra += [b - p, a - p]
    extra = extra if any(extra) else None
    out_cl = _channels_last(x) or _channels_last(w)
    geometry = (tuple(stride), tuple(dilation), pads, float(pad_value), tuple(conv_padding), extra, out_cl)
    return _Conv2d.apply(x, w, bias, xbits, wbits, geometry)


class _Linear(torch.autograd.Function):
    """Popcount forward, backward as autograd's for F.linear (mm / addmm)."""

    @staticmethod
    def forward(ctx, x, w, bias, xbits, wbits):
        kn = jit_kernels()
        o = w.shape[0]
        add = np.zeros(o, np.float32) if bias is None else bias.detach().numpy()
        use_torch_threads()
        out = kn.bdense(xbits[0, 0], wbits[0, 0], x.shape[1], "float", np.ones(o, np.float32), add)
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, w if need_x else None)
        ctx.has_bias = bias is not None
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # What autograd computes for mm(x, w.t()) / addmm(b, x, w.t()) with row-major x and w.
        gx = grad.mm(w) if need_x else None
        gw = grad.t().mm(x) if need_w else None
        gb = grad.sum(0) if need_b and ctx.has_bias else None
        return gx, gw, gb, None, None


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The popcount F.linear of +/-1 ``x`` (N, K) and ``w`` (O, K), or None (as ``conv2d``)."""
    if x.dim() != 2 or not _applicable(x, w, bias) or w.shape[1] >= _MAX_K or 0 in x.shape:
        return None
    if not (x.is_contiguous() and w.is_contiguous()):  # autograd's mm backward depends on strides
        return None
    if not _wanted(x.shape[0] * w.shape[0] * w.shape[1]):
        return None
    wbits, bad = _pack(w)
    if bad:
        return None
    xbits, _ = _pack(x)
    return _Linear.apply(x, w, bias, xbits, wbits)
