"""QuickNet Small / QuickNet / QuickNet Large (Plumerai, Larq Zoo "sota" models, v1.0)."""

from __future__ import annotations

import torch
from torch import nn

from ..constraints import WeightClip
from ..layers import QuantConv2d, QuantDepthwiseConv2d
from ..quantizers import SteSign
from .common import batch_norm, global_pool_head, init_kernel, keras_bn
from .registry import register_model


class QuickNetResidual(nn.Module):
    """``x + bn(relu(binary_conv3x3(x)))``; the convolution pads with +1 (binary padding)."""

    def __init__(self, channels: int, clip: float):
        super().__init__()
        self.conv = init_kernel(
            QuantConv2d(
                channels,
                channels,
                3,
                padding="same",
                bias=False,
                pad_values=1.0,
                input_quantizer=SteSign(clip),
                kernel_quantizer=SteSign(clip),
                kernel_constraint=WeightClip(clip),
            ),
            "glorot_normal",
        )
        self.act = nn.ReLU()
        self.bn = keras_bn(channels, 0.9, eps=1e-5)

    def forward(self, x):
        return x + self.bn(self.act(self.conv(x)))


def blur_kernel(channels: int) -> torch.Tensor:
    """The fixed 3x3 anti-aliasing ("blur pool", Zhang 2019) kernel [1 2 1]^T [1 2 1] / 16."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k = torch.outer(k, k) / 16.0
    return k.expand(channels, 1, 3, 3).clone()


def transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """Real-valued down-sampling between sections: relu, 2x2/1 max pool, fixed blur depthwise
    3x3/2 (a non-trainable parameter, as in Larq Zoo), 1x1 convolution and batch norm."""
    blur = QuantDepthwiseConv2d(in_channels, 3, 2, padding="same", bias=False)
    with torch.no_grad():
        blur.weight.copy_(blur_kernel(in_channels))
    blur.weight.requires_grad_(False)
    return nn.Sequential(
        nn.ReLU(),
        nn.MaxPool2d(2, stride=1),
        blur,
        init_kernel(nn.Conv2d(in_channels, out_channels, 1, bias=False), "glorot_normal"),
        keras_bn(out_channels, 0.9, eps=1e-5),
    )


def _quicknet(blocks, filters, num_classes: int, in_channels: int, clip: float) -> nn.Module:
    f0 = filters[0]
    if f0 % 4:
        raise ValueError(f"QuickNet's first section needs filters divisible by 4, got {f0}")
    layers = [
        init_kernel(QuantConv2d(in_channels, f0 // 4, 3, 2, padding="same", bias=False), "he_normal"),
        batch_norm(f0 // 4),
        nn.ReLU(),
        QuantDepthwiseConv2d(f0 // 4, 3, 2, padding="same", bias=False),
        batch_norm(f0 // 4, scale=False, center=False),
        init_kernel(nn.Conv2d(f0 // 4, f0, 1, bias=False), "he_normal"),
        batch_norm(f0),
    ]
    channels = f0
    for n, f in zip(blocks, filters):
        for _ in range(n):
            if f != channels:
                layers.append(transition(channels, f))
                channels = f
            layers.append(QuickNetResidual(channels, clip))
    layers.append(nn.ReLU())
    layers.append(global_pool_head(channels, num_classes, "glorot_normal"))
    return nn.Sequential(*layers)


_DOC = """{title}: a BNN designed for fast inference with Larq Compute Engine (Plumerai, Larq Zoo
    ``larq_zoo.sota.{fn}``, v1.0; Bannink et al., "Larq Compute Engine", MLSys 2021).

    Stem: real 3x3/2 convolution, depthwise 3x3/2 and 1x1 convolution with batch norms; then
    sections of {blocks} residual blocks with {filters} channels, each block
    ``x + bn(relu(binary_conv3x3(x)))`` (ste_sign with clip 1.25 on inputs and kernels, weight
    clip 1.25, padding with +1); sections are joined by real transition blocks (max pool, fixed
    blur pool, 1x1 convolution). Larq Zoo: {top1} top-1 / {top5} top-5 on ImageNet (224x224),
    {params} parameters, {memory}. Larq Zoo's parameter count for QuickNet is that of Larq's
    summary (batch norm 2 values per channel), which onebit's summary reproduces exactly.
    """


@register_model
def quicknet_small(num_classes: int = 1000, in_channels: int = 3, clip_value: float = 1.25) -> nn.Module:
    return _quicknet((4, 4, 4, 4), (32, 64, 256, 512), num_classes, in_channels, clip_value)


@register_model
def quicknet(num_classes: int = 1000, in_channels: int = 3, clip_value: float = 1.25) -> nn.Module:
    return _quicknet((4, 4, 4, 4), (64, 128, 256, 512), num_classes, in_channels, clip_value)


@register_model
def quicknet_large(num_classes: int = 1000, in_channels: int = 3, clip_value: float = 1.25) -> nn.Module:
    return _quicknet((6, 8, 12, 6), (64, 128, 256, 512), num_classes, in_channels, clip_value)


quicknet_small.__doc__ = (
    _DOC.format(
        title="QuickNet Small",
        fn="QuickNetSmall",
        blocks="4/4/4/4",
        filters="32/64/256/512",
        top1="59.4%",
        top5="81.8%",
        params="12,655,688",
        memory="4.00 MB",
    )
    + "\n    Counts (224x224): 11,980,800 binary weights.\n"
)
quicknet.__doc__ = (
    _DOC.format(
        title="QuickNet",
        fn="QuickNet",
        blocks="4/4/4/4",
        filters="64/128/256/512",
        top1="63.3%",
        top5="84.6%",
        params="13,234,088",
        memory="4.17 MB",
    )
    + "\n    Counts (224x224): 12,533,760 binary weights.\n"
)
quicknet_large.__doc__ = (
    _DOC.format(
        title="QuickNet Large",
        fn="QuickNetLarge",
        blocks="6/8/12/6",
        filters="64/128/256/512",
        top1="66.9%",
        top5="87.0%",
        params="23,342,248",
        memory="5.40 MB",
    )
    + "\n    Counts (224x224): 22,634,496 binary weights.\n"
)
