"""A deterministic, resumable, DDP-ready batch loader over an in-memory or image-folder data set.

The order of epoch e is a permutation drawn from a generator seeded by (seed, e); the
augmentation of batch b by one seeded by (seed, e, b, rank). Nothing random depends on what ran
before, so resuming at any batch of any epoch reproduces the same data bit for bit, and the
"data-order generator state" of a checkpoint is just (seed, epoch, batch).

``batch_size`` is the GLOBAL batch: with ``world_size`` ranks each takes its 1/world_size slice
of every global batch (``set_epoch`` as DistributedSampler). Training drops the last partial batch
(Keras ``steps_per_epoch = N // batch``, as the paper's code); evaluation keeps every example,
rank r taking examples r, r + world_size, ...

Worker processes (``num_workers`` > 0, for data sets that decode files): a
``torch.utils.data.DataLoader`` whose workers each build whole batches. A worker is handed the key
(epoch, batch) and computes that batch from the key alone, exactly as the training process would,
so the data are the same bit for bit whatever the number of workers, and a resumed epoch goes on
with the batch it stopped at. Workers persist across epochs, prefetch, and (on CUDA) hand over
batches in pinned memory for non-blocking copies.

Such data sets hand over uint8 images (``read_images``), a quarter of the bytes of float ones;
the training process turns them into floats (``normalise``), on ``device`` when one is given
(after a non-blocking copy of the uint8 batch), so workers or not, the floats are the same.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset

from .datasets import DataError

__all__ = ["Loader", "default_workers"]

_MIX = 1_000_003
MAX_AUTO_WORKERS = 8


def _seed(*parts: int) -> int:
    value = 0
    for p in parts:
        value = (value * _MIX + int(p)) % (2**62)
    return value


def default_workers(processes_per_machine: int = 1) -> int:
    """Worker processes per training process when ``num_workers`` is auto: this process's share of
    the cores it may run on (at least 1, at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, processes_per_machine)))


def _fetch(dataset, chunk: torch.Tensor, train: bool, generator):
    """(x, y, problems) of one batch: data sets that decode files give uint8 images (``read_images``,
    normalised later) and report the images they could not decode (and what stood in for them)
    instead of stopping; in-memory ones give float batches and have no problems."""
    read = getattr(dataset, "read_images", None)
    if read is not None:
        return read(chunk, train=train, generator=generator)
    x, y = dataset.get(chunk, train=train, generator=generator)
    return x, y, ()


class _Plan:
    """Which examples batch b of epoch e holds on this rank, and the generator of its augmentation:
    a pure function of the key, shared by the training process and the workers (picklable)."""

    def __init__(self, n: int, batch_size: int, train: bool, seed: int, rank: int, world_size: int):
        self.n, self.batch_size, self.train = n, batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._cached = (None, None)  # (epoch, indices): a worker draws each epoch's order once

    def __len__(self) -> int:
        return self.n // self.batch_size if self.train else -(-self.n // self.batch_size)

    @property
    def local(self) -> int:
        return self.batch_size // self.world_size if self.train else self.batch_size

    def indices(self, epoch: int) -> torch.Tensor:
        if not self.train:
            return torch.arange(self.rank, self.n, self.world_size)
        if self._cached[0] != epoch:
            g = torch.Generator().manual_seed(_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=g)[: len(self) * self.batch_size]
            local = self.batch_size // self.world_size
            self._cached = (epoch, order.view(len(self), self.world_size, local)[:, self.rank].reshape(-1))
        return self._cached[1]

    def chunk(self, epoch: int, b: int) -> torch.Tensor:
        return self.indices(epoch)[b * self.local : (b + 1) * self.local]

    def generator(self, epoch: int, b: int):
        return torch.Generator().manual_seed(_seed(self.seed, epoch, b, self.rank)) if self.train else None


class _Batches(torch.utils.data.Dataset):
    """What a worker process runs: the batch of a key (epoch, batch number)."""

    def __init__(self, dataset, plan: _Plan):
        self.dataset, self.plan = dataset, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, key):
        epoch, b = key
        return _fetch(self.dataset, self.plan.chunk(epoch, b), self.plan.train, self.plan.generator(epoch, b))


class _Keys(torch.utils.data.Sampler):
    """The keys the training process hands to the workers: (epoch, b) for the batches asked for
    (read when an iteration starts, so persistent workers serve every epoch)."""

    def __init__(self):
        self.epoch, self.batches = 0, range(0)

    def __iter__(self):
        return iter([(self.epoch, b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


class Loader:
    """Iterate ``(x, y)`` float batches of ``dataset`` (anything with ``__len__`` and ``get``).

    ``num_workers`` > 0: decode in that many worker processes (only data sets with
    ``decodes_files`` use them; in-memory batches are cheaper in the training process).
    ``pin_memory``: workers' batches in pinned memory (for non-blocking copies to CUDA).
    ``device``: where data sets that decode files turn their uint8 images into normalised floats
    (default: here, on the CPU); the batches ``x`` are then on that device.
    ``report(text)``: told once per file about images that could not be decoded (default: a
    warning); a damaged image never stops an epoch, it is replaced as ``read_images`` says.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        report: Callable[[str], object] | None = None,
    ) -> None:
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
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise DataError(f"num_workers={num_workers!r} must be an int >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.num_workers = num_workers if getattr(dataset, "decodes_files", False) else 0
        self.pin_memory = pin_memory
        self.device = device
        self.report = report if report is not None else (lambda text: warnings.warn(text, stacklevel=2))
        self.reported: set[str] = set()
        self._plan = _Plan(len(dataset), batch_size, train, seed, rank, world_size)
        self._workers = None  # the DataLoader, made on first use

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and augmentation) the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._plan)

    def indices(self) -> torch.Tensor:
        """This rank's example indices for the current epoch, in order."""
        return self._plan.indices(self.epoch)

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of the current epoch from batch number ``start`` on (up to ``stop``)."""
        stop = len(self) if stop is None else min(stop, len(self))
        todo = [b for b in range(start, stop) if len(self._plan.chunk(self.epoch, b))]
        if self.num_workers:
            source = self._from_workers(todo)
        else:
            source = (self._batch(b) for b in todo)
        for x, y, problems in source:
            self._report(problems)
            yield self._floats(x), y

    def _floats(self, x: torch.Tensor) -> torch.Tensor:
        """The float batch: uint8 images normalised (on ``device`` when set), others as they are."""
        if not hasattr(self.dataset, "read_images"):
            return x
        if self.device is not None:
            x = x.to(self.device, non_blocking=True)
        return self.dataset.normalise(x)

    def _batch(self, b: int):
        plan = self._plan
        return _fetch(self.dataset, plan.chunk(self.epoch, b), self.train, plan.generator(self.epoch, b))

    def _from_workers(self, todo: list[int]):
        if self._workers is None:
            self._keys = _Keys()
            self._workers = torch.utils.data.DataLoader(
                _Batches(self.dataset, self._plan),
                batch_size=None,
                sampler=self._keys,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=True,
                prefetch_factor=2,
            )
        self._keys.epoch, self._keys.batches = self.epoch, todo
        return iter(self._workers)

    def _report(self, problems) -> None:
        for path, text in problems:
            if str(path) not in self.reported:
                self.reported.add(str(path))
                self.report(text)

    def close(self) -> None:
        """Stop the worker processes (they are started again when needed)."""
        self._workers = None

    def __iter__(self):
        return self.batches()
