"""Batched augmentation on tensors (no torchvision): every op takes a whole (N, C, H, W) batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pad_crop_flip", "random_crop", "random_flip", "scale_to_unit"]


def scale_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (x / 127.5 - 1, the paper's CIFAR-10 scaling)."""
    return x.float().div_(127.5).sub_(1.0)


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """An independent random ``size`` x ``size`` crop of every image in the batch."""
    n, c, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    steps = torch.arange(size)
    rows = (top[:, None] + steps)[:, None, :, None]  # (N, 1, size, 1)
    cols = (left[:, None] + steps)[:, None, None, :]  # (N, 1, 1, size)
    return x[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def pad_crop_flip(
    x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None, flip: bool = True
) -> torch.Tensor:
    """The paper's CIFAR-10 augmentation: zero-pad by ``pad``, random crop back, random flip
    (``flip=False``: random shifts only)."""
    size = x.shape[-1]
    x = random_crop(F.pad(x, (pad, pad, pad, pad)), size, generator)
    return random_flip(x, generator) if flip else x
