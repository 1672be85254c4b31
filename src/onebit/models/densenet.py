"""Binary DenseNet 28 (Bethge et al., 2019) as Larq Zoo defines it."""

from __future__ import annotations

import torch
from torch import nn

from ..constraints import WeightClip
from ..layers import QuantConv2d
from ..quantizers import SteSign
from .common import Pool2dSame, global_pool_head, init_kernel, keras_bn
from .registry import register_model


class DenseLayer(nn.Module):
    """Concatenate ``binary_conv3x3(bn(x))`` (``growth_rate`` channels) to ``x``."""

    def __init__(self, in_channels: int, growth_rate: int, dilation: int, clip: float):
        super().__init__()
        self.bn = keras_bn(in_channels, 0.9, eps=1e-5)
        self.conv = init_kernel(
            QuantConv2d(
                in_channels,
                growth_rate,
                3,
                padding="same",
                dilation=dilation,
                bias=False,
                input_quantizer=SteSign(clip),
                kernel_quantizer=SteSign(clip),
                kernel_constraint=WeightClip(clip),
            ),
            "glorot_normal",
        )

    def forward(self, x):
        return torch.cat([x, self.conv(self.bn(x))], dim=1)


def _binary_densenet(
    layers_per_block, reduction, dilation, num_classes, in_channels, initial_filters, growth_rate, clip
) -> nn.Module:
    f = initial_filters
    layers = [
        init_kernel(QuantConv2d(in_channels, f, 7, 2, padding="same", bias=False), "he_normal"),
        keras_bn(f, 0.9, eps=1e-5),
        nn.ReLU(),
        Pool2dSame("max", 3, 2),
    ]
    channels = f
    for block, n in enumerate(layers_per_block):
        for _ in range(n):
            layers.append(DenseLayer(channels, growth_rate, dilation[block], clip))
            channels += growth_rate
        if block < len(layers_per_block) - 1:
            # Larq Zoo: round(channels // reduction / 32) * 32 output channels.
            out = round(channels // reduction[block] / 32) * 32
            layers.append(keras_bn(channels, 0.9, eps=1e-5))
            if dilation[block + 1] == 1:
                layers.append(nn.MaxPool2d(2, 2))
            layers += [nn.ReLU(), init_kernel(nn.Conv2d(channels, out, 1, bias=False), "he_normal")]
            channels = out
    layers += [keras_bn(channels, 0.9, eps=1e-5), nn.ReLU(), global_pool_head(channels, num_classes, "he_normal")]
    return nn.Sequential(*layers)


@register_model
def binary_densenet28(
    num_classes: int = 1000,
    in_channels: int = 3,
    initial_filters: int = 64,
    growth_rate: int = 64,
    clip_value: float = 1.3,
) -> nn.Module:
    """Binary DenseNet 28: Bethge et al., "Back to Simplicity: How to Train Accurate BNNs from
    Scratch?", 2019 (arXiv:1906.08637).

    Real 7x7/2 stem, batch norm, relu, 3x3/2 max pool; four dense blocks of 6/6/6/5 layers, each
    layer concatenating a binary 3x3 convolution of growth rate 64 (ste_sign, clip 1.3, weight
    clip 1.3) applied to the batch-normed input; real transitions (batch norm, 2x2 max pool,
    relu, 1x1 convolution reducing channels by 2.7/2.7/2.2 to a multiple of 32: 160, 192, 256);
    final batch norm, relu, global pool and dense classifier (576 features). Larq Zoo: 60.91%
    top-1 / 82.83% top-5 on ImageNet (224x224), 5,150,504 Keras parameters, 4.12 MB.
    """
    return _binary_densenet(
        (6, 6, 6, 5),
        (2.7, 2.7, 2.2),
        (1, 1, 1, 1),
        num_classes,
        in_channels,
        initial_filters,
        growth_rate,
        clip_value,
    )
