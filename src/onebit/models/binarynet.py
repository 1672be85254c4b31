"""BinaryNet for CIFAR-10 as in the code of Helwegen et al. (2019)."""

from __future__ import annotations

from torch import nn

from ..layers import QuantConv2d, QuantLinear
from .common import batch_norm, glorot_init
from .registry import register_model


@register_model(dataset="cifar10")
def binarynet(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    filters: int = 128,
    dense_units: int = 1024,
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
    pad_values: float = 0.0,
) -> nn.Module:
    """BinaryNet (Hubara et al., 2016) in the form of the Bop paper's CIFAR-10 code.

    conv 128 (valid, real input) - 128 - M - 256 - 256 - M - 512 - 512 - M, dense 1024 - 1024 -
    ``num_classes``; batch norm without scale after every layer, no biases, all kernels binary
    (10,352,000 binary weights, 510,961,664 binary MACs per 32x32 image). Bop: 91.3% top-1 on
    CIFAR-10 (paper, 500 epochs); the reproduction study reached 86.96-89.2%.
    Bop recipes pass ``kernel_quantizer="noop", kernel_constraint=None`` (Bop keeps kernels +/-1).
    """
    if image_size < 10:
        raise ValueError(f"binarynet needs image_size >= 10 (the map vanishes), got {image_size}")
    q = dict(kernel_quantizer=kernel_quantizer, kernel_constraint=kernel_constraint)
    conv = dict(padding="same", bias=False, input_quantizer=input_quantizer, pad_values=pad_values, **q)
    f = filters
    size = ((image_size - 2) // 2 // 2) // 2
    model = nn.Sequential(
        QuantConv2d(in_channels, f, 3, bias=False, **q),
        batch_norm(f, scale=False),
        QuantConv2d(f, f, 3, **conv),
        nn.MaxPool2d(2),
        batch_norm(f, scale=False),
        QuantConv2d(f, 2 * f, 3, **conv),
        batch_norm(2 * f, scale=False),
        QuantConv2d(2 * f, 2 * f, 3, **conv),
        nn.MaxPool2d(2),
        batch_norm(2 * f, scale=False),
        QuantConv2d(2 * f, 4 * f, 3, **conv),
        batch_norm(4 * f, scale=False),
        QuantConv2d(4 * f, 4 * f, 3, **conv),
        nn.MaxPool2d(2),
        batch_norm(4 * f, scale=False),
        nn.Flatten(),
        QuantLinear(4 * f * size * size, dense_units, bias=False, input_quantizer=input_quantizer, **q),
        batch_norm(dense_units, dims=1, scale=False),
        QuantLinear(dense_units, dense_units, bias=False, input_quantizer=input_quantizer, **q),
        batch_norm(dense_units, dims=1, scale=False),
        QuantLinear(dense_units, num_classes, bias=False, input_quantizer=input_quantizer, **q),
        batch_norm(num_classes, dims=1, scale=False),
    )
    return glorot_init(model)
