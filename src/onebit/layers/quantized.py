"""Quantized layers: the torch layers plus ``input_quantizer``, ``kernel_quantizer``,
``kernel_constraint`` and ``pad_values`` (Larq's vocabulary, PyTorch's names).

``output = op(input_quantizer(x), kernel_quantizer(weight)) + bias``; the bias is never quantized
and with both quantizers None a layer equals its torch parent. The stored weight is the latent (or,
under Bop, the +/-1) value; the quantized kernel exists only inside ``forward``.

``pad_values``: pad the input with this constant instead of zeros (1.0 keeps binary inputs in
{-1, +1}, which bit-packed inference needs). ``padding="same"`` follows TensorFlow's rule for any
stride (total = max((ceil(n/s) - 1) s + (k - 1) d + 1 - n, 0), the odd pixel at the end), which for
stride 1 is exactly torch's "same"; torch itself refuses "same" with strides > 1.

``kernel_constraint`` (e.g. ``"weight_clip"``) is applied in place after every step of any
``torch.optim.Optimizer`` that holds the layer's weight, so it cannot be forgotten (see
``onebit.constraints``); ``apply_constraints(model)`` applies them by hand.

Binary layers whose input and kernel are exactly +/-1 compute their forward with XOR + popcount
where that is faster (``onebit.layers.popcount``, the ``popcount_forward`` switch of
``onebit.settings``): the same outputs and gradients as torch's op.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import constraints, quantizers, settings
from ..kernels.geometry import same_padding
from . import popcount

__all__ = [
    "QuantLayer",
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantDepthwiseConv2d",
    "QuantConvTranspose2d",
    "binary_parameters",
    "real_parameters",
    "apply_constraints",
    "is_binary",
]

_KERNEL_OF = "_onebit_quant_layer"  # a kernel's attribute: the layer that quantizes it


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_args(owner: str, counts: dict, geometry: dict | None = None, dims: int = 2, padding=0) -> None:
    """ValueError naming the first constructor argument of layer ``owner`` that no layer can take:
    ``counts`` (features, channels) ints >= 1, ``geometry`` (kernel size, stride, dilation) an int
    >= 1 or a tuple of ``dims`` of them, ``padding`` ints >= 0 or "same" / "valid"."""
    for name, v in counts.items():
        if not _is_int(v) or v < 1:
            raise ValueError(f"{owner} {name}={v!r} must be an int >= 1")
    for name, v in (geometry or {}).items():
        values = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if (isinstance(v, (tuple, list)) and len(v) != dims) or not all(_is_int(x) and x >= 1 for x in values):
            raise ValueError(f"{owner} {name}={v!r} must be an int >= 1 or a tuple of {dims} such ints")
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"{owner} padding={padding!r} must be 'same', 'valid', or ints >= 0")
        return
    values = tuple(padding) if isinstance(padding, (tuple, list)) else (padding,)
    if (isinstance(padding, (tuple, list)) and len(padding) != dims) or not all(_is_int(x) and x >= 0 for x in values):
        raise ValueError(f"{owner} padding={padding!r} must be 'same', 'valid', an int >= 0 or a tuple of {dims}")


class QuantLayer:
    """Mixin of every onebit quantized layer: quantizers, constraint and padding value."""

    def _init_quant(self, input_quantizer, kernel_quantizer, kernel_constraint, pad_values=0.0):
        ok = isinstance(pad_values, numbers.Real) and not isinstance(pad_values, bool) and math.isfinite(pad_values)
        if not ok:
            raise ValueError(
                f"{type(self).__name__} pad_values={pad_values!r} must be a finite number (e.g. 0.0 or 1.0)"
            )
        self.input_quantizer = quantizers.get(input_quantizer)
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self.kernel_constraint = kernel_constraint
        self.pad_values = float(pad_values)
        self._mark_kernel()

    def _mark_kernel(self) -> None:
        """Tell the kernel which layer quantizes it (``is_binary(parameter)`` asks the layer)."""
        self.weight.__dict__[_KERNEL_OF] = self

    @property
    def kernel_constraint(self) -> Callable[[torch.Tensor], None] | None:
        """Applied in place to the weight after every optimizer step (None: no constraint)."""
        return self.__dict__.get("_kernel_constraint")

    @kernel_constraint.setter
    def kernel_constraint(self, value: str | Callable | None) -> None:
        self.__dict__["_kernel_constraint"] = constraints.get(value)
        constraints.enforce(self)

    def __setstate__(self, state):
        # Copies (deepcopy, pickle) skip __init__: enforce their constraints too.
        super().__setstate__(state)
        constraints.enforce(self)
        self._mark_kernel()

    @property
    def input_precision(self) -> int | None:
        """Bits of the layer's input (None for a real-valued input)."""
        return quantizers.precision_of(self.input_quantizer)

    @property
    def kernel_precision(self) -> int:
        """Bits of the kernel as the layer uses it (32 without a quantizer)."""
        return quantizers.precision_of(self.kernel_quantizer) or 32

    def quantized_weight(self) -> torch.Tensor:
        """The kernel as the forward pass uses it."""
        if self.kernel_quantizer is None:
            return self.weight
        return self.kernel_quantizer(self.weight)

    def _quantize_input(self, x):
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _popcount_eligible(self) -> bool:
        """Whether input and kernel are exact +/-1 by construction (the popcount forward may apply)."""
        return (
            settings.get("popcount_forward") != "off"
            and quantizers.is_sign(self.input_quantizer, probe=False)
            and quantizers.is_sign(self.kernel_quantizer, kernel=True, probe=False)
        )

    def _quant_repr(self) -> str:
        parts = []
        if self.kernel_constraint is not None:
            parts.append(f"kernel_constraint={self.kernel_constraint!r}")
        if self.pad_values != 0.0:
            parts.append(f"pad_values={self.pad_values}")
        return "".join(", " + p for p in parts)


class QuantLinear(QuantLayer, nn.Linear):
    """``nn.Linear`` with quantized input and kernel (Larq's ``QuantDense``)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        input_quantizer: str | Callable | None = None,
        kernel_quantizer: str | Callable | None = None,
        kernel_constraint: str | Callable | None = None,
    ):
        _check_args("QuantLinear", {"in_features": in_features, "out_features": out_features})
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quant(input_quantizer, kernel_quantizer, kernel_constraint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._quantize_input(x)
        w = self.quantized_weight()
        if self._popcount_eligible():
            y = popcount.linear(x, w, self.bias)
            if y is not None:
                return y
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


class _QuantConvNd(QuantLayer):
    """Shared forward of the quantized convolutions (the torch parent supplies the rest)."""

    _conv = None  # F.conv1d / F.conv2d / F.conv3d

    def _init_conv_quant(self, padding, input_quantizer, kernel_quantizer, kernel_constraint, pad_values):
        if padding == "same":
            # Keep torch's bookkeeping valid, then remember that padding is TF-style SAME.
            self.padding = "same"
        if pad_values != 0.0 and self.padding_mode != "zeros":
            raise ValueError(f"pad_values={pad_values!r} needs padding_mode='zeros', got {self.padding_mode!r}")
        self._init_quant(input_quantizer, kernel_quantizer, kernel_constraint, pad_values)

    def _same_pads(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        return [
            same_padding(spatial[i], self.kernel_size[i], self.stride[i], self.dilation[i])
            for i in range(len(self.kernel_size))
        ]

    def explicit_padding(self, spatial: tuple[int, ...]) -> list[tuple[int, int]] | None:
        """(before, after) per spatial dim when the layer pads by itself, else None (torch pads)."""
        if self.padding == "same":
            if self.pad_values == 0.0 and all(s == 1 for s in self.stride):
                return None
            return self._same_pads(spatial)
        if self.padding != "valid" and self.pad_values != 0.0 and any(self.padding):
            return [(p, p) for p in self.padding]
        return None

    def padding_for(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        """(before, after) padding per spatial dim for an input of this spatial size."""
        if self.padding == "same":
            return self._same_pads(spatial)
        if self.padding == "valid":
            return [(0, 0)] * len(self.kernel_size)
        return [(p, p) for p in self.padding]

    def _popcount_forward(self, x, w):
        """The popcount forward (same output and gradients as torch's) or None where it does not apply."""
        if (
            type(self)._conv is not F.conv2d
            or x.dim() != 4
            or self.groups != 1
            or self.padding_mode != "zeros"
            or not self._popcount_eligible()
        ):
            return None
        spatial = tuple(x.shape[2:])
        pads = self.explicit_padding(spatial)
        if pads is not None:  # the layer pads with pad_values, then convolves unpadded
            return popcount.conv2d(x, w, self.bias, self.stride, self.dilation, pads, self.pad_values, (0, 0))
        pads = self.padding_for(spatial)
        # torch pads with zeros: the symmetric part in the conv, "same"'s odd pixel before it
        return popcount.conv2d(x, w, self.bias, self.stride, self.dilation, pads, 0.0, [min(b, a) for b, a in pads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._quantize_input(x)
        w = self.quantized_weight()
        y = self._popcount_forward(x, w)
        if y is not None:
            return y
        pads = self.explicit_padding(tuple(x.shape[2:]))
        if pads is None:
            return self._conv_forward(x, w, self.bias)
        flat = [v for before_after in reversed(pads) for v in before_after]
        x = F.pad(x, flat, mode="constant", value=self.pad_values)
        return type(self)._conv(x, w, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


def _conv_init(parent, dims):
    """Build the __init__ of a quantized conv that keeps the torch parent's signature."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | str | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        input_quantizer: str | Callable | None = None,
        kernel_quantizer: str | Callable | None = None,
        kernel_constraint: str | Callable | None = None,
        pad_values: float = 0.0,
    ):
        _check_args(
            type(self).__name__,
            {"in_channels": in_channels, "out_channels": out_channels, "groups": groups},
            {"kernel_size": kernel_size, "stride": stride, "dilation": dilation},
            dims,
            padding,
        )
        strided = any(s != 1 for s in nn.modules.utils._ntuple(dims)(stride))
        torch_padding = 0 if (padding == "same" and strided) else padding
        parent.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            torch_padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self._init_conv_quant(padding, input_quantizer, kernel_quantizer, kernel_constraint, pad_values)

    return __init__


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` with quantized input and kernel and ``pad_values``."""

    _conv = F.conv1d
    __init__ = _conv_init(nn.Conv1d, 1)


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` with quantized input and kernel and ``pad_values``."""

    _conv = F.conv2d
    __init__ = _conv_init(nn.Conv2d, 2)


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """``nn.Conv3d`` with quantized input and kernel and ``pad_values``."""

    _conv = F.conv3d
    __init__ = _conv_init(nn.Conv3d, 3)


class QuantDepthwiseConv2d(_QuantConvNd, nn.Conv2d):
    """Depthwise ``nn.Conv2d`` (groups = in_channels, ``depth_multiplier`` filters per channel).

    Larq's ``QuantDepthwiseConv2D``; its ``depthwise_quantizer`` is ``kernel_quantizer`` here.
    """

    _conv = F.conv2d

    def __init__(
        self,
        in_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | str | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        depth_multiplier: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        input_quantizer: str | Callable | None = None,
        kernel_quantizer: str | Callable | None = None,
        kernel_constraint: str | Callable | None = None,
        pad_values: float = 0.0,
    ):
        _check_args(
            "QuantDepthwiseConv2d",
            {"in_channels": in_channels, "depth_multiplier": depth_multiplier},
            {"kernel_size": kernel_size, "stride": stride, "dilation": dilation},
            2,
            padding,
        )
        strided = any(s != 1 for s in nn.modules.utils._pair(stride))
        torch_padding = 0 if (padding == "same" and strided) else padding
        nn.Conv2d.__init__(
            self,
            in_channels,
            in_channels * depth_multiplier,
            kernel_size,
            stride,
            torch_padding,
            dilation,
            in_channels,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self.depth_multiplier = depth_multiplier
        self._init_conv_quant(padding, input_quantizer, kernel_quantizer, kernel_constraint, pad_values)


class QuantConvTranspose2d(QuantLayer, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with quantized input and kernel (no ``pad_values``, as Larq)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | str | tuple[int, ...] = 0,
        output_padding: int | tuple[int, ...] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int, ...] = 1,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        input_quantizer: str | Callable | None = None,
        kernel_quantizer: str | Callable | None = None,
        kernel_constraint: str | Callable | None = None,
    ):
        _check_args(
            "QuantConvTranspose2d",
            {"in_channels": in_channels, "out_channels": out_channels, "groups": groups},
            {"kernel_size": kernel_size, "stride": stride, "dilation": dilation},
            2,
            padding,
        )
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            groups,
            bias,
            dilation,
            padding_mode,
            device,
            dtype,
        )
        self._init_quant(input_quantizer, kernel_quantizer, kernel_constraint)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        return F.conv_transpose2d(
            self._quantize_input(x),
            self.quantized_weight(),
            self.bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + self._quant_repr()


def is_binary(param_or_module: torch.Tensor | nn.Module) -> bool:
    """Whether a layer, or a parameter, is binary: a quantized layer whose kernel quantizer is
    1-bit, or such a layer's kernel (Bop's parameters; Larq's ``Bop.is_binary_variable``).
    Everything else (biases, batch norm, real-valued layers, other modules) is not. A predicate
    for ``CaseOptimizer((is_binary, Bop), default=Adam, params=model.parameters())``."""
    if isinstance(param_or_module, QuantLayer):
        return quantizers.is_binary(param_or_module.kernel_quantizer)
    if isinstance(param_or_module, torch.Tensor):
        layer = param_or_module.__dict__.get(_KERNEL_OF)
        return layer is not None and layer.weight is param_or_module and is_binary(layer)
    return False


def _binary_weight_ids(model: nn.Module) -> dict[int, torch.Tensor]:
    found = {}
    for module in model.modules():
        if isinstance(module, QuantLayer) and is_binary(module):
            found.setdefault(id(module.weight), module.weight)
    return found


def binary_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Yield the kernels whose layer's kernel quantizer has precision 1 (Bop's parameters)."""
    yield from _binary_weight_ids(model).values()


def real_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Yield every other parameter of ``model`` (disjoint from ``binary_parameters``)."""
    binary = _binary_weight_ids(model)
    for p in model.parameters():
        if id(p) not in binary:
            yield p


def apply_constraints(model: nn.Module) -> None:
    """Apply every layer's ``kernel_constraint`` in place now."""
    for module in model.modules():
        if isinstance(module, QuantLayer) and module.kernel_constraint is not None:
            module.kernel_constraint(module.weight)
