"""Larq Zoo weight files on onebit's zoo architectures: ``create_model(name, weights=path)``.

Larq Zoo publishes its pretrained weights as Keras weights files (``model.save_weights``): per
layer with weights, its tensors, in the order of the Keras model's layers and without the
architecture. onebit's zoo rebuilds the same architectures in PyTorch, so the weights are mapped
layer by layer:

- onebit's weighted modules (convolutions, depthwise convolutions, dense layers, batch norms,
  PReLUs) are matched, in Keras' order, with the file's layers by kind and shape. Keras lists a
  block's layers in graph order, which may differ from the order onebit's modules are declared
  in (Bi-Real Net's shortcut convolution comes before the block's batch norm); each file layer
  takes the first still-unfilled module among the next few that fits it, which follows such
  local reorderings while two equal-shaped tensors keep their relative order.
- a grouped convolution that Keras wrote as one convolution per group (MeliusNet's stem) is
  filled from that many consecutive file layers; a dense layer written as a 1x1 convolution
  (Binary AlexNet) fills onebit's ``Linear``; a dense layer after ``Flatten`` gets its rows
  reordered from Keras' (H, W, C) flatten order to onebit's (C, H, W).
- layouts as everywhere in onebit: HWIO -> OIHW, (in, out) -> (out, in), PReLU's alpha per channel.

A file for another architecture (or another number of classes) raises ``KerasImportError``
naming the file's tensor that does not fit, its shape and the shape onebit's module needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .keras_file import KerasFile, KerasImportError, read_keras_file
from .keras_layout import torch_conv_weight, torch_dense_weight, torch_depthwise_weight

__all__ = ["load_larq_weights"]

# How far ahead of the first unfilled module a file layer may land (a block's local reordering).
_WINDOW = 6


@dataclass
class _Slot:
    """One onebit module that takes one Keras layer's weights (``groups`` layers for a grouped
    convolution written per group), with the channels seen just before it."""

    name: str
    module: nn.Module
    kind: str  # conv, depthwise, dense, bn, prelu
    channels_before: int | None = None
    filled: bool = False


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups == module.in_channels and module.weight.shape[1] == 1 and module.groups > 1
        return "depthwise" if depthwise else "conv"
    if isinstance(module, nn.Linear):
        return "dense"
    if isinstance(module, nn.PReLU):
        return "prelu"
    return None


def _slots(model: nn.Module) -> list[_Slot]:
    slots, channels = [], None
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is None:
            continue
        slots.append(_Slot(name, module, kind, channels))
        if kind == "bn":
            channels = module.num_features
        elif kind in ("conv", "depthwise"):
            channels = module.out_channels
        elif kind == "dense":
            channels = module.out_features
    return slots


def _named(keras: KerasFile, layer: str) -> dict[str, np.ndarray]:
    """A file layer's tensors by their Keras names (kernel, bias, gamma, beta, moving_mean, ...)."""
    out = {}
    for name, value in keras.weights[layer]:
        short = name.rsplit("/", 1)[-1].split(":")[0]
        if short.isdigit():
            raise KerasImportError(f"{keras.path}: layer {layer!r} has unnamed tensors; pass an .h5 weights file")
        out[short] = value.astype(np.float32)
    return out


def _layer_kind(tensors: dict) -> str:
    if "moving_mean" in tensors:
        return "bn"
    if "depthwise_kernel" in tensors:
        return "depthwise"
    if "alpha" in tensors:
        return "prelu"
    if "kernel" in tensors:
        return "conv" if tensors["kernel"].ndim == 4 else "dense"
    return "unknown"


def _bias_fits(module: nn.Module, tensors: dict) -> bool:
    bias = tensors.get("bias")
    if module.bias is None:
        return bias is None
    return bias is not None and tuple(bias.shape) == tuple(module.bias.shape)


def _conv_kernel(module: nn.Conv2d) -> tuple:
    o, i, kh, kw = module.weight.shape
    return (kh, kw, i, o)


def _fits(slot: _Slot, kind: str, tensors: dict) -> int:
    """How many consecutive file layers ``slot`` takes starting with this one (0: it does not fit)."""
    m = slot.module
    if slot.kind == "bn" and kind == "bn":
        have = {k for k in ("gamma", "beta") if k in tensors}
        need = {k for k, p in (("gamma", m.weight), ("beta", m.bias)) if p is not None}
        return int(have == need and tensors["moving_mean"].shape == (m.num_features,))
    if slot.kind == "prelu" and kind == "prelu":
        return int(tensors["alpha"].size == m.weight.numel())
    if slot.kind == "depthwise" and kind == "depthwise":
        kh, kw = m.kernel_size
        shape = (kh, kw, m.in_channels, m.out_channels // m.in_channels)
        return int(tensors["depthwise_kernel"].shape == shape and _bias_fits(m, tensors))
    kernel = tensors.get("kernel")
    if slot.kind == "conv" and kind == "conv":
        kh, kw, i, o = _conv_kernel(m)
        if kernel.shape == (kh, kw, i, o) and _bias_fits(m, tensors):
            return 1
        per_group = m.groups > 1 and kernel.shape == (kh, kw, i, o // m.groups) and "bias" not in tensors
        return m.groups if per_group and m.bias is None else 0
    if slot.kind == "dense" and kind in ("dense", "conv"):
        shape = (m.in_features, m.out_features)
        return int(kernel.shape in (shape, (1, 1, *shape)) and _bias_fits(m, tensors))
    return 0


def _expected(slot: _Slot) -> tuple:
    m = slot.module
    if slot.kind == "bn":
        return (m.num_features,)
    if slot.kind == "prelu":
        return tuple(m.weight.shape)
    if slot.kind == "depthwise":
        return (*m.kernel_size, m.in_channels, m.out_channels // m.in_channels)
    if slot.kind == "dense":
        return (m.in_features, m.out_features)
    return _conv_kernel(m)


def _dense_rows(kernel: np.ndarray, channels: int | None) -> np.ndarray:
    """Dense rows from Keras' flatten order (H, W, C) to onebit's (C, H, W)."""
    rows = kernel.shape[0]
    if not channels or rows == channels or rows % channels:
        return kernel
    side = rows // channels
    return kernel.reshape(side, channels, -1).transpose(1, 0, 2).reshape(rows, -1)


def _fill(slot: _Slot, layers: list[dict]) -> None:
    m, t = slot.module, layers[0]
    with torch.no_grad():
        if slot.kind == "bn":
            for param, key in ((m.weight, "gamma"), (m.bias, "beta")):
                if param is not None:
                    param.copy_(torch.from_numpy(t[key]))
            m.running_mean.copy_(torch.from_numpy(t["moving_mean"]))
            m.running_var.copy_(torch.from_numpy(t["moving_variance"]))
            return
        if slot.kind == "prelu":
            m.weight.copy_(torch.from_numpy(t["alpha"]).reshape(m.weight.shape))
            return
        if slot.kind == "depthwise":
            m.weight.copy_(torch_depthwise_weight(t["depthwise_kernel"]))
        elif slot.kind == "dense":
            kernel = t["kernel"].reshape(m.in_features, m.out_features)
            m.weight.copy_(torch_dense_weight(_dense_rows(kernel, slot.channels_before)))
        else:
            m.weight.copy_(torch.cat([torch_conv_weight(layer["kernel"]) for layer in layers]))
        if m.bias is not None:
            m.bias.copy_(torch.from_numpy(t["bias"]))


def _describe(layer: str, tensors: dict) -> str:
    main = next((k for k in ("kernel", "depthwise_kernel", "moving_mean", "alpha") if k in tensors), None)
    if main is None:
        return f"{layer!r} (tensors {sorted(tensors)})"
    return f"'{layer}/{main}' of shape {tuple(tensors[main].shape)}"


def load_larq_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Fill ``model`` (an onebit zoo model) with a Larq Zoo / Keras weights file, in place.

    ``path``: a Keras ``.h5`` weights file (``model.save_weights``, as Larq Zoo ships them), a
    whole-model ``.h5`` or a ``.keras`` archive. Returns ``model`` in eval mode. Raises
    ``KerasImportError`` naming the first tensor that does not fit.
    """
    keras = read_keras_file(path)
    slots = _slots(model)
    names = list(keras.order)
    label = getattr(model, "name", type(model).__name__)
    i = 0
    while i < len(names):
        tensors = _named(keras, names[i])
        kind = _layer_kind(tensors)
        open_slots = [s for s in slots if not s.filled][:_WINDOW]
        match = next(((s, n) for s in open_slots if (n := _fits(s, kind, tensors))), None)
        if match is None:
            want = f"'{open_slots[0].name}' needs {_expected(open_slots[0])}" if open_slots else "has no layer left"
            raise KerasImportError(
                f"{keras.path} does not fit {label}: tensor {_describe(names[i], tensors)}; onebit's {want}"
            )
        slot, count = match
        group = [_named(keras, n) for n in names[i : i + count]]
        if len(group) < count or any(_fits(slot, _layer_kind(g), g) != count for g in group):
            raise KerasImportError(f"{keras.path}: grouped convolution {slot.name!r} needs {count} per-group layers")
        _fill(slot, group)
        slot.filled = True
        i += count
    left = [s for s in slots if not s.filled]
    if left:
        raise KerasImportError(
            f"{keras.path} does not fit {label}: the file ends before onebit's '{left[0].name}' {_expected(left[0])}"
        )
    return model.eval()
