"""Sign-like quantizers with their pseudo-gradients, with Larq's exact semantics.

Every quantizer is an ``nn.Module`` with a ``precision`` attribute (bits), so the summary and
``binary_parameters`` can tell binary weights from the rest. Forward values and pseudo-gradients
equal Larq's (``larq.quantizers``, v0.13): ``sign(0) = +1`` everywhere, clipped straight-through
estimators pass the gradient where ``|x| <= clip_value`` (inclusive), ``clip_value=None`` passes it
everywhere, and DoReFa rounds half to even (as ``tf.round`` and ``torch.round`` both do).

The autograd functions behind them live in ``onebit.functional``. This module holds the one
definition of "binary": ``is_binary`` (a 1-bit quantizer: Bop's parameters, the summary's bit
counts) and ``is_sign`` (its output is exactly sign(x), +/-1: what XOR + popcount needs).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import nn

from .functional import round_identity, sign, sign_with_derivative, ste_heaviside, ste_sign, ste_tern

__all__ = [
    "Quantizer",
    "SteSign",
    "ApproxSign",
    "SwishSign",
    "MagnitudeAwareSign",
    "SteHeaviside",
    "SteTern",
    "DoReFa",
    "NoOp",
    "sign",
    "ste_sign",
    "get",
    "names",
    "set_precision",
    "precision_of",
    "is_binary",
    "is_sign",
]


def _number(owner: str, name: str, value, *, low: float = 0.0, none: bool = False, zero: bool = False):
    """``value`` if it is a finite real number above ``low`` (or equal, with ``zero``; or None, with
    ``none``), else ValueError naming the argument and what is allowed."""
    if value is None and none:
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (value == low and not zero):
        allowed = f"a finite number {'>=' if zero else '>'} {low:g}" + (" or None" if none else "")
        raise ValueError(f"{owner} {name}={value!r} must be {allowed}")
    return value


class Quantizer(nn.Module):
    """Base class: a module mapping a tensor to its quantized value, with a ``precision`` in bits."""

    precision: int | None = None

    def extra_repr(self) -> str:
        args = [f"{k}={getattr(self, k)!r}" for k in getattr(self, "_repr_args", ())]
        return ", ".join(args)


class SteSign(Quantizer):
    r"""Sign with the clipped straight-through estimator (Hubara et al., 2016).

    forward: q(x) = +1 if x >= 0 else -1.  backward: dq/dx = 1 if |x| <= clip_value else 0
    (1 everywhere when ``clip_value`` is None).
    """

    precision = 1
    _repr_args = ("clip_value",)

    def __init__(self, clip_value: float | None = 1.0):
        super().__init__()
        self.clip_value = _number("SteSign", "clip_value", clip_value, none=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste_sign(x, self.clip_value)


def _approx_sign_derivative(x):
    return torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


class ApproxSign(Quantizer):
    r"""Sign with the piecewise-polynomial pseudo-gradient of Bi-Real Net (Liu et al., 2018).

    forward: sign(x) (sign(0) = +1).  backward: dq/dx = 2 - 2|x| for |x| <= 1, else 0.
    """

    precision = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_with_derivative(x, _approx_sign_derivative)


class SwishSign(Quantizer):
    r"""Sign with the SignSwish pseudo-gradient of BNN+ (Darabi et al., 2018).

    forward: sign(x).  backward: dq/dx = beta * (2 - beta*x*tanh(beta*x/2)) / (1 + cosh(beta*x)).
    """

    precision = 1
    _repr_args = ("beta",)

    def __init__(self, beta: float = 5.0):
        super().__init__()
        self.beta = _number("SwishSign", "beta", beta)

    def _derivative(self, x):
        b = self.beta
        bx = b * x
        return b * (2.0 - bx * torch.tanh(bx / 2.0)) / (1.0 + torch.cosh(bx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_with_derivative(x, self._derivative)


class MagnitudeAwareSign(Quantizer):
    r"""Scaled sign of Bi-Real Net: q(x) = alpha_c * sign(x), alpha_c = mean |x| per output channel.

    The mean runs over every axis but the output-channel axis. Larq (channels-last) keeps the last
    axis; PyTorch kernels (``Linear``, ``Conv*d``) keep their output channels in dim 0, so onebit
    reduces over all dims but dim 0. alpha is not differentiated (stop-gradient);
    backward: dq/dx = alpha_c * 1{|x| <= clip_value}.
    """

    precision = 1
    _repr_args = ("clip_value",)

    def __init__(self, clip_value: float | None = 1.0):
        super().__init__()
        self.clip_value = _number("MagnitudeAwareSign", "clip_value", clip_value, none=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim()))
        scale = x.detach().abs().mean(dim=dims, keepdim=True) if dims else x.detach().abs()
        return scale * ste_sign(x, self.clip_value)


class SteHeaviside(Quantizer):
    r"""Binarization to {0, 1} (Larq's "AND" binarization).

    forward: q(x) = 1 if x > 0 else 0.  backward: clipped STE as SteSign.
    """

    precision = 1
    _repr_args = ("clip_value",)

    def __init__(self, clip_value: float | None = 1.0):
        super().__init__()
        self.clip_value = _number("SteHeaviside", "clip_value", clip_value, none=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste_heaviside(x, self.clip_value)


class SteTern(Quantizer):
    r"""Ternarization to {-1, 0, +1} (Li et al., 2016, Ternary Weight Networks).

    forward: +1 for x >= t, -1 for x <= -t, 0 otherwise, with t = ``threshold_value`` or, when
    ``ternary_weight_networks``, t = 0.7 * mean |x| over the whole tensor.
    backward: clipped STE as SteSign.
    """

    precision = 2
    _repr_args = ("threshold_value", "ternary_weight_networks", "clip_value")

    def __init__(
        self,
        threshold_value: float = 0.05,
        ternary_weight_networks: bool = False,
        clip_value: float | None = 1.0,
    ):
        super().__init__()
        self.threshold_value = _number("SteTern", "threshold_value", threshold_value, zero=True)
        self.ternary_weight_networks = bool(ternary_weight_networks)
        self.clip_value = _number("SteTern", "clip_value", clip_value, none=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ternary_weight_networks:
            threshold = 0.7 * x.detach().abs().mean()
        else:
            threshold = self.threshold_value
        return ste_tern(x, threshold, self.clip_value)


class DoReFa(Quantizer):
    r"""k-bit DoReFa quantizer (Zhou et al., 2016).

    n = 2^k - 1. mode="activations": q = round(n * clip(x, 0, 1)) / n, gradient 1 on [0, 1], else 0.
    mode="weights": t = tanh(x); x' = t / (2 max|t|) + 0.5 (max not differentiated, 0/0 -> 0);
    q = 2 round(n x') / n - 1, gradient sech^2(x) / max|t| (0 for an all-zero x, as Larq's
    divide_no_nan; not NaN). round() is half-to-even, as Larq.
    """

    _repr_args = ("k_bit", "mode")
    modes = ("activations", "weights")

    def __init__(self, k_bit: int = 2, mode: str = "activations"):
        super().__init__()
        if mode not in self.modes:
            raise ValueError(f"DoReFa mode={mode!r} is not supported; use one of {self.modes}")
        if not isinstance(k_bit, numbers.Integral) or isinstance(k_bit, bool) or not 1 <= k_bit <= 32:
            raise ValueError(f"DoReFa k_bit={k_bit!r} must be an int in [1, 32]")
        self.k_bit = int(k_bit)
        self.precision = self.k_bit
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = 2**self.k_bit - 1
        if self.mode == "activations":
            return round_identity(torch.clamp(x, 0.0, 1.0), n)
        if self.mode == "weights":
            t = torch.tanh(x)
            peak = t.detach().abs().max()
            # divide_no_nan: 0/0 -> 0 with gradient 0 (dividing by 2 * peak = 0 would make it NaN)
            safe = torch.where(peak > 0, 2 * peak, torch.ones_like(peak))
            scaled = torch.where(peak > 0, t / safe, torch.zeros_like(t)) + 0.5
            return 2 * round_identity(scaled, n) - 1
        raise ValueError(f"DoReFa mode={self.mode!r} is not supported; use one of {self.modes}")


class NoOp(Quantizer):
    r"""Identity that only tags a tensor with a precision.

    ``kernel_quantizer=NoOp(precision=1)`` ("noop") marks a kernel as binary for Bop, which keeps
    it in {-1, +1} itself, so the forward pass costs nothing extra.
    """

    _repr_args = ("precision",)

    def __init__(self, precision: int = 1):
        super().__init__()
        if not isinstance(precision, int) or isinstance(precision, bool) or precision < 1:
            raise ValueError(f"NoOp precision={precision!r} must be a positive int")
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


_REGISTRY: dict[str, type[Quantizer]] = {
    "ste_sign": SteSign,
    "approx_sign": ApproxSign,
    "swish_sign": SwishSign,
    "magnitude_aware_sign": MagnitudeAwareSign,
    "ste_heaviside": SteHeaviside,
    "ste_tern": SteTern,
    "dorefa": DoReFa,
    "noop": NoOp,
}
_ALIASES = {"dorefa_quantizer": "dorefa", "none": None}
_ALIASES.update({cls.__name__: name for name, cls in _REGISTRY.items()})


def names() -> list[str]:
    """The registered quantizer names, sorted (``get`` also takes "none" and the class names)."""
    return sorted(_REGISTRY)


def get(identifier: str | Callable | None) -> Callable | None:
    """Resolve a quantizer: None, a registered name, an ``nn.Module`` or any callable.

    Names build the quantizer with its defaults ("ste_sign" -> ``SteSign()``); "none" means no
    quantizer. Anything else raises ValueError listing the valid names.
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        name = _ALIASES.get(identifier, identifier)
        if name is None:
            return None
        if name in _REGISTRY:
            return _REGISTRY[name]()
        raise ValueError(f"unknown quantizer {identifier!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    if isinstance(identifier, type) and issubclass(identifier, nn.Module):
        return identifier()
    if callable(identifier):
        return identifier
    raise ValueError(
        f"cannot use {identifier!r} as a quantizer; pass None, a module, a callable or one of: "
        f"{', '.join(sorted(_REGISTRY))}"
    )


def set_precision(bits: int) -> Callable[[type], type]:
    """Decorator giving a plain function quantizer a ``precision`` attribute."""

    def decorate(fn):
        fn.precision = bits
        return fn

    return decorate


def precision_of(quantizer: Callable | None) -> int | None:
    """The precision in bits of a quantizer (None when it has none, or no quantizer)."""
    return getattr(quantizer, "precision", None) if quantizer is not None else None


def is_binary(quantizer: Callable | None) -> bool:
    """Whether ``quantizer`` is 1-bit (precision 1): its layer's kernel is one of Bop's parameters
    and counts 1 bit per weight in the summary. Sign, scaled sign and {0, 1} quantizers all are."""
    return precision_of(quantizer) == 1


# Quantizers whose forward is exactly ``functional.sign`` by construction (their type, not a subclass).
_SIGN_TYPES = (SteSign, ApproxSign, SwishSign)
_PROBE = torch.tensor([-3.0, -1.0, -0.5, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, 3.0])


def is_sign(quantizer: Callable | None, *, kernel: bool = False, probe: bool = True) -> bool:
    """Whether ``quantizer``'s output is exactly sign(x) in {-1, +1} with sign(0) = +1 (any
    pseudo-gradient): what bit-packed XOR + popcount arithmetic needs.

    onebit's sign quantizers are known by type. Any other 1-bit quantizer (a subclass, a user's
    function) is probed on a few values around 0 unless ``probe=False`` (the training fast path
    asks per call and takes only the known types). ``kernel=True`` also accepts ``NoOp(precision=1)``:
    Bop keeps such kernels in {-1, +1} itself; their values must still be checked where used.
    """
    if type(quantizer) in _SIGN_TYPES:
        return True
    if kernel and type(quantizer) is NoOp and quantizer.precision == 1:
        return True
    if not probe or not is_binary(quantizer):
        return False
    with torch.no_grad():
        out = quantizer(_PROBE.clone())
    return isinstance(out, torch.Tensor) and bool(torch.equal(out, sign(_PROBE)))
