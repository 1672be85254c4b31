"""MeliusNet 22 (Bethge et al., 2020) as Larq Zoo defines it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import QuantConv2d
from .common import Pool2dSame, global_pool_head, init_kernel, keras_bn
from .registry import register_model

# Larq Zoo's MeliusNet normalises with momentum 0.9 (Keras convention) and epsilon 1e-5.
_BN = dict(momentum=0.9, eps=1e-5)


def _conv(in_channels, out_channels, kernel_size, stride=1, groups=1, quant=None):
    return init_kernel(
        QuantConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding="same",
            groups=groups,
            bias=False,
            **(quant or {}),
        ),
        "glorot_normal",
    )


class MeliusBlock(nn.Module):
    """A dense block then an improvement block.

    Dense: ``x = cat(x, binary_conv3x3(bn(x)))`` adds 64 channels. Improvement: the next binary
    convolution's 64 channels are added to the *last* 64 channels of ``x`` (the ones just made).
    """

    def __init__(self, in_channels: int, quant: dict, growth: int = 64):
        super().__init__()
        self.bn_dense = keras_bn(in_channels, **_BN)
        self.conv_dense = _conv(in_channels, growth, 3, quant=quant)
        self.bn_improve = keras_bn(in_channels + growth, **_BN)
        self.conv_improve = _conv(in_channels + growth, growth, 3, quant=quant)

    def forward(self, x):
        x = torch.cat([x, self.conv_dense(self.bn_dense(x))], dim=1)
        w = self.conv_improve(self.bn_improve(x))
        return x + F.pad(w, (0, 0, 0, 0, x.shape[1] - w.shape[1], 0))


@register_model
def meliusnet22(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
) -> nn.Module:
    """MeliusNet 22: Bethge et al., "MeliusNet: Can Binary Neural Networks Achieve MobileNet-level
    Accuracy?", 2020 (arXiv:2001.05936).

    Grouped real stem (3x3/2 conv to 32, grouped 3x3 convs 32 (4 groups) and 64 (8 groups), each
    with batch norm and relu, 2x2/2 max pool); 4/5/4/4 blocks of dense + improvement binary 3x3
    convolutions (ste_sign, weight clip); real transitions (batch norm, 2x2/2 max pool, relu,
    1x1 conv to 160/224/256 channels); batch norm, relu, global pool and dense classifier (512
    features). Batch norm momentum 0.9 (Keras) and epsilon 1e-5, glorot-normal kernels. Larq Zoo:
    62.4% top-1 / 83.9% top-5 on ImageNet (224x224), 6,944,584 Keras parameters, 3.88 MiB.
    """
    quant = dict(
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_constraint=kernel_constraint,
    )
    layers = [
        _conv(in_channels, 32, 3, 2),
        keras_bn(32, **_BN),
        nn.ReLU(),
        _conv(32, 32, 3, groups=4),
        keras_bn(32, **_BN),
        nn.ReLU(),
        _conv(32, 64, 3, groups=8),
        keras_bn(64, **_BN),
        nn.ReLU(),
        Pool2dSame("max", 2, 2),
    ]
    channels = 64
    for n, transition in zip((4, 5, 4, 4), (160, 224, 256, None)):
        for _ in range(n):
            layers.append(MeliusBlock(channels, quant))
            channels += 64
        if transition:
            layers += [
                keras_bn(channels, **_BN),
                Pool2dSame("max", 2, 2),
                nn.ReLU(),
                init_kernel(nn.Conv2d(channels, transition, 1, bias=False), "glorot_normal"),
            ]
            channels = transition
    layers += [keras_bn(channels, **_BN), nn.ReLU(), global_pool_head(channels, num_classes, "glorot_normal")]
    return nn.Sequential(*layers)
