"""Building blocks shared by the zoo: Keras-faithful batch norm and initialisation."""

from __future__ import annotations

from torch import nn

from ..layers import QuantLayer

# Keras BatchNormalization defaults: momentum 0.99 (torch momentum = 1 - Keras momentum), eps 1e-3.
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3


def batch_norm(
    num_features: int,
    dims: int = 2,
    scale: bool = True,
    momentum: float = KERAS_BN_MOMENTUM,
    eps: float = KERAS_BN_EPS,
) -> nn.Module:
    """BatchNorm{1,2}d; ``scale=False`` drops gamma and keeps beta (Keras ``scale=False``)."""
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
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
