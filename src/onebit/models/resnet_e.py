"""Binary ResNet-E 18 (Bethge et al., 2019) as Larq Zoo defines it."""

from __future__ import annotations

from torch import nn

from ..constraints import WeightClip
from ..layers import QuantConv2d
from ..quantizers import SteSign
from .common import Pool2dSame, downsample_shortcut, global_pool_head, init_kernel, keras_bn
from .registry import register_model


class ResNetEBlock(nn.Module):
    """``bn(binary_conv3x3(x)) + shortcut(x)``; on down-sampling the shortcut is a real 2x2
    average pool, 1x1 convolution and batch norm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, clip: float):
        super().__init__()
        self.conv = init_kernel(
            QuantConv2d(
                in_channels,
                out_channels,
                3,
                stride,
                padding="same",
                bias=False,
                input_quantizer=SteSign(clip),
                kernel_quantizer=SteSign(clip),
                kernel_constraint=WeightClip(clip),
            ),
            "glorot_normal",
        )
        self.bn = keras_bn(out_channels, 0.9, eps=1e-5)
        self.shortcut = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = downsample_shortcut(in_channels, out_channels, 0.9, eps=1e-5)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.shortcut(x)


@register_model
def binary_resnet_e18(
    num_classes: int = 1000,
    in_channels: int = 3,
    initial_filters: int = 64,
    clip_value: float = 1.25,
    small_input: bool = False,
) -> nn.Module:
    """Binary ResNet-E 18: Bethge et al., "Back to Simplicity: How to Train Accurate BNNs from
    Scratch?", 2019 (arXiv:1906.08637).

    ResNet-18 with a shortcut around every binary 3x3 convolution (ste_sign, clip 1.25, weight
    clip 1.25): real 7x7/2 stem, batch norm, relu, 3x3/2 max pool, batch norm; four stages of
    four blocks with 64/128/256/512 channels; relu, global pool, real dense classifier.
    ``small_input=True`` replaces the stem by one 3x3 convolution (Larq Zoo does this for inputs
    under 50 pixels). Larq Zoo: 58.32% top-1 / 80.79% top-5 on ImageNet (224x224), 11,699,368
    Keras parameters, 4.03 MB.

    Counts (224x224): 10,985,472 binary weights, 1,676,279,808 binary MACs; 11,689,640
    parameters by Larq's summary rule (Keras counts 4 values per batch-norm channel).
    """
    f = initial_filters
    if small_input:
        layers = [init_kernel(QuantConv2d(in_channels, f, 3, padding="same", bias=False), "he_normal")]
    else:
        layers = [
            init_kernel(QuantConv2d(in_channels, f, 7, 2, padding="same", bias=False), "he_normal"),
            keras_bn(f, 0.9, eps=1e-5),
            nn.ReLU(),
            Pool2dSame("max", 3, 2),
            keras_bn(f, 0.9, eps=1e-5),
        ]
    channels = f
    for stage in range(4):
        out = f * 2**stage
        for block in range(4):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(ResNetEBlock(channels, out, stride, clip_value))
            channels = out
    layers += [nn.ReLU(), global_pool_head(channels, num_classes, "glorot_normal")]
    return nn.Sequential(*layers)
