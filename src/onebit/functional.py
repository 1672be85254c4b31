"""Sign and the straight-through autograd functions behind the quantizers.

``sign`` is onebit's one definition of the sign: +1 where x >= 0 (zero and -0.0 included), -1
elsewhere, as Larq's ``math.sign``. Every quantizer, optimizer and exporter uses it (or, for
in-place updates, ``write_sign``).

The autograd functions save a boolean mask (1 byte per element) rather than the float input, so
the quantized activations of a BNN cost a quarter of the memory in backward. Under the
``popcount_forward`` switch (``onebit.settings``) the clipped sign takes one fused numba pass
(sign and mask from one read of the input) instead of torch's four (ge, where, abs, le).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import settings
from .kernels import jit_kernels, jit_loaded

__all__ = [
    "MIN_ELEMENTS",
    "needs_grad",
    "round_identity",
    "sign",
    "sign_and_mask",
    "sign_with_derivative",
    "ste_heaviside",
    "ste_sign",
    "ste_tern",
    "use_torch_threads",
    "write_sign",
]

# The fused sign STE pays from about a million values (BinaryNet's activations at batch 50: 1.6-6.5 M).
MIN_ELEMENTS = 2**20


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (zero and -0.0 included), -1 elsewhere, same dtype (Larq's ``math.sign``)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def write_sign(w: torch.Tensor, flip: torch.Tensor | None = None) -> None:
    """In place: w <- sign(w), negated where ``flip`` (a bool tensor); w is read before written."""
    one = torch.ones((), dtype=w.dtype, device=w.device)
    negative = w < 0 if flip is None else torch.logical_xor(w < 0, flip)
    torch.where(negative, -one, one, out=w)


def needs_grad(x: torch.Tensor) -> bool:
    """Whether autograd will want a backward through ``x`` (else only forward values are needed)."""
    return torch.is_grad_enabled() and x.requires_grad


def use_torch_threads() -> None:
    """Run numba kernels on torch's thread count, so both use the same cores."""
    import numba

    threads = torch.get_num_threads()
    n = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    if torch.get_num_threads() != threads:
        # starting numba's OpenMP pool resets the process's OpenMP thread count, which torch shares:
        # keep torch's (a run's ``threads``; its results depend on it)
        torch.set_num_threads(threads)


def sign_and_mask(x: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(sign(x), |x| <= clip) from one threaded numba pass over ``x``, or None where it does not apply.

    Applies to CPU float32 tensors stored densely (contiguous or channels_last) of at least
    ``MIN_ELEMENTS`` values, under the ``popcount_forward`` switch: "on" (numba), "auto" once a
    popcount forward has loaded numba in this process (so models it skips never load it)."""
    mode = settings.get("popcount_forward")
    if (
        mode == "off"
        or x.numel() < MIN_ELEMENTS
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)))
    ):
        return None
    if mode == "auto" and not jit_loaded():
        return None
    kernels = jit_kernels()
    if kernels is None:
        return None
    out = torch.empty_like(x)
    mask = torch.empty_like(x, dtype=torch.bool)
    flat = (t.detach().permute(0, 2, 3, 1) if not t.is_contiguous() else t.detach() for t in (x, out, mask))
    xs, os_, ms = (t.reshape(-1).numpy() for t in flat)
    use_torch_threads()
    kernels.sign_and_mask(xs, clip, os_, ms)
    return out, mask


class _ClippedSteFn(torch.autograd.Function):
    """``quantize(x)`` forward; grad * 1{|x| <= clip} backward (identity when clip is None): the
    clipped straight-through estimator shared by the sign, {0, 1} and ternary quantizers. Only the
    boolean mask is saved; for the sign it may come from the fused pass (``sign_and_mask``)."""

    @staticmethod
    def forward(ctx, x, quantize, clip_value):
        fused = sign_and_mask(x, clip_value) if quantize is sign and clip_value is not None else None
        if fused is not None:
            out, mask = fused
        else:
            out = quantize(x)
            mask = None if clip_value is None else x.abs() <= clip_value
        ctx.clip = mask is not None
        ctx.save_for_backward(*([mask] if ctx.clip else []))
        return out

    @staticmethod
    def backward(ctx, grad):
        if not ctx.clip:
            return grad, None, None
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def ste_sign(x: torch.Tensor, clip_value: float | None = 1.0) -> torch.Tensor:
    """sign(x) with the clipped straight-through pseudo-gradient 1{|x| <= clip_value}.

    Without autograd (inference, ``no_grad``) only the sign is computed, not the backward mask.
    """
    if not needs_grad(x):
        return sign(x)
    return _ClippedSteFn.apply(x, sign, clip_value)


def _heaviside(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(x.dtype)


def ste_heaviside(x: torch.Tensor, clip_value: float | None = 1.0) -> torch.Tensor:
    """1{x > 0} with the clipped straight-through pseudo-gradient."""
    return _ClippedSteFn.apply(x, _heaviside, clip_value)


class _SignWithGradFn(torch.autograd.Function):
    """sign(x) forward; grad * d(x) backward, where d is a surrogate derivative of x."""

    @staticmethod
    def forward(ctx, x, derivative):
        ctx.save_for_backward(x)
        ctx.derivative = derivative
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.derivative(x), None


def sign_with_derivative(x: torch.Tensor, derivative: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """sign(x) whose backward multiplies the gradient by ``derivative(x)`` (a surrogate)."""
    if not needs_grad(x):
        return sign(x)
    return _SignWithGradFn.apply(x, derivative)


def ste_tern(x: torch.Tensor, threshold: float | torch.Tensor, clip_value: float | None = 1.0) -> torch.Tensor:
    """Ternary {-1, 0, +1}: sign(sign(x + t) + sign(x - t)) (torch.sign, 0 at 0), clipped STE."""

    def tern(v):
        return torch.sign(torch.sign(v + threshold) + torch.sign(v - threshold))

    return _ClippedSteFn.apply(x, tern, clip_value)


class _RoundIdentityFn(torch.autograd.Function):
    """round(x * n) / n forward (half to even), identity backward."""

    @staticmethod
    def forward(ctx, x, n):
        return torch.round(x * n) / n

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def round_identity(x: torch.Tensor, n: int) -> torch.Tensor:
    """round(x * n) / n (half to even, as Larq) with the identity pseudo-gradient."""
    return _RoundIdentityFn.apply(x, n)
