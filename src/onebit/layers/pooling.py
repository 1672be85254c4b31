"""Pooling with TensorFlow's SAME padding (the zoo's Keras-faithful pooling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.geometry import same_padding

__all__ = ["Pool2dSame"]


class Pool2dSame(nn.Module):
    """Max or average pooling with TensorFlow's ``padding="same"``: output = ceil(input / stride),
    the odd padded pixel at the end; max pools pad with -inf and average pools ignore padding
    (Keras semantics, which torch's symmetric ``padding=`` cannot express)."""

    def __init__(self, kind: str, kernel_size: int, stride: int):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"pool kind={kind!r} must be 'max' or 'avg'")
        self.kind, self.kernel_size, self.stride = kind, kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = [same_padding(n, self.kernel_size, self.stride, 1) for n in x.shape[2:]]
        flat = [p for before_after in reversed(pads) for p in before_after]
        if self.kind == "max":
            x = F.pad(x, flat, value=float("-inf")) if any(flat) else x
            return F.max_pool2d(x, self.kernel_size, self.stride)
        if not any(flat):
            return F.avg_pool2d(x, self.kernel_size, self.stride)
        ones = torch.ones_like(x[:1, :1])
        total = F.avg_pool2d(F.pad(x, flat), self.kernel_size, self.stride)
        share = F.avg_pool2d(F.pad(ones, flat), self.kernel_size, self.stride)
        return total / share

    def extra_repr(self) -> str:
        return f"{self.kind}, kernel_size={self.kernel_size}, stride={self.stride}, padding=same"
