"""onebit: binarized neural networks in PyTorch, trained with Bop.

Public API (re-exports only): quantizers, quantized layers, constraints, optimizers, metrics.
"""

from . import constraints, metrics, optim, quantizers
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
    "metrics",
    "optim",
    "quantizers",
    "real_parameters",
]
