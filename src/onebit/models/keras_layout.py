"""Keras' tensor layouts in onebit's: the one place where channels-last becomes channels-first.

A Keras tensor (N, H, W, C) is onebit's (N, C, H, W); kernels follow (HWIO -> OIHW, depthwise
HWCM -> (C*M)1HW, dense (in, out) -> (out, in)) and a Keras axis maps to a torch dim.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["torch_conv_weight", "torch_dense_weight", "torch_depthwise_weight", "torch_dim"]


def torch_conv_weight(kernel: np.ndarray) -> torch.Tensor:
    """Keras conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1))))


def torch_depthwise_weight(kernel: np.ndarray) -> torch.Tensor:
    """Keras depthwise kernel (kh, kw, C, M) -> torch (C*M, 1, kh, kw); channel c*M + m, as TF."""
    kh, kw, c, m = kernel.shape
    return torch.from_numpy(np.ascontiguousarray(kernel.reshape(kh, kw, c * m).transpose(2, 0, 1)[:, None]))


def torch_dense_weight(kernel: np.ndarray) -> torch.Tensor:
    """Keras dense kernel (in, out) -> torch (out, in)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.T))


def torch_dim(keras_axis: int, rank: int) -> int:
    """The channels-first dim of Keras' channels-last ``keras_axis`` in a tensor of ``rank`` dims."""
    axis = keras_axis % rank
    if axis == rank - 1:
        return 1
    return axis + 1 if axis >= 1 else 0
