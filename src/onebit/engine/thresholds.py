"""Batch norm + sign folded into per-channel integer thresholds on a binary layer's dots.

A binary layer's dot ``d`` is an integer in [-k, k]. Whatever follows it before the next sign
(kernel scale ``alpha``, ``bias``, batch norm) is a per-channel function f, and the sign bit is
``f(d) < 0``. ``sign_thresholds`` evaluates f with the torch ops themselves on every reachable
integer, so the folded rule ``bit = sgn * d < thr`` gives torch's sign() exactly, ties at f(d) = 0
(sign(0) = +1) and negative batch-norm scales included. The packed engine and the ONNX exporter
both use it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.bits import EngineError

__all__ = ["sign_thresholds"]


def _apply(v, alpha, bias, bn, c0, c1, rank):
    """f on the dot values ``v`` (dots, c1 - c0) of channels c0..c1, computed as torch would
    (batch norm with its own eval-mode kernel on those channels' parameters and statistics)."""
    if alpha is not None:
        v = v * alpha[c0:c1]
    if bias is not None:
        v = v + bias[c0:c1]
    if bn is None:
        return v
    if bn.running_mean is None:
        raise EngineError("batch norm without running statistics (track_running_stats=False)")

    def part(t):
        return None if t is None else t.detach()[c0:c1]

    x = v[:, :, None, None] if rank == 4 else v  # the rank the model's batch norm sees
    y = F.batch_norm(x, part(bn.running_mean), part(bn.running_var), part(bn.weight), part(bn.bias), False, 0.0, bn.eps)
    return y.reshape(v.shape)


def sign_thresholds(name: str, k: int, channels: int, alpha=None, bias=None, bn=None, rank=None):
    """Per output channel ``(sgn, thr, increasing)``: sign bit = 1 iff ``sgn * d < thr`` for every
    integer dot d in [-k, k] of the layer named ``name``, where the value before the sign is
    ``bn(d * alpha + bias)`` (each part optional; ``alpha``, ``bias`` numpy (channels,), ``bn`` an
    eval-mode batch norm on tensors of ``rank`` dims: 2 or 4, by default 4 for a ``BatchNorm2d``).
    ``increasing`` marks channels where f increases.

    ``EngineError`` when f is not monotone in d (then no threshold exists)."""
    alpha = torch.from_numpy(np.asarray(alpha, np.float32)) if alpha is not None else None
    bias = torch.from_numpy(np.asarray(bias, np.float32)) if bias is not None else None
    sgn = np.ones(channels, np.int64)
    thr = np.zeros(channels, np.int64)
    increasing = np.ones(channels, bool)
    rank = rank if rank is not None else 4 if isinstance(bn, nn.BatchNorm2d) else 2
    step = max(1, (1 << 23) // (2 * k + 1))
    d = torch.arange(-k, k + 1, dtype=torch.float32)
    for c0 in range(0, channels, step):
        c1 = min(channels, c0 + step)
        with torch.no_grad():
            v = _apply(d[:, None].expand(-1, c1 - c0).clone(), alpha, bias, bn, c0, c1, rank)
        neg = (v < 0).numpy()  # (2k+1, channels)
        count = neg.sum(axis=0)
        steps = np.diff(neg.astype(np.int8), axis=0)
        down = (steps <= 0).all(axis=0)  # negatives form a prefix: f increasing in d
        up = (steps >= 0).all(axis=0)  # negatives form a suffix: f decreasing in d
        if not (down | up).all():
            bad = int(np.argmin(down | up)) + c0
            raise EngineError(
                f"layer {name!r}: batch norm of channel {bad} is not monotone in the "
                f"dot product; cannot fold it into a threshold"
            )
        # down: bit = d < -k + count (count 0: never, 2k+1: always)
        # up:   bit = d > k - count  <=>  -d < count - k
        sgn[c0:c1] = np.where(down, 1, -1)
        thr[c0:c1] = np.where(down, -k + count, count - k)
        increasing[c0:c1] = down
    return sgn, thr, increasing
