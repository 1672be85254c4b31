"""``from_larq(path)``: a Larq / Keras model file as an onebit (PyTorch) model, weights in place.

The file is read with h5py and json (``onebit.models.keras_file``; TensorFlow is not needed and
nothing in the file is run); each layer becomes an onebit module (``onebit.models.keras_layers``)
and ``KerasModel`` runs them in the order of the Keras graph. The model takes and returns
channels-first tensors: a Keras input (N, H, W, C) is (N, C, H, W) here.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .keras_file import KerasImportError, read_keras_file
from .keras_layers import Merge, convert_layer

__all__ = ["KerasModel", "KerasMultiInputModel", "from_larq"]


class KerasModel(nn.Module):
    """A Keras functional or sequential model rebuilt from onebit modules.

    ``layers`` holds a module per Keras layer (under its Keras name, dots as underscores);
    ``steps`` lists (layer, its input layers) in an order where every input comes first;
    ``input_names`` / ``output_names`` are the graph's ends and ``input_sizes`` the channels-first
    size of each input without the batch dim (None where Keras left a dim open).
    """

    def __init__(
        self,
        name: str,
        layers: dict[str, nn.Module],
        steps: list[tuple[str, list[str]]],
        input_names: list[str],
        output_names: list[str],
        input_sizes: list[tuple[int, ...]],
    ) -> None:
        super().__init__()
        self.name = name
        self.layers = nn.ModuleDict({_key(n): m for n, m in layers.items()})
        self.steps = [(_key(n), [_key(s) for s in sources]) for n, sources in steps]
        self.input_names = [_key(n) for n in input_names]
        self.output_names = [_key(n) for n in output_names]
        self.input_sizes = input_sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run((x,))

    def _run(self, inputs):
        values = dict(zip(self.input_names, inputs))
        for name, sources in self.steps:
            layer = self.layers[name]
            args = [values[s] for s in sources]
            values[name] = layer(args) if isinstance(layer, Merge) else layer(*args)
        outputs = [values[n] for n in self.output_names]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class KerasMultiInputModel(KerasModel):
    """A ``KerasModel`` of several inputs: ``model(x1, x2, ...)`` in the order of Keras' inputs.
    (Single-input models take exactly one tensor, so torch.fx, and onebit's exporters, trace them.)"""

    def forward(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"model {self.name!r} takes {len(self.input_names)} inputs, got {len(inputs)}")
        return self._run(inputs)


def _key(name: str) -> str:
    return name.replace(".", "_")


def _channels_first(shape) -> tuple | None:
    """A Keras input shape with batch dim (None, H, W, C) as (C, H, W)."""
    if not shape or len(shape) < 2:
        return None
    dims = list(shape[1:])
    return tuple(dims[-1:] + dims[:-1])


def _history(arg, found: list) -> None:
    """Collect the source layers of a Keras 3 node's arguments (nested lists / tensor dicts)."""
    if isinstance(arg, dict):
        history = arg.get("config", {}).get("keras_history")
        if history:
            found.append(tuple(history))
        return
    if isinstance(arg, (list, tuple)):
        for a in arg:
            _history(a, found)


def _tensor_refs(value, found: list) -> None:
    """Keras 2 tensor references ([layer, node, tensor]) in a node's call arguments."""
    if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
        found.append(tuple(value[:3]))
        _tensor_refs(value[3:], found)  # the call's keyword arguments (``y`` of ``x + y``)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _tensor_refs(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _tensor_refs(v, found)


def _sources(layer: dict) -> list[str]:
    """The layers feeding ``layer`` (Keras 2's nested lists or Keras 3's node dicts)."""
    name, nodes = layer["name"], layer.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise KerasImportError(
            f"layer {name!r} is called {len(nodes)} times (a shared layer); onebit maps single calls"
        )
    if not nodes:
        return []
    found = []
    if isinstance(nodes[0], dict):
        _history(nodes[0].get("args", []), found)
    else:
        _tensor_refs(nodes[0], found)  # [[layer, node, tensor, {kwargs, e.g. y: [layer, 0, 0]}], ...]
    for source, node_index, tensor_index in found:
        if node_index != 0 or tensor_index != 0:
            raise KerasImportError(
                f"layer {name!r} takes output {tensor_index} of call {node_index} of {source!r}; onebit maps "
                "layers with one call and one output"
            )
    return [source for source, _, _ in found]


def _ends(spec) -> list[str]:
    """``input_layers`` / ``output_layers``: [[name, 0, 0], ...] or a single [name, 0, 0]."""
    if spec and isinstance(spec[0], str):
        spec = [spec]
    return [entry[0] for entry in spec]


def _input_shape(config: dict):
    return config.get("batch_input_shape") or config.get("batch_shape")


def _graph(config: dict) -> tuple[list, list[str], list[str], list]:
    """(layers with their sources, input names, output names, input sizes) of a model config; a
    functional model's sources are None (read after the layer itself is known to map)."""
    kind, body = config.get("class_name"), config.get("config", {})
    layers = body.get("layers", [])
    for layer in layers:
        layer.setdefault("name", layer.get("config", {}).get("name"))
    if kind == "Sequential":
        first = layers[0] if layers else {}
        shape = _input_shape(first.get("config", {}))
        chain = [layer for layer in layers if layer.get("class_name") != "InputLayer"]
        names = ["input"] + [layer["name"] for layer in chain]
        return [(layer, [names[i]]) for i, layer in enumerate(chain)], ["input"], names[-1:], [_channels_first(shape)]
    if "input_layers" not in body or "output_layers" not in body:
        raise KerasImportError(
            f"model class {kind!r} has no layer graph in its config; onebit reads functional and sequential models"
        )
    inputs = _ends(body.get("input_layers", []))
    by_name = {layer["name"]: layer for layer in layers}
    sizes = [_channels_first(_input_shape(by_name[n].get("config", {}))) for n in inputs]
    steps = [(layer, None) for layer in layers if layer.get("class_name") != "InputLayer"]
    return steps, inputs, _ends(body.get("output_layers", [])), sizes


def from_larq(path: str | os.PathLike) -> KerasModel:
    """The onebit model of a Larq / Keras model file, with its weights, in eval mode.

    ``path``: a whole model saved by Keras (``model.save("m.h5")`` or ``model.save("m.keras")``).
    Larq's quantized layers become onebit's (``QuantConv2D`` -> ``QuantConv2d``, ``QuantDense``
    -> ``QuantLinear``, ``QuantDepthwiseConv2D`` -> ``QuantDepthwiseConv2d``) with the same
    quantizers, constraints and ``pad_values``; Keras' convolutions, dense, batch norm, pooling,
    activations, ``Flatten`` and merge layers map too. The model takes channels-first input
    (``model.input_sizes``). Needs h5py, never TensorFlow; raises ``KerasImportError`` (one line)
    for a file it cannot read, a layer, quantizer or constraint with no onebit equivalent
    (``Lambda`` layers are refused: they are code) or a tensor that does not fit its layer.
    Weights-only files have no architecture: load those with ``create_model(name, weights=path)``.
    """
    keras = read_keras_file(path)
    if keras.config is None:
        raise KerasImportError(
            f"{keras.path}: weights only (no model config); save the whole model with model.save(), or "
            "load Larq Zoo weights with onebit.create_model(name, weights=path)"
        )
    steps, inputs, outputs, sizes = _graph(keras.config)
    modules, order = {}, []
    for layer, sources in steps:
        name = layer["name"]
        tensors = keras.weights.get(name, [])
        modules[name] = convert_layer(layer.get("class_name", ""), name, layer.get("config", {}), tensors)
        order.append((name, _sources(layer) if sources is None else sources))
    unused = sorted(set(keras.weights) - set(modules))
    if unused:
        raise KerasImportError(f"{keras.path}: weights of {unused[0]!r} belong to no layer of the model config")
    name = keras.config.get("config", {}).get("name") or "keras_model"
    cls = KerasModel if len(inputs) == 1 else KerasMultiInputModel
    return cls(name, modules, order, inputs, outputs, sizes).eval()
