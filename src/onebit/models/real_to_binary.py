"""Real-to-Binary Net (Martinez et al., 2020), the BNN of Larq Zoo's ``RealToBinaryNet``."""

from __future__ import annotations

from torch import nn

from ..layers import QuantConv2d
from .common import Pool2dSame, downsample_shortcut, global_pool_head, init_kernel, keras_bn
from .registry import register_model


class HalfBlock(nn.Module):
    """Half of a real-to-binary block: ``prelu(binary_conv3x3(bn(x)) * scale(bn(x))) + shortcut``.

    ``scale`` is the data-dependent gating of the paper (sec. 4.3): global average pool of the
    convolution's input, dense to in/8 with relu, dense to out with sigmoid, one factor per output
    channel. The shortcut is the identity or, when the channels double, a real 2x2 average pool,
    1x1 convolution and batch norm.
    """

    def __init__(self, in_channels: int, out_channels: int, quant: dict, scaling_r: int = 8, momentum: float = 0.99):
        super().__init__()
        stride = 1 if in_channels == out_channels else 2
        self.bn = keras_bn(in_channels, momentum)
        self.conv = init_kernel(
            QuantConv2d(in_channels, out_channels, 3, stride, padding="same", bias=False, **quant),
            "glorot_normal",
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            init_kernel(nn.Linear(in_channels, in_channels // scaling_r, bias=False), "he_normal"),
            nn.ReLU(),
            init_kernel(nn.Linear(in_channels // scaling_r, out_channels, bias=False), "he_normal"),
            nn.Sigmoid(),
        )
        self.act = nn.PReLU(out_channels, init=0.0)  # Keras PReLU starts at alpha = 0
        self.shortcut = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = downsample_shortcut(in_channels, out_channels, momentum)

    def forward(self, x):
        y = self.bn(x)
        scale = self.scale(y)[:, :, None, None]
        return self.act(self.conv(y) * scale) + self.shortcut(x)


@register_model
def real_to_binary_net(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
) -> nn.Module:
    """Real-to-Binary Net: Martinez et al., "Training Binary Neural Networks with Real-to-Binary
    Convolutions", ICLR 2020.

    Real 7x7/2 stem with batch norm, PReLU and 3x3/2 max pool; 8 blocks of two binary half blocks
    (ste_sign inputs and kernels) with 64/64/128/128/256/256/512/512 channels, each half block
    gated by a data-dependent per-channel scale and followed by PReLU and a shortcut; global pool
    and dense classifier. Batch norm momentum 0.99 (Keras default). Larq Zoo (the BNN trained by
    multi-stage distillation): 65.01% top-1 / 85.72% top-5 on ImageNet (224x224), 11,995,624
    Keras parameters, 5.13 MB.

    Counts (224x224): 10,985,472 binary weights, 1,676,279,808 binary MACs.
    """
    quant = dict(
        input_quantizer=input_quantizer,
        kernel_quantizer=kernel_quantizer,
        kernel_constraint=kernel_constraint,
    )
    layers = [
        init_kernel(QuantConv2d(in_channels, 64, 7, 2, padding="same", bias=False), "glorot_normal"),
        keras_bn(64, 0.99),
        nn.PReLU(64, init=0.0),
        Pool2dSame("max", 3, 2),
    ]
    channels = 64
    for block in range(2, 10):
        out = channels * 2 if block % 2 == 0 and block > 3 else channels
        layers += [HalfBlock(channels, out, quant), HalfBlock(out, out, quant)]
        channels = out
    layers.append(global_pool_head(channels, num_classes))
    return nn.Sequential(*layers)
