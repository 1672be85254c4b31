"""Read a Keras model file with h5py and json only: no TensorFlow, and nothing read runs code.

Three layouts are understood:

- a whole model in HDF5 (``model.save("m.h5")``): the JSON ``model_config`` attribute and the
  weights under ``model_weights``;
- weights only in HDF5 (``model.save_weights("w.h5")``, Larq Zoo's downloads): the weights, in
  the order of the model's layers, without a config;
- a ``.keras`` archive (a zip of ``config.json`` and ``model.weights.h5``).

Only these members are read; JSON is parsed as data, HDF5 datasets as numbers (h5py never unpickles).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["KerasFile", "KerasImportError", "read_keras_file"]


class KerasImportError(ValueError):
    """A Keras file onebit cannot read or map: one line naming the file, layer or tensor."""


@dataclass
class KerasFile:
    """What a Keras file holds: the model config (None for a weights-only file) and, per layer
    that has weights, its tensors as (name, array) in the layer's order (kernel before bias; batch
    norm's gamma, beta, moving mean, moving variance). ``order`` lists those layers in the file's
    (the model's) order."""

    path: Path
    config: dict | None
    weights: dict[str, list[tuple[str, np.ndarray]]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _h5py():
    try:
        import h5py
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
        raise KerasImportError("reading Keras files needs h5py: pip install 'onebit[larq]'") from e
    return h5py


def _array(path: Path, dataset) -> np.ndarray:
    value = np.asarray(dataset[()])
    if value.dtype.kind not in "fiub":
        raise KerasImportError(f"{path}: tensor {dataset.name!r} holds {value.dtype} values, not numbers")
    return value


def _legacy_weights(path: Path, group) -> tuple[dict, list[str]]:
    """Keras 2's HDF5 layout: ``layer_names`` in model order, each layer's ``weight_names``."""
    weights, order = {}, []
    for layer in (_text(n) for n in group.attrs["layer_names"]):
        names = [_text(n) for n in group[layer].attrs.get("weight_names", [])]
        if names:
            weights[layer] = [(n, _array(path, group[layer][n])) for n in names]
            order.append(layer)
    return weights, order


def _layer_vars(path: Path, group) -> list[tuple[str, np.ndarray]]:
    """A ``.keras`` archive's layer group: its ``vars`` numbered in the layer's weight order."""
    if "vars" not in group:
        return []
    variables = group["vars"]
    return [(f"vars/{i}", _array(path, variables[str(i)])) for i in range(len(variables))]


def _snake_case(class_name: str) -> str:
    """Keras' object name for a class (``QuantConv2D`` -> ``quant_conv2d``)."""
    step = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", step).lower()


def _archive_keys(config: dict) -> list[tuple[str, list[str]]]:
    """Per layer of the config: its name and the groups that may hold its weights in a
    ``.keras`` archive (Keras names them by class, numbered in layer order: ``conv2d``,
    ``conv2d_1`` ...; some versions use the layer's own name)."""
    seen: dict[str, int] = {}
    keys = []
    for layer in config.get("config", {}).get("layers", []):
        name = layer.get("name") or layer.get("config", {}).get("name")
        base = _snake_case(layer.get("class_name", "").rsplit(">", 1)[-1])
        count = seen.get(base, 0)
        seen[base] = count + 1
        keys.append((name, [f"{base}_{count}" if count else base, name]))
    return keys


def _archive_weights(path: Path, h5, config: dict) -> tuple[dict, list[str]]:
    """The ``.keras`` layout: one group per layer under ``layers``, ordered by the config."""
    root = h5["layers"] if "layers" in h5 else None
    if root is None:
        raise KerasImportError(f"{path}: model.weights.h5 has no 'layers' group; not a Keras archive")
    weights, order = {}, []
    for name, candidates in _archive_keys(config):
        group = next((root[k] for k in candidates if k in root), None)
        tensors = _layer_vars(path, group) if group is not None else []
        if tensors:
            weights[name] = tensors
            order.append(name)
    return weights, order


def _read_h5(path: Path) -> KerasFile:
    h5py = _h5py()
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        raise KerasImportError(f"{path}: not a readable HDF5 file ({e})") from None
    with h5:
        config = json.loads(_text(h5.attrs["model_config"])) if "model_config" in h5.attrs else None
        group = h5["model_weights"] if "model_weights" in h5 else h5
        if "layer_names" not in group.attrs:
            raise KerasImportError(f"{path}: no 'layer_names' attribute; not a Keras HDF5 model or weights file")
        weights, order = _legacy_weights(path, group)
    return KerasFile(path, config, weights, order)


def _read_archive(path: Path) -> KerasFile:
    h5py = _h5py()
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            missing = {"config.json", "model.weights.h5"} - members
            if missing:
                raise KerasImportError(f"{path}: a .keras archive needs {', '.join(sorted(missing))}")
            config = json.loads(archive.read("config.json"))
            blob = archive.read("model.weights.h5")
    except zipfile.BadZipFile:
        raise KerasImportError(f"{path}: not a zip archive; a .keras file is one") from None
    with h5py.File(io.BytesIO(blob), "r") as h5:
        weights, order = _archive_weights(path, h5, config)
    return KerasFile(path, config, weights, order)


def read_keras_file(path) -> KerasFile:
    """Read ``path`` (``.h5`` / ``.hdf5`` model or weights, or a ``.keras`` archive)."""
    path = Path(path)
    if not path.is_file():
        raise KerasImportError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"PK"):
        return _read_archive(path)
    if magic == b"\x89HDF\r\n\x1a\n":
        return _read_h5(path)
    raise KerasImportError(f"{path}: neither HDF5 (.h5) nor a .keras archive")
