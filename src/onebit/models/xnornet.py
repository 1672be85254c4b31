"""XNOR-Net (Rastegari et al., 2016) as Larq Zoo defines it."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import QuantConv2d
from ..quantizers import Quantizer, SteSign
from .common import glorot_init, init_kernel, keras_bn, pooled_size
from .registry import register_model


class XnorWeightScale(Quantizer):
    r"""XNOR-Net's binary kernel with a per-filter scale: alpha_o * sign(clip(w, -1, 1)),
    alpha_o = mean |clip(w, -1, 1)| over the filter (every dim but the output channel).

    The gradient flows through alpha and through the straight-through sign (Larq Zoo's
    ``xnor_weight_scale``). Precision 1: the summary and Bop treat the kernel as binary.
    """

    precision = 1

    def __init__(self):
        super().__init__()
        self.sign = SteSign(clip_value=1.0)

    def forward(self, w):
        w = torch.clamp(w, -1.0, 1.0)
        alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        return alpha * self.sign(w)


@register_model
def xnornet(
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    input_quantizer="ste_sign",
    kernel_constraint="weight_clip",
) -> nn.Module:
    """XNOR-Net: Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional
    Neural Networks", ECCV 2016.

    AlexNet-like: real 96@11x11/4 convolution, batch norm, relu, 3x3/2 max pool; binary
    convolutions 256@5x5, 384, 384, 256@3x3 (ste_sign inputs, per-filter scaled sign kernels
    ``XnorWeightScale``, weight clip, 3x3/2 max pools after the 256s), a binary 4096@6x6 "valid"
    convolution and a binary 1x1 convolution (a dense layer), each behind batch norm without
    scale (Keras momentum 0.9); relu and a real dense classifier without bias. Larq Zoo also puts
    an L2 penalty of 5e-7 on every kernel: pass it as weight decay to the optimizer. Larq Zoo:
    44.96% top-1 / 69.18% top-5 on ImageNet (224x224), 62,396,768 Keras parameters, 22.81 MB.
    ``image_size`` sets the map before the 4096-filter convolution (6x6 at 224, Larq Zoo's
    network); smaller inputs shrink that kernel to the map, larger ones average-pool its output.

    Counts (224x224): 58,236,928 binary weights.
    """

    def qconv(cin, cout, k, padding="same"):
        return QuantConv2d(
            cin,
            cout,
            k,
            padding=padding,
            bias=False,
            input_quantizer=input_quantizer,
            kernel_quantizer=XnorWeightScale(),
            kernel_constraint=kernel_constraint,
        )

    size = pooled_size(pooled_size(pooled_size(-(-image_size // 4))))
    if size < 1:
        raise ValueError(f"xnornet needs image_size >= 57 (the map vanishes), got {image_size}")
    layers = [
        QuantConv2d(in_channels, 96, 11, 4, padding="same", bias=False),
        keras_bn(96, 0.9, eps=1e-5, scale=False),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        keras_bn(96, 0.9, eps=1e-4, scale=False),
        qconv(96, 256, 5),
        nn.MaxPool2d(3, 2),
        keras_bn(256, 0.9, eps=1e-4, scale=False),
        qconv(256, 384, 3),
        keras_bn(384, 0.9, eps=1e-4, scale=False),
        qconv(384, 384, 3),
        keras_bn(384, 0.9, eps=1e-4, scale=False),
        qconv(384, 256, 3),
        nn.MaxPool2d(3, 2),
        keras_bn(256, 0.9, eps=1e-4, scale=False),
        qconv(256, 4096, min(size, 6), padding=0),
        keras_bn(4096, 0.9, eps=1e-4, scale=False),
        qconv(4096, 4096, 1, padding=0),
        keras_bn(4096, 0.9, eps=1e-3, scale=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1) if size > 6 else nn.Identity(),
        nn.Flatten(),
        nn.Linear(4096, num_classes, bias=False),
    ]
    model = glorot_init(nn.Sequential(*layers))
    init_kernel(layers[0])
    init_kernel(layers[-1])
    return model
