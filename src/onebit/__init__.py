"""onebit: binarized neural networks in PyTorch, trained with Bop.

Public API (re-exports, plus ``load_run``): quantizers, quantized layers, constraints, optimizers,
metrics, the model zoo and summary, ``from_larq`` (Larq / Keras model files), the bit-packed
engine, ``settings`` (every process-wide switch), ``xnor`` (the popcount-forward switch under its
short name) and ``load_run`` (a trained run's model; it imports the training code when called).
Without torch installed only ``onebit.engine`` (the numpy runtime of exported files) is available.
"""

import os as _os

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
        is_binary,
        real_parameters,
    )
    from .model_summary import ModelSummary, summary
    from .models import KerasImportError, create_model, from_larq, list_models

__version__ = "0.1.0"


def load_run(run_dir: str | _os.PathLike, which: str = "best") -> tuple:
    """(model in eval mode, config dict) of a training run folder: the model rebuilt from its
    ``config.toml`` with the weights of ``best.pt`` (falling back to ``last.pt``; ``which="last"``
    for ``last.pt``). The checkpoint is read safely: a damaged or foreign file raises a one-line
    ``onebit.training.CheckpointError`` and runs nothing. Imports ``onebit.training``
    on first use only (``import onebit`` stays light)."""
    from .training.runs import load_run as _load_run

    return _load_run(run_dir, which)


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
    "from_larq",
    "KerasImportError",
    "is_binary",
    "export_onnx",
    "list_models",
    "load_run",
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
