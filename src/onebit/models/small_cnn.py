"""The reproduction study's small binary CNN (MNIST / CIFAR-10)."""

from __future__ import annotations

from torch import nn

from ..layers import QuantConv2d, QuantLinear
from .common import batch_norm, glorot_init
from .registry import register_model


@register_model(dataset="mnist")
def small_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
) -> nn.Module:
    """Three binary 3x3 valid convolutions (32/64/64 filters), 2x2 max-pool after the first two,
    batch norm after each, then binary dense 64 and ``num_classes`` with batch norm; the first
    conv takes the real-valued input.

    The architecture of the NeurIPS 2019 reproducibility study's code (which follows Larq's MNIST
    guide; the study's prose puts a pool in every block, its code does not): binary test
    accuracy 96.63% on MNIST and 57.31% on CIFAR-10 after 6 epochs of latent-weight Adam. Batch
    norm without scale, Keras momentum/epsilon; no biases. Flatten: 576 features at 28x28,
    1024 at 32x32.
    """
    q = dict(kernel_quantizer=kernel_quantizer, kernel_constraint=kernel_constraint)
    size = ((image_size - 2) // 2 - 2) // 2 - 2  # conv, pool, conv, pool, conv
    if size < 1:
        raise ValueError(f"small_cnn image_size={image_size} is too small; it takes 18 pixels or more")
    features = 64 * size * size
    model = nn.Sequential(
        QuantConv2d(in_channels, 32, 3, bias=False, **q),
        nn.MaxPool2d(2),
        batch_norm(32, scale=False),
        QuantConv2d(32, 64, 3, bias=False, input_quantizer=input_quantizer, **q),
        nn.MaxPool2d(2),
        batch_norm(64, scale=False),
        QuantConv2d(64, 64, 3, bias=False, input_quantizer=input_quantizer, **q),
        batch_norm(64, scale=False),
        nn.Flatten(),
        QuantLinear(features, 64, bias=False, input_quantizer=input_quantizer, **q),
        batch_norm(64, dims=1, scale=False),
        QuantLinear(64, num_classes, bias=False, input_quantizer=input_quantizer, **q),
        batch_norm(num_classes, dims=1, scale=False),
    )
    return glorot_init(model)
