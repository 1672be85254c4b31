"""A deterministic, resumable, DDP-ready batch loader over an in-memory or image-folder data set.

The order of epoch e is a permutation drawn from a generator seeded by (seed, e); the
augmentation of batch b by one seeded by (seed, e, b, rank). Nothing random depends on what ran
before, so resuming at any batch of any epoch reproduces the same data bit for bit, and the
"data-order generator state" of a checkpoint is just (seed, epoch, batch).

``batch_size`` is the GLOBAL batch: with ``world_size`` ranks each takes its 1/world_size slice
of every global batch (``set_epoch`` as DistributedSampler). Training drops the last partial batch
(Keras ``steps_per_epoch = N // batch``, as the paper's code); evaluation keeps every example,
rank r taking examples r, r + world_size, ...
"""

from __future__ import annotations

import torch

from .datasets import DataError

__all__ = ["Loader"]

_MIX = 1_000_003


def _seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * _MIX + int(p)) % (2**62)
    return value


class Loader:
    """Iterate ``(x, y)`` float batches of ``dataset`` (anything with ``__len__`` and ``get``)."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size={batch_size!r} must be an int >= 1")
        if train and batch_size % world_size:
            raise DataError(f"global batch_size={batch_size} must divide by the number of processes ({world_size})")
        if train and len(dataset) < batch_size:
            raise DataError(
                f"batch_size={batch_size} is larger than the training set ({len(dataset)} examples): "
                f"use batch_size={len(dataset)} or less, or more training data"
                if len(dataset)
                else "the training set is empty (0 examples)"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and augmentation) the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's example indices for the current epoch, in order."""
        n = len(self.dataset)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=g)[: len(self) * self.batch_size]
        local = self.batch_size // self.world_size
        return order.view(len(self), self.world_size, local)[:, self.rank].reshape(-1)

    def batches(self, start: int = 0):
        """Yield the batches of the current epoch from batch number ``start`` on."""
        idx = self.indices()
        local = self.batch_size // self.world_size if self.train else self.batch_size
        for b in range(start, len(self)):
            chunk = idx[b * local : (b + 1) * local]
            if len(chunk) == 0:
                continue
            g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, b, self.rank)) if self.train else None
            yield self.dataset.get(chunk, train=self.train, generator=g)

    def __iter__(self):
        return self.batches()
