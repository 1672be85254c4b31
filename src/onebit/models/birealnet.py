"""Bi-Real Net 18 (Liu et al., 2018) as Larq Zoo defines it."""

from __future__ import annotations

from torch import nn

from ..layers import QuantConv2d
from .common import Pool2dSame, downsample_shortcut, global_pool_head, init_kernel, keras_bn
from .registry import register_model


class BiRealBlock(nn.Module):
    """One binary 3x3 convolution with its own shortcut: ``bn(conv(x)) + shortcut(x)``.

    When the channels double, the convolution has stride 2 and the shortcut is a real-valued
    2x2 average pool, 1x1 convolution and batch norm; otherwise it is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, quant: dict, momentum: float = 0.8):
        super().__init__()
        stride = 1 if in_channels == out_channels else 2
        self.conv = init_kernel(
            QuantConv2d(in_channels, out_channels, 3, stride, padding="same", bias=False, **quant),
            "glorot_normal",
        )
        self.bn = keras_bn(out_channels, momentum)
        self.shortcut = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = downsample_shortcut(in_channels, out_channels, momentum)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.shortcut(x)


@register_model
def birealnet18(
    num_classes: int = 1000,
    in_channels: int = 3,
    filters: int = 64,
    input_quantizer="approx_sign",
    kernel_quantizer="magnitude_aware_sign",
    kernel_constraint="weight_clip",
) -> nn.Module:
    """Bi-Real Net 18: Liu et al., "Bi-Real Net: Enhancing the Performance of 1-bit CNNs with
    Improved Representational Capability and Advanced Training Algorithm", ECCV 2018.

    Real 7x7/2 stem conv, batch norm and 3x3/2 max pool; 16 binary 3x3 convolutions each with its
    own shortcut (approx_sign inputs, magnitude-aware sign kernels clipped to [-1, 1]), four
    stages of 64/128/256/512 channels; global average pool and a real dense classifier. Batch
    norm momentum 0.8 (Keras), glorot-normal kernels. Larq Zoo: 57.47% top-1 / 79.84% top-5 on
    ImageNet (224x224), 11,699,112 Keras parameters, 4.03 MB.

    Counts (onebit summary, 224x224): 10,985,472 binary weights, 1,676,279,808 binary MACs;
    11,689,512 parameters by Larq's summary rule (batch norm 2 values per channel; Keras'
    count of 4 per channel gives Larq Zoo's 11,699,112).
    """
    quant = dict(
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_constraint=kernel_constraint,
    )
    layers = [
        init_kernel(QuantConv2d(in_channels, filters, 7, 2, padding="same", bias=False), "glorot_normal"),
        keras_bn(filters, 0.8),
        Pool2dSame("max", 3, 2),
    ]
    channels = filters
    for stage in range(4):
        out = filters * 2**stage
        for _ in range(4):
            layers.append(BiRealBlock(channels, out, quant))
            channels = out
    layers.append(global_pool_head(channels, num_classes))
    return nn.Sequential(*layers)
