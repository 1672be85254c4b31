"""Flip metrics: how many binary weights change sign per step, for any optimizer.

The paper and its reproduction plot the log flip ratio pi_t = ln(flips_t / n + 1e-9) per step.
``FlipCounter`` measures it for Bop and for latent-weight training alike (a latent weight "flips"
when sign(w) changes, sign(0) = +1), per parameter and in total, keeping one byte per weight and
returning tensors so that a training loop reads them on the host only when it logs.
``FlipRatio`` is Larq's metric of the same name (mean fraction of changed values between calls).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ["FlipCounter", "FlipRatio", "log_flip_ratio"]

LOG_EPS = 1e-9


def log_flip_ratio(flips: int | float | torch.Tensor, n: int) -> float | torch.Tensor:
    """pi = ln(flips / n + 1e-9) for a count (int, float or tensor) out of ``n`` weights."""
    if isinstance(flips, torch.Tensor):
        return torch.log(flips.double() / n + LOG_EPS)
    return math.log(flips / n + LOG_EPS)


class FlipCounter:
    """Count sign flips of tracked weights between successive ``update()`` calls.

    Args:
        params: tensors or (name, tensor) pairs, e.g. ``model.named_parameters()`` filtered to the
            binary kernels; unnamed tensors are named "0", "1", ...

    The signs are snapshot when the counter is built; each ``update()`` returns ``{name: flips}``
    (0-dim int64 tensors) since the previous snapshot and sets ``total``, so the first call
    reports the flips of the first step (build the counter before training, or after loading a
    checkpoint). ``attach(optimizer)`` calls ``update`` after every optimizer step.
    """

    def __init__(self, params: Iterable[torch.Tensor | tuple[str, torch.Tensor]]):
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) else (str(i), item)
            self.names.append(name)
            self.params.append(p)
        if not self.params:
            raise ValueError("FlipCounter got no parameters to track (params=[])")
        self.sizes = [p.numel() for p in self.params]
        self.numel = sum(self.sizes)
        self._previous = [self._negative(p) for p in self.params]
        self.flips: dict[str, torch.Tensor] = {}
        self.total: torch.Tensor = torch.zeros((), dtype=torch.int64)

    @staticmethod
    @torch.no_grad()
    def _negative(p: torch.Tensor) -> torch.Tensor:
        return p.detach() < 0

    @torch.no_grad()
    def update(self) -> dict[str, torch.Tensor]:
        """Flips per tracked parameter since the previous update (or construction); sets ``total``."""
        flips = {}
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            now = self._negative(p)
            flips[name] = (now != self._previous[i]).sum()
            self._previous[i] = now
        self.flips = flips
        self.total = torch.stack(list(flips.values())).sum()
        return flips

    def ratio(self) -> torch.Tensor:
        """Fraction of tracked weights that flipped at the last update (a tensor)."""
        return self.total.double() / self.numel

    def log_ratio(self) -> torch.Tensor:
        """pi = ln(flips / n + 1e-9) of the last update, in total."""
        return log_flip_ratio(self.total, self.numel)

    def log_ratios(self) -> dict[str, torch.Tensor]:
        """pi per tracked parameter for the last update."""
        return {n: log_flip_ratio(self.flips[n], s) for n, s in zip(self.names, self.sizes) if n in self.flips}

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Update after each step of ``optimizer``; returns the hook handle (``.remove()``)."""
        return optimizer.register_step_post_hook(lambda *_: self.update())


class FlipRatio:
    """Larq's ``FlipRatio`` metric: the mean fraction of values that changed between updates.

    Each ``update(v)`` after the first adds 1 - (#equal to the previous value) / size; ``result()``
    is the mean over updates (0 until two updates). ``reset()`` keeps the previous values.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.total = 0.0
        self.count = 0

    @torch.no_grad()
    def update(self, values: torch.Tensor) -> None:
        values = values.detach().clone()
        if self.previous is not None and self.previous.shape != values.shape:
            raise ValueError(f"FlipRatio tracks shape {tuple(self.previous.shape)}, got {tuple(values.shape)}")
        if self.previous is not None and self.count > 0:
            self.total += 1.0 - (values == self.previous).sum().item() / values.numel()
        self.count += 1
        self.previous = values

    def result(self) -> float:
        """The mean fraction of changed values per update (0 until two updates)."""
        return self.total / (self.count - 1) if self.count > 1 else 0.0

    def reset(self) -> None:
        """Start a new mean (the previous values are kept)."""
        self.total = 0.0
        self.count = 0
