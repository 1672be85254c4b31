"""onebit: binarized neural networks in PyTorch, trained with Bop.

Public API (re-exports only): quantizers, quantized layers, constraints, optimizers, metrics.
"""

from . import constraints, metrics, models, optim, quantizers
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
    "list_models",
    "models",
    "metrics",
    "optim",
    "quantizers",
    "real_parameters",
]
