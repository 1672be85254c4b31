"""Export to a standard ONNX graph (float arithmetic), for onnxruntime and other ONNX runtimes.

Every sign-type quantizer becomes ``Where(x >= 0, 1, -1)`` (so sign(0) = +1, as onebit and Larq),
every quantized kernel is stored already quantized (+/-1, or +/-alpha for magnitude-aware kernels)
as a float initializer, and ``pad_values`` becomes an explicit constant ``Pad``. The graph holds no
custom op, so any ONNX runtime runs it; it is not bit-packed (use ``onebit.engine.export`` for that).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .. import quantizers as q
from ..functional import sign
from ..kernels.bits import EngineError
from ..layers import QuantLayer
from .exporter import _qname


class OnnxSign(nn.Module):
    """sign(x) with sign(0) = +1 as ONNX ops: Where(GreaterOrEqual(x, 0), 1, -1)."""

    def forward(self, x):
        return sign(x)


def onnx_ready(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose quantizers are ONNX-exportable torch ops."""
    model = copy.deepcopy(model).eval()
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLayer):
            iq = m.input_quantizer
            if iq is not None:
                if not q.is_sign(iq):
                    raise EngineError(
                        f"layer {name!r}: input_quantizer {_qname(iq)} is not a sign "
                        f"quantizer; ONNX export supports sign and real inputs"
                    )
                m.input_quantizer = OnnxSign()
            if m.kernel_quantizer is not None:
                with torch.no_grad():
                    m.weight.data = m.quantized_weight().detach().clone()
                m.kernel_quantizer = None
            m.kernel_constraint = None
    for name, m in list(model.named_modules()):  # standalone activation quantizers
        if isinstance(m, q.Quantizer):
            if not q.is_sign(m):
                raise EngineError(f"layer {name!r}: quantizer {_qname(m)} is not a sign quantizer")
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, OnnxSign())
    return model


def export_onnx(model: nn.Module, path, input_size=None, opset_version: int = 17, dynamic_batch: bool = True) -> str:
    """Write ``model`` to ``path`` as ONNX for inputs of ``input_size`` (default (1, 3, 32, 32)).

    The batch axis is dynamic unless ``dynamic_batch=False``. Returns ``str(path)``.
    """
    input_size = tuple(input_size) if input_size is not None else (1, 3, 32, 32)
    ready = onnx_ready(model)
    x = torch.zeros(input_size)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ready,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            opset_version=opset_version,
            dynamic_axes=axes,
            dynamo=False,
        )
    return str(path)
