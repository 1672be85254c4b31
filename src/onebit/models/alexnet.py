"""Binary AlexNet (Hubara et al., 2016) as Larq Zoo defines it."""

from __future__ import annotations

from torch import nn

from ..layers import QuantConv2d, QuantLinear
from .common import glorot_init, keras_bn, pooled_size
from .registry import register_model


@register_model
def binary_alexnet(
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
) -> nn.Module:
    """Binary AlexNet: Hubara et al., "Binarized Neural Networks", NeurIPS 2016.

    Five binary convolutions 64@11x11/4, 192@5x5, 384, 384, 256@3x3 ("same", no bias; the first
    takes the real image, the rest ste_sign inputs), 3x3/2 max pools after the 1st, 2nd and 5th,
    then binary dense 4096, 4096, ``num_classes``; every layer is followed by batch norm without
    scale (Keras momentum 0.9). All kernels binary (ste_sign, weight clip). Larq Zoo: 36.30%
    top-1 / 61.53% top-5 on ImageNet (224x224), 61,859,192 Keras parameters, 7.49 MB.
    ``image_size`` sets the flatten size (224 -> 6x6x256).

    Counts (224x224): 61,827,776 binary weights; 61,848,720 parameters by Larq's summary rule.
    """
    q = dict(kernel_quantizer=kernel_quantizer, kernel_constraint=kernel_constraint)
    conv = dict(padding="same", bias=False, input_quantizer=input_quantizer, **q)
    size = -(-image_size // 4)
    size = pooled_size(pooled_size(pooled_size(size)))
    if size < 1:
        raise ValueError(f"binary_alexnet needs image_size >= 57 (the map vanishes), got {image_size}")
    model = nn.Sequential(
        QuantConv2d(in_channels, 64, 11, 4, padding="same", bias=False, **q),
        nn.MaxPool2d(3, 2),
        keras_bn(64, 0.9, scale=False),
        QuantConv2d(64, 192, 5, **conv),
        nn.MaxPool2d(3, 2),
        keras_bn(192, 0.9, scale=False),
        QuantConv2d(192, 384, 3, **conv),
        keras_bn(384, 0.9, scale=False),
        QuantConv2d(384, 384, 3, **conv),
        keras_bn(384, 0.9, scale=False),
        QuantConv2d(384, 256, 3, **conv),
        nn.MaxPool2d(3, 2),
        keras_bn(256, 0.9, scale=False),
        nn.Flatten(),
        QuantLinear(256 * size * size, 4096, bias=False, input_quantizer=input_quantizer, **q),
        keras_bn(4096, 0.9, dims=1, scale=False),
        QuantLinear(4096, 4096, bias=False, input_quantizer=input_quantizer, **q),
        keras_bn(4096, 0.9, dims=1, scale=False),
        QuantLinear(4096, num_classes, bias=False, input_quantizer=input_quantizer, **q),
        keras_bn(num_classes, 0.9, dims=1, scale=False),
    )
    return glorot_init(model)
