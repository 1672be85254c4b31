"""onebit: binarized neural networks in PyTorch, trained with Bop.

Public API (re-exports only): quantizers, quantized layers, constraints, optimizers, metrics,
the model zoo and summary, the bit-packed engine, ``settings`` (every process-wide switch) and
``xnor`` (the popcount-forward switch under its short name). Without torch installed only ``onebit.engine`` (the numpy runtime
of exported files) is available.
"""

try:
    import torch as _torch  # noqa: F401
except ModuleNotFoundError as _e:  # a deployment without torch: only onebit.engine.load works
    if _e.name != "torch":
        raise
    _torch = None

if _torch is None:
    from . import engine  # noqa: F401  (numpy runtime of exported files)
else:
    from . import constraints, engine, functional, metrics, models, optim, quantizers, settings, xnor
    from .engine import export_onnx
    from .layers import (
        QuantConv1d,
        QuantConv2d,
        QuantConv3d,
        QuantConvTranspose2d,
        QuantDepthwiseConv2d,
        QuantLayer,
        QuantLinear,
        apply_constraints,
        binary_parameters,
        real_parameters,
    )
    from .model_summary import ModelSummary, summary
    from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose2d",
    "QuantDepthwiseConv2d",
    "QuantLayer",
    "QuantLinear",
    "apply_constraints",
    "binary_parameters",
    "constraints",
    "create_model",
    "functional",
    "engine",
    "export_onnx",
    "list_models",
    "models",
    "metrics",
    "optim",
    "quantizers",
    "real_parameters",
    "settings",
    "summary",
    "ModelSummary",
    "xnor",
]
