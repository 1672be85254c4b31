"""Batch norm + an activation quantizer folded into per-channel integer thresholds on a quantized
layer's integer dots.

A binary layer's dot ``d`` is an integer in [-k, k] (a layer with n-level DoReFa inputs sums
levels 0..n against its +/-1 kernel: k is n times its fan-in). Whatever follows it before the next
quantizer (the kernel scale ``alpha``, divided by n for DoReFa inputs, ``bias``, batch norm) is a
per-channel function f, and the next quantizer turns f(d) into an integer level: sign() gives
the level 1 where f(d) >= 0 and 0 below (its bit is ``level < 1``), DoReFa's k-bit activations
the level round(clip(f(d), 0, 1) n). ``level_thresholds`` evaluates f and the quantizer with the
torch ops themselves on every reachable integer, so the folded rule ``level = #{j : sgn * d >=
thr_j}`` gives torch's level exactly, ties included (sign(0) = +1, DoReFa's round half to even),
as do negative batch-norm scales. The packed engine, the ONNX exporter and the LCE exporter use it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.bits import EngineError

__all__ = ["level_thresholds", "sign_thresholds", "sign_level"]


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


def sign_level(v: torch.Tensor) -> torch.Tensor:
    """sign()'s level of ``v``: 1 where sign(v) = +1 (v >= 0, sign(0) = +1), 0 where it is -1."""
    return (v >= 0).to(torch.int64)


def level_thresholds(
    name: str, k: int, channels: int, levels: int, level_of, alpha=None, bias=None, bn=None, rank=None
):
    """Per output channel ``(sgn, thr, increasing)``, ``thr`` of shape (channels, levels): the
    quantizer's level is ``#{j : sgn * d >= thr[:, j]}`` for every integer dot d in [-k, k] of
    the layer named ``name``, where the value before the quantizer is ``bn(d * alpha + bias)``
    (each part optional; ``alpha``, ``bias`` numpy (channels,), ``bn`` an eval-mode batch norm on
    tensors of ``rank`` dims: 2 or 4, by default 4 for a ``BatchNorm2d``) and ``level_of`` maps
    those float32 values to integer levels 0..``levels`` as the quantizer does. ``increasing``
    marks channels where f increases.

    ``EngineError`` when the level is not monotone in d (then no threshold exists)."""
    alpha = torch.from_numpy(np.asarray(alpha, np.float32)) if alpha is not None else None
    bias = torch.from_numpy(np.asarray(bias, np.float32)) if bias is not None else None
    sgn = np.ones(channels, np.int64)
    thr = np.zeros((channels, levels), np.int64)
    increasing = np.ones(channels, bool)
    rank = rank if rank is not None else 4 if isinstance(bn, nn.BatchNorm2d) else 2
    step = max(1, (1 << 23) // (2 * k + 1))
    d = torch.arange(-k, k + 1, dtype=torch.float32)
    for c0 in range(0, channels, step):
        c1 = min(channels, c0 + step)
        with torch.no_grad():
            lv = level_of(_apply(d[:, None].expand(-1, c1 - c0).clone(), alpha, bias, bn, c0, c1, rank)).numpy()
        steps = np.diff(lv, axis=0)
        up = (steps >= 0).all(axis=0)  # levels rise with d: below level j is a prefix
        down = (steps <= 0).all(axis=0)  # levels fall with d: below level j is a suffix
        if not (up | down).all():
            bad = int(np.argmin(up | down)) + c0
            raise EngineError(
                f"layer {name!r}: batch norm of channel {bad} is not monotone in the "
                f"dot product; cannot fold it into a threshold"
            )
        # below[c, j - 1]: how many of the 2k + 1 dots have a level < j (a histogram's cumsum)
        flat = np.clip(lv, 0, levels) + (levels + 1) * np.arange(c1 - c0)
        hist = np.bincount(flat.reshape(-1), minlength=(levels + 1) * (c1 - c0)).reshape(c1 - c0, levels + 1)
        below = np.cumsum(hist, axis=1)[:, :levels]
        # up:   level >= j  <=>  d >= -k + below     (below 0: always, 2k+1: never)
        # down: level >= j  <=>  d <= k - below  <=>  -d >= below - k
        sgn[c0:c1] = np.where(up, 1, -1)
        thr[c0:c1] = np.where(up[:, None], -k + below, below - k)
        increasing[c0:c1] = up
    return sgn, thr, increasing


def sign_thresholds(name: str, k: int, channels: int, alpha=None, bias=None, bn=None, rank=None):
    """Per output channel ``(sgn, thr, increasing)`` of a sign after the dot: sign bit = 1 (-1)
    iff ``sgn * d < thr`` for every integer dot d in [-k, k]; ``level_thresholds`` with sign()'s
    levels (the bit is level 0)."""
    sgn, thr, increasing = level_thresholds(name, k, channels, 1, sign_level, alpha, bias, bn, rank)
    return sgn, thr[:, 0], increasing
