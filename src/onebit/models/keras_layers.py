"""Keras / Larq layers as onebit modules: one converter per Keras class name, and the layout rules.

Everything here works channels-first: a Keras tensor (N, H, W, C) is onebit's (N, C, H, W), so
kernels are transposed (HWIO -> OIHW; depthwise HWCM -> (C*M)1HW; dense (in, out) -> (out, in)),
``Flatten`` flattens in Keras' (H, W, C) order, ``Dense`` acts on the channel axis and axes given
to ``Concatenate`` / ``Softmax`` / ``BatchNormalization`` are read in Keras' channels-last terms.
Larq's quantizers and constraints map onto onebit's by name; anything without an exact onebit
equivalent (a ``Lambda``, an unknown layer, quantizer or constraint) raises a one-line
``KerasImportError`` naming it.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .. import constraints, quantizers
from ..layers import Pool2dSame, QuantConv2d, QuantDepthwiseConv2d, QuantLinear
from .dorefanet import ClipActivation, MagnitudeAwareSignUnclipped
from .keras_file import KerasImportError
from .keras_layout import torch_conv_weight, torch_dense_weight, torch_depthwise_weight, torch_dim
from .xnornet import XnorWeightScale

__all__ = [
    "CONVERTERS",
    "ChannelsLastFlatten",
    "KerasBatchNorm",
    "LayerWeights",
    "Merge",
    "convert_layer",
]


# ---------------------------------------------------------------- modules Keras needs


def _dim(keras_axis: int, x: torch.Tensor) -> int:
    """torch's dim of Keras' ``keras_axis`` in ``x``; the channels (-1, Keras' default) are dim 1
    whatever the rank, so the common case asks nothing of ``x`` (and traces with torch.fx)."""
    return 1 if keras_axis == -1 else torch_dim(keras_axis, x.dim())


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, ..., C); the identity on (N, C). The last dim is named by number: ONNX
    export writes ``movedim(1, -1)`` of a 2-D tensor as an invalid Transpose."""
    return x.movedim(1, x.dim() - 1)


def _to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """(N, ..., C) -> (N, C, ...): the inverse of ``_to_channels_last``."""
    return x.movedim(x.dim() - 1, 1)


class ChannelsLastFlatten(nn.Module):
    """Keras ``Flatten``: flatten (N, C, H, W) in Keras' (H, W, C) order, so a following dense
    kernel keeps Keras' row order."""

    def forward(self, x):
        return torch.flatten(_to_channels_last(x), 1)


class ChannelsLast(nn.Module):
    """Apply ``module`` over the channel axis of a (N, C, ...) tensor (Keras' ``Dense`` on a
    tensor of rank > 2 acts on its last axis, which is onebit's dim 1)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return _to_channels_first(self.module(_to_channels_last(x)))


class KerasBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over dim 1 of a tensor of any rank >= 2 (Keras' channels-last axis), with
    Keras' ``center`` / ``scale`` switches (a missing beta or gamma is None)."""

    def __init__(self, num_features, eps, momentum, center=True, scale=True, keras_axis=-1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        self.keras_axis = keras_axis
        if not scale:
            del self.weight
            self.register_parameter("weight", None)
        if not center:
            del self.bias
            self.register_parameter("bias", None)

    def _check_input_dim(self, x):
        if self.keras_axis == -1 or isinstance(x, torch.fx.Proxy):  # the channels at any rank / tracing
            return
        if x.dim() < 2 or torch_dim(self.keras_axis, x.dim()) != 1:
            raise ValueError(f"batch norm over Keras axis {self.keras_axis} of a {x.dim()}-d tensor: only channels")


class Merge(nn.Module):
    """Keras' merge layers (``Add``, ``Concatenate`` ...): a function of a list of tensors."""

    def __init__(self, kind: str, keras_axis: int = -1):
        super().__init__()
        self.kind, self.keras_axis = kind, keras_axis

    def forward(self, xs):
        if self.kind == "concatenate":
            return torch.cat(xs, dim=_dim(self.keras_axis, xs[0]))
        out = xs[0]
        for x in xs[1:]:
            if self.kind in ("add", "average"):
                out = out + x
            elif self.kind == "subtract":
                out = out - x
            elif self.kind == "multiply":
                out = out * x
            else:
                out = torch.maximum(out, x) if self.kind == "maximum" else torch.minimum(out, x)
        return out / len(xs) if self.kind == "average" else out

    def extra_repr(self) -> str:
        return self.kind + (f", keras_axis={self.keras_axis}" if self.kind == "concatenate" else "")


class GlobalPool(nn.Module):
    """Keras' global average / max pooling over the spatial dims (``keepdims`` keeps them as 1)."""

    def __init__(self, kind: str, keepdims: bool = False):
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x):
        dims = (2, 3)  # Keras' Global*Pooling2D
        if self.kind == "avg":
            return x.mean(dim=dims, keepdim=self.keepdims)
        return x.amax(dim=dims, keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"{self.kind}, keepdims={self.keepdims}"


class Softmax(nn.Module):
    """Softmax over Keras' ``axis`` (default the channels)."""

    def __init__(self, keras_axis: int = -1):
        super().__init__()
        self.keras_axis = keras_axis

    def forward(self, x):
        return torch.softmax(x, dim=_dim(self.keras_axis, x))


class Reshape(nn.Module):
    """Keras ``Reshape(target_shape)``, read channels-last: the tensor is reshaped as Keras' (N,
    H, W, C) would be, and the result's last axis becomes dim 1 again."""

    def __init__(self, target_shape):
        super().__init__()
        self.target_shape = tuple(target_shape)

    def forward(self, x):
        x = _to_channels_last(x).reshape(x.shape[0], *self.target_shape)
        return _to_channels_first(x) if len(self.target_shape) > 1 else x

    def extra_repr(self) -> str:
        return f"target_shape={self.target_shape} (Keras, channels-last)"


class ChannelPReLU(nn.Module):
    """Keras ``PReLU``: ``max(x, 0) + alpha * min(x, 0)`` with ``alpha`` of Keras' shape moved to
    channels-first (the channel axis first, shared axes kept as size 1)."""

    def __init__(self, alpha: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(alpha)

    def forward(self, x):
        return F.relu(x) - self.weight * F.relu(-x)


# ---------------------------------------------------------------- weights and config fields


class LayerWeights:
    """A layer's tensors, taken one by one in the layer's order (by name where the file names
    them: ``kernel``, ``bias``, ``gamma``, ...), each taken exactly once."""

    def __init__(self, layer: str, tensors: list[tuple[str, np.ndarray]]):
        self.layer = layer
        self.left = list(tensors)

    def take(self, kind: str, shape: tuple | None = None) -> np.ndarray:
        def wanted(name: str) -> bool:
            short = name.rsplit("/", 1)[-1].split(":")[0]
            return short == kind or short.isdigit()

        index = next((i for i, (name, _) in enumerate(self.left) if wanted(name)), None)
        if index is None:
            raise KerasImportError(f"layer {self.layer!r}: no {kind!r} tensor in the file")
        name, value = self.left.pop(index)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise KerasImportError(
                f"layer {self.layer!r}: tensor {name!r} has shape {tuple(value.shape)}, the layer needs {tuple(shape)}"
            )
        return value.astype(np.float32)

    def finish(self) -> None:
        if self.left:
            names = ", ".join(repr(n) for n, _ in self.left)
            raise KerasImportError(f"layer {self.layer!r}: the file has tensors the layer does not use: {names}")


def _pair(value, key: str, layer: str) -> tuple[int, int]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(values) != 2 or not all(isinstance(v, numbers.Integral) for v in values):
        raise KerasImportError(f"layer {layer!r}: {key}={value!r} is not a pair of ints")
    return values


def _class(spec) -> tuple[str, dict]:
    """(name, config) of a serialized Keras object: a string or {"class_name", "config"}."""
    if isinstance(spec, str):
        return spec, {}
    if spec.get("class_name") == "function":  # a function serialized by its name only
        return str(spec.get("config", "")), {}
    name = spec.get("class_name", "")
    return name.rsplit(">", 1)[-1], dict(spec.get("config") or {})


# Larq's quantizer names and classes -> (onebit class, the config keys it takes)
_QUANTIZERS = {
    "ste_sign": (quantizers.SteSign, ("clip_value",)),
    "SteSign": (quantizers.SteSign, ("clip_value",)),
    "approx_sign": (quantizers.ApproxSign, ()),
    "ApproxSign": (quantizers.ApproxSign, ()),
    "swish_sign": (quantizers.SwishSign, ("beta",)),
    "SwishSign": (quantizers.SwishSign, ("beta",)),
    "magnitude_aware_sign": (quantizers.MagnitudeAwareSign, ("clip_value",)),
    "MagnitudeAwareSign": (quantizers.MagnitudeAwareSign, ("clip_value",)),
    "ste_heaviside": (quantizers.SteHeaviside, ("clip_value",)),
    "SteHeaviside": (quantizers.SteHeaviside, ("clip_value",)),
    "ste_tern": (quantizers.SteTern, ("threshold_value", "ternary_weight_networks", "clip_value")),
    "SteTern": (quantizers.SteTern, ("threshold_value", "ternary_weight_networks", "clip_value")),
    "dorefa_quantizer": (quantizers.DoReFa, ("k_bit", "mode")),
    "DoReFaQuantizer": (quantizers.DoReFa, ("k_bit", "mode")),
    "DoReFa": (quantizers.DoReFa, ("k_bit", "mode")),
    "NoOp": (quantizers.NoOp, ("precision",)),
    "NoOpQuantizer": (quantizers.NoOp, ("precision",)),
    # Larq Zoo's own kernel quantizers (functions in larq_zoo, modules of onebit's zoo)
    "xnor_weight_scale": (XnorWeightScale, ()),
    "magnitude_aware_sign_unclipped": (MagnitudeAwareSignUnclipped, ()),
}


def quantizer(spec, layer: str, role: str):
    """onebit's quantizer for a Larq quantizer spec (None for none / "linear")."""
    if spec is None:
        return None
    name, config = _class(spec)
    if name in ("linear", "None", ""):
        return None
    if name not in _QUANTIZERS:
        known = ", ".join(sorted(k for k in _QUANTIZERS if k[0].islower()))
        raise KerasImportError(f"layer {layer!r}: {role} {name!r} has no onebit equivalent; onebit has: {known}")
    cls, keys = _QUANTIZERS[name]
    return cls(**{k: config[k] for k in keys if k in config})


def constraint(spec, layer: str):
    """onebit's constraint for a Keras / Larq constraint spec (None for none)."""
    if spec is None:
        return None
    name, config = _class(spec)
    if name in ("weight_clip", "WeightClip"):
        return constraints.WeightClip(config.get("clip_value", 1.0))
    raise KerasImportError(f"layer {layer!r}: constraint {name!r} has no onebit equivalent; onebit has: weight_clip")


_ACTIVATIONS = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "softsign": nn.Softsign,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "softmax": Softmax,
    "clip_by_value_activation": ClipActivation,  # Larq Zoo's DoReFa-Net: clip to [0, 1]
}


def activation(spec, layer: str) -> nn.Module:
    """A Keras activation (a name; Larq's quantizer names are activations too) as a module."""
    name, _ = _class(spec if spec is not None else "linear")
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]()
    if name in _QUANTIZERS:
        return quantizer(spec, layer, "activation")
    known = ", ".join(sorted(_ACTIVATIONS) + sorted(k for k in _QUANTIZERS if k[0].islower()))
    raise KerasImportError(f"layer {layer!r}: activation {name!r} has no onebit equivalent; onebit has: {known}")


def _with_activation(module: nn.Module, config: dict, layer: str) -> nn.Module:
    act = activation(config.get("activation"), layer)
    return module if isinstance(act, nn.Identity) else nn.Sequential(module, act)


def _channels_last(config: dict, layer: str) -> None:
    if config.get("data_format", "channels_last") != "channels_last":
        raise KerasImportError(f"layer {layer!r}: data_format={config['data_format']!r}; only channels_last")


def _padding(config: dict, layer: str) -> str:
    padding = config.get("padding", "valid")
    if padding not in ("same", "valid"):
        raise KerasImportError(f"layer {layer!r}: padding={padding!r}; onebit maps 'same' and 'valid'")
    return padding


def _load(param: torch.Tensor, value) -> None:
    with torch.no_grad():
        param.copy_(value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value)))


def _check_kernel(layer: str, kernel: np.ndarray, expected: tuple) -> None:
    """The kernel's shape against the config's (None in ``expected``: taken from the kernel)."""
    ok = kernel.ndim == len(expected) and all(e is None or e == k for e, k in zip(expected, kernel.shape))
    if not ok:
        want = tuple("?" if e is None else e for e in expected)
        raise KerasImportError(
            f"layer {layer!r}: kernel has shape {tuple(kernel.shape)}, the config needs {want} (Keras layout)"
        )


def _conv(name: str, config: dict, weights: LayerWeights) -> nn.Module:
    _channels_last(config, name)
    size = _pair(config["kernel_size"], "kernel_size", name)
    groups = config.get("groups", 1)
    kernel = weights.take("kernel")
    _check_kernel(name, kernel, (*size, None, config["filters"]))
    layer = QuantConv2d(
        kernel.shape[2] * groups,
        config["filters"],
        size,
        _pair(config.get("strides", 1), "strides", name),
        _padding(config, name),
        _pair(config.get("dilation_rate", 1), "dilation_rate", name),
        groups,
        bias=config.get("use_bias", True),
        input_quantizer=quantizer(config.get("input_quantizer"), name, "input_quantizer"),
        kernel_quantizer=quantizer(config.get("kernel_quantizer"), name, "kernel_quantizer"),
        kernel_constraint=constraint(config.get("kernel_constraint"), name),
        pad_values=float(config.get("pad_values", 0.0)),
    )
    _load(layer.weight, torch_conv_weight(kernel))
    if layer.bias is not None:
        _load(layer.bias, weights.take("bias", (config["filters"],)))
    return _with_activation(layer, config, name)


def _depthwise(name: str, config: dict, weights: LayerWeights) -> nn.Module:
    _channels_last(config, name)
    size = _pair(config["kernel_size"], "kernel_size", name)
    multiplier = config.get("depth_multiplier", 1)
    kernel = weights.take("depthwise_kernel")
    _check_kernel(name, kernel, (*size, None, multiplier))
    kernel_quantizer = quantizer(config.get("depthwise_quantizer"), name, "depthwise_quantizer")
    if isinstance(kernel_quantizer, quantizers.MagnitudeAwareSign):
        raise KerasImportError(
            f"layer {name!r}: magnitude_aware_sign on a depthwise kernel scales per depth multiplier in Larq "
            "and per channel in onebit; there is no exact equivalent"
        )
    layer = QuantDepthwiseConv2d(
        kernel.shape[2],
        size,
        _pair(config.get("strides", 1), "strides", name),
        _padding(config, name),
        _pair(config.get("dilation_rate", 1), "dilation_rate", name),
        depth_multiplier=multiplier,
        bias=config.get("use_bias", True),
        input_quantizer=quantizer(config.get("input_quantizer"), name, "input_quantizer"),
        kernel_quantizer=kernel_quantizer,
        kernel_constraint=constraint(config.get("depthwise_constraint"), name),
        pad_values=float(config.get("pad_values", 0.0)),
    )
    _load(layer.weight, torch_depthwise_weight(kernel))
    if layer.bias is not None:
        _load(layer.bias, weights.take("bias", (layer.out_channels,)))
    return _with_activation(layer, config, name)


def _dense(name: str, config: dict, weights: LayerWeights) -> nn.Module:
    kernel = weights.take("kernel")
    _check_kernel(name, kernel, (None, config["units"]))
    layer = QuantLinear(
        kernel.shape[0],
        config["units"],
        bias=config.get("use_bias", True),
        input_quantizer=quantizer(config.get("input_quantizer"), name, "input_quantizer"),
        kernel_quantizer=quantizer(config.get("kernel_quantizer"), name, "kernel_quantizer"),
        kernel_constraint=constraint(config.get("kernel_constraint"), name),
    )
    _load(layer.weight, torch_dense_weight(kernel))
    if layer.bias is not None:
        _load(layer.bias, weights.take("bias", (config["units"],)))
    return _with_activation(ChannelsLast(layer), config, name)


def _batch_norm(name: str, config: dict, weights: LayerWeights) -> nn.Module:
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if not isinstance(axis, int):
        raise KerasImportError(f"layer {name!r}: batch norm over axes {axis!r}; onebit normalises one axis")
    center, scale = config.get("center", True), config.get("scale", True)
    gamma = weights.take("gamma") if scale else None
    beta = weights.take("beta") if center else None
    mean = weights.take("moving_mean")
    var = weights.take("moving_variance", mean.shape)
    momentum = round(1.0 - config.get("momentum", 0.99), 10)
    layer = KerasBatchNorm(mean.shape[0], config.get("epsilon", 1e-3), momentum, center, scale, axis)
    for param, value in ((layer.weight, gamma), (layer.bias, beta)):
        if param is not None:
            if value.shape != mean.shape:
                raise KerasImportError(f"layer {name!r}: gamma/beta of shape {value.shape}, moving mean {mean.shape}")
            _load(param, value)
    _load(layer.running_mean, mean)
    _load(layer.running_var, var)
    return layer


def _pool(kind: str):
    def convert(name: str, config: dict, weights: LayerWeights) -> nn.Module:
        _channels_last(config, name)
        size = _pair(config.get("pool_size", 2), "pool_size", name)
        stride = _pair(config.get("strides") or size, "strides", name)
        if _padding(config, name) == "valid":
            return nn.MaxPool2d(size, stride) if kind == "max" else nn.AvgPool2d(size, stride)
        if size[0] != size[1] or stride[0] != stride[1]:
            raise KerasImportError(f"layer {name!r}: 'same' pooling maps only square windows, got {size}/{stride}")
        return Pool2dSame(kind, size[0], stride[0])

    return convert


def _prelu(name: str, config: dict, weights: LayerWeights) -> nn.Module:
    """torch's ``nn.PReLU`` where Keras shares alpha over every axis but the channels (what
    onebit's exporters run), else ``ChannelPReLU`` with alpha of Keras' shape."""
    alpha = np.ascontiguousarray(np.moveaxis(weights.take("alpha"), -1, 0))
    if alpha.size == alpha.shape[0]:
        prelu = nn.PReLU(alpha.shape[0])
        _load(prelu.weight, alpha.reshape(-1))
        return prelu
    return ChannelPReLU(torch.from_numpy(alpha))


def _relu(name: str, config: dict, weights: LayerWeights) -> nn.Module:
    max_value = config.get("max_value")
    slope, threshold = config.get("negative_slope", 0.0), config.get("threshold", 0.0)
    if slope == 0.0 and threshold == 0.0 and max_value in (None, 6.0, 6):
        return nn.ReLU() if max_value is None else nn.ReLU6()
    if max_value is None and threshold == 0.0:
        return nn.LeakyReLU(slope)
    raise KerasImportError(
        f"layer {name!r}: ReLU(max_value={max_value}, threshold={threshold}) has no onebit equivalent"
    )


def _zero_padding(name: str, config: dict, weights: LayerWeights) -> nn.Module:
    pad = config.get("padding", 1)
    if isinstance(pad, int):
        pad = ((pad, pad), (pad, pad))
    (top, bottom), (left, right) = [(p, p) if isinstance(p, int) else tuple(p) for p in pad]
    return nn.ZeroPad2d((left, right, top, bottom))


# TensorFlow operators that Keras 2 records as TFOpLambda layers (``x + y`` is
# ``__operators__.add``): known by name, mapped onto merges, never run.
_TF_OPS = {
    "__operators__.add": "add",
    "math.add": "add",
    "math.subtract": "subtract",
    "math.multiply": "multiply",
    "math.maximum": "maximum",
    "math.minimum": "minimum",
}


def _tf_op(name: str, config: dict, weights: LayerWeights) -> nn.Module:
    function = config.get("function", "")
    if function not in _TF_OPS:
        raise KerasImportError(
            f"layer {name!r} is a TFOpLambda layer calling tf.{function}; onebit maps only "
            f"{', '.join('tf.' + f for f in sorted(_TF_OPS))} of two tensors"
        )
    return Merge(_TF_OPS[function])


def _simple(make):
    return lambda name, config, weights: make(config)


CONVERTERS = {
    "QuantConv2D": _conv,
    "Conv2D": _conv,
    "QuantDepthwiseConv2D": _depthwise,
    "DepthwiseConv2D": _depthwise,
    "QuantDense": _dense,
    "Dense": _dense,
    "BatchNormalization": _batch_norm,
    "MaxPooling2D": _pool("max"),
    "MaxPool2D": _pool("max"),
    "AveragePooling2D": _pool("avg"),
    "AvgPool2D": _pool("avg"),
    "GlobalAveragePooling2D": _simple(lambda c: GlobalPool("avg", c.get("keepdims", False))),
    "GlobalAvgPool2D": _simple(lambda c: GlobalPool("avg", c.get("keepdims", False))),
    "GlobalMaxPooling2D": _simple(lambda c: GlobalPool("max", c.get("keepdims", False))),
    "GlobalMaxPool2D": _simple(lambda c: GlobalPool("max", c.get("keepdims", False))),
    "Flatten": _simple(lambda c: ChannelsLastFlatten()),
    "Activation": lambda name, c, w: activation(c.get("activation"), name),
    "ReLU": _relu,
    "LeakyReLU": _simple(lambda c: nn.LeakyReLU(c.get("alpha", c.get("negative_slope", 0.3)))),
    "Softmax": _simple(lambda c: Softmax(c.get("axis", -1))),
    "PReLU": _prelu,
    "ZeroPadding2D": _zero_padding,
    "Dropout": _simple(lambda c: nn.Dropout(c.get("rate", 0.5))),
    "SpatialDropout2D": _simple(lambda c: nn.Dropout2d(c.get("rate", 0.5))),
    "Add": _simple(lambda c: Merge("add")),
    "Subtract": _simple(lambda c: Merge("subtract")),
    "Multiply": _simple(lambda c: Merge("multiply")),
    "Average": _simple(lambda c: Merge("average")),
    "Maximum": _simple(lambda c: Merge("maximum")),
    "Minimum": _simple(lambda c: Merge("minimum")),
    "Concatenate": _simple(lambda c: Merge("concatenate", c.get("axis", -1))),
    "Reshape": _simple(lambda c: Reshape(c["target_shape"])),
    "TFOpLambda": _tf_op,
}

_CODE_LAYERS = ("Lambda", "SlicingOpLambda", "TFOpLayer")
_MODEL_LAYERS = ("Functional", "Sequential", "Model")


def convert_layer(class_name: str, name: str, config: dict, tensors: list) -> nn.Module:
    """The onebit module of one Keras layer, with its weights in place."""
    if class_name in _CODE_LAYERS:
        raise KerasImportError(
            f"layer {name!r} is a {class_name} layer (Python code); onebit never runs code from a file"
        )
    if class_name in _MODEL_LAYERS:
        raise KerasImportError(f"layer {name!r} is a nested {class_name} model; save the model flat")
    weights = LayerWeights(name, tensors)
    if class_name in CONVERTERS:
        module = CONVERTERS[class_name](name, config, weights)
    elif class_name in _QUANTIZERS and class_name[0].isupper():  # a Larq quantizer used as a layer
        module = quantizer({"class_name": class_name, "config": config}, name, "quantizer")
    else:
        known = ", ".join(sorted(CONVERTERS))
        raise KerasImportError(f"layer {name!r}: {class_name} has no onebit equivalent; onebit maps: {known}")
    weights.finish()
    return module
