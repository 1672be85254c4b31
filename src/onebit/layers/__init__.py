"""Quantized torch layers (Larq's vocabulary, PyTorch's names), the zoo's SAME pooling, and the
popcount forward that binary layers take in training (``onebit.layers.popcount``)."""

from ..kernels.geometry import same_padding
from .pooling import Pool2dSame
from .quantized import (
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

__all__ = [
    "Pool2dSame",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvTranspose2d",
    "QuantDepthwiseConv2d",
    "QuantLayer",
    "QuantLinear",
    "apply_constraints",
    "binary_parameters",
    "is_binary",
    "real_parameters",
    "same_padding",
]
