"""Building blocks shared by the zoo: Keras-faithful batch norm and initialisation."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import Pool2dSame, QuantLayer

# Keras BatchNormalization defaults: momentum 0.99 (torch momentum = 1 - Keras momentum), eps 1e-3.
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3


def batch_norm(
    num_features: int,
    dims: int = 2,
    scale: bool = True,
    momentum: float = KERAS_BN_MOMENTUM,
    eps: float = KERAS_BN_EPS,
    center: bool = True,
) -> nn.Module:
    """BatchNorm{1,2}d; ``scale=False`` drops gamma and keeps beta (Keras ``scale=False``);
    ``center=False, scale=False`` keeps neither (``affine=False``)."""
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
    if not center and not scale:
        return cls(num_features, eps=eps, momentum=momentum, affine=False)
    if not center:
        raise ValueError("batch_norm(center=False) is only supported together with scale=False")
    bn = cls(num_features, eps=eps, momentum=momentum)
    if not scale:
        del bn.weight
        bn.register_parameter("weight", None)
    return bn


def glorot_init(model: nn.Module) -> nn.Module:
    """Keras' default kernel init (glorot uniform) for every quantized layer; biases to zero."""
    for m in model.modules():
        if isinstance(m, QuantLayer):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


# Keras' truncated normal draws from N(0, s) cut at 2 s; this factor restores the variance.
_TRUNCATED_STD = 0.87962566103423978


@torch.no_grad()
def _truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """N(0, std) cut at +/-2 std by inverse-CDF sampling (one pass; torch's rejection sampler
    is seconds slower on the zoo's large kernels)."""
    edge = math.erf(2.0 / math.sqrt(2.0))  # 2 * Phi(2) - 1
    tensor.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2.0))
    return tensor.clamp_(-2 * std, 2 * std)


def init_kernel(module: nn.Module, scheme: str = "glorot_uniform") -> nn.Module:
    """Initialise ``module.weight`` with a Keras initialiser and zero its bias.

    ``scheme``: "glorot_uniform" (Keras' default), "glorot_normal" or "he_normal" (truncated
    normals with Keras' standard deviations). Fans follow PyTorch's weight layout.
    """
    weight = module.weight
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    if scheme == "glorot_uniform":
        nn.init.xavier_uniform_(weight)
    elif scheme in ("glorot_normal", "he_normal"):
        var = 2.0 / (fan_in + fan_out) if scheme == "glorot_normal" else 2.0 / fan_in
        _truncated_normal_(weight, math.sqrt(var) / _TRUNCATED_STD)
    else:
        raise ValueError(f"unknown initialiser {scheme!r}; use 'glorot_uniform', 'glorot_normal' or 'he_normal'")
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def keras_bn(num_features: int, momentum: float = 0.99, eps: float = KERAS_BN_EPS, **kw) -> nn.Module:
    """``batch_norm`` taking the *Keras* momentum (0.99, 0.9, 0.8), converted to torch's."""
    return batch_norm(num_features, momentum=round(1.0 - momentum, 10), eps=eps, **kw)


def global_pool_head(features: int, num_classes: int, init: str = "glorot_uniform") -> nn.Sequential:
    """Global average pool, flatten and a real-valued dense classifier with bias (logits)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), init_kernel(nn.Linear(features, num_classes), init))


def downsample_shortcut(
    in_channels: int, out_channels: int, momentum: float, eps: float = KERAS_BN_EPS
) -> nn.Sequential:
    """The real-valued shortcut of Bi-Real / ResNet-E / Real-to-Binary blocks where the channels
    double: 2x2/2 average pool ("same"), 1x1 convolution (glorot normal) and batch norm
    (``momentum`` in Keras' convention)."""
    return nn.Sequential(
        Pool2dSame("avg", 2, 2),
        init_kernel(nn.Conv2d(in_channels, out_channels, 1, bias=False), "glorot_normal"),
        keras_bn(out_channels, momentum, eps=eps),
    )


def pooled_size(size: int, kernel_size: int = 3, stride: int = 2) -> int:
    """Output size of a "valid" pooling window."""
    return (size - kernel_size) // stride + 1
