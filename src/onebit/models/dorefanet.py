"""DoReFa-Net (Zhou et al., 2016) as Larq Zoo defines it."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import QuantConv2d, QuantLinear
from ..quantizers import DoReFa, Quantizer
from .common import Pool2dSame, glorot_init, init_kernel, keras_bn
from .registry import register_model


class _ScaledSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        scale = w.abs().mean()
        return torch.where(w >= 0, scale, -scale)

    @staticmethod
    def backward(ctx, grad):
        return grad


class MagnitudeAwareSignUnclipped(Quantizer):
    r"""DoReFa's binary kernel: mean|w| * sign(w) with one scale per layer and the identity as
    pseudo-gradient (Larq Zoo's ``magnitude_aware_sign_unclipped``; the scale is not
    differentiated). Precision 1."""

    precision = 1

    def forward(self, w):
        return _ScaledSignFn.apply(w)


class ClipActivation(nn.Module):
    """clip(x, 0, 1), the activation before DoReFa-Net's classifier."""

    def forward(self, x):
        return torch.clamp(x, 0.0, 1.0)


@register_model
def dorefanet(
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    activations_k_bit: int = 2,
) -> nn.Module:
    """DoReFa-Net: Zhou et al., "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks
    with Low Bitwidth Gradients", 2016 (arXiv:1606.06160), W1A2.

    Real 96@12x12/4 "valid" convolution with bias; quantized convolutions 256@5x5, 384, 384,
    256@3x3 with 2-bit DoReFa inputs and per-layer scaled binary kernels, each followed by batch
    norm without scale (Keras momentum 0.9, eps 1e-4), 3x3/2 max pools ("same" after the 1st and
    2nd, "valid" after the 4th); quantized dense 4096, 4096 with batch norm; clip to [0, 1] and a
    real dense classifier with bias. Larq Zoo: 53.39% top-1 / 76.50% top-5 on ImageNet
    (224x224), 62,403,912 Keras parameters, 22.84 MB. With 2-bit inputs the summary reports the
    binary layers' MACs as 2-bit (max of input and weight precision), so no MAC is "binary".

    Counts (224x224): 58,236,928 binary weights.
    """

    def quant():
        return dict(
            input_quantizer=DoReFa(k_bit=activations_k_bit, mode="activations"),
            kernel_quantizer=MagnitudeAwareSignUnclipped(),
            bias=False,
        )

    size = (image_size - 12) // 4 + 1
    size = -(-size // 2)
    size = -(-size // 2)
    size = (size - 3) // 2 + 1
    if size < 1:
        raise ValueError(f"dorefanet needs image_size >= 44 (the map vanishes), got {image_size}")
    layers = [
        init_kernel(nn.Conv2d(in_channels, 96, 12, 4)),
        QuantConv2d(96, 256, 5, padding="same", **quant()),
        keras_bn(256, 0.9, eps=1e-4, scale=False),
        Pool2dSame("max", 3, 2),
        QuantConv2d(256, 384, 3, padding="same", **quant()),
        keras_bn(384, 0.9, eps=1e-4, scale=False),
        Pool2dSame("max", 3, 2),
        QuantConv2d(384, 384, 3, padding="same", **quant()),
        keras_bn(384, 0.9, eps=1e-4, scale=False),
        QuantConv2d(384, 256, 3, padding="same", **quant()),
        keras_bn(256, 0.9, eps=1e-4, scale=False),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        QuantLinear(256 * size * size, 4096, **quant()),
        keras_bn(4096, 0.9, eps=1e-4, dims=1, scale=False),
        QuantLinear(4096, 4096, **quant()),
        keras_bn(4096, 0.9, eps=1e-4, dims=1, scale=False),
        ClipActivation(),
        init_kernel(nn.Linear(4096, num_classes)),
    ]
    return glorot_init(nn.Sequential(*layers))
