"""Convolution and pooling geometry, the one definition shared by layers, kernels and the engine.

Pure Python: torch's output-size rule and TensorFlow's SAME padding rule.
"""

from __future__ import annotations

import math

__all__ = ["out_size", "same_padding"]


def out_size(size: int, k: int, stride: int, dilation: int, before: int, after: int, ceil_mode: bool = False) -> int:
    """Output length of a window op over ``size`` padded by (before, after), torch's rule."""
    span = size + before + after - dilation * (k - 1) - 1
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    n = -(-span // stride) + 1
    if (n - 1) * stride >= size + before:  # the last window must start inside the input or pad
        n -= 1
    return n


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) of one spatial dimension: the odd pixel after.

    total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0).
    """
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2
