"""Bit-packed inference: export a trained onebit model to one file, run it without torch.

    import onebit.engine as engine
    report = engine.export(model, "model.obe", input_size=(1, 3, 32, 32))   # needs torch
    runtime = engine.load("model.obe")                                       # numpy (+ numba)
    logits = runtime(images)                                                 # numpy in, numpy out

Binary layers run as XOR + popcount on 64-bit words and, when a batch norm and a sign follow,
write packed bits through per-channel integer thresholds; their outputs equal torch's exactly.
``export_onnx`` writes a standard ONNX graph instead (onnxruntime, float arithmetic);
``export_lce`` a ``.tflite`` file for Larq Compute Engine (binary kernels for ARM phones and boards).

This package imports no torch: ``export``, ``export_onnx`` and ``export_lce`` import it when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..kernels.bits import EngineError, pack_sign, unpack_sign
from .runtime import Runtime, available_backends, load

if TYPE_CHECKING:  # torch is imported by the export functions only, when called
    from torch import nn

__all__ = [
    "EngineError",
    "Runtime",
    "available_backends",
    "export",
    "export_lce",
    "export_onnx",
    "load",
    "pack_sign",
    "unpack_sign",
]


def export(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, ...]) -> dict:
    """Write ``model`` to ``path`` as a packed engine file; see ``onebit.engine.exporter.export``."""
    from .exporter import export as _export

    return _export(model, path, input_size)


def export_onnx(
    model: nn.Module, path: str | os.PathLike, input_size: tuple[int, ...] | None = None, **kwargs: object
) -> str:
    """Write ``model`` as a standard ONNX graph; see ``onebit.engine.onnx_export.export_onnx``."""
    from .onnx_export import export_onnx as _export_onnx

    return _export_onnx(model, path, input_size=input_size, **kwargs)


def export_lce(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, ...]) -> dict:
    """Write ``model`` as a Larq Compute Engine ``.tflite`` file; see ``onebit.engine.lce_export.export_lce``."""
    from .lce_export import export_lce as _export_lce

    return _export_lce(model, path, input_size)
