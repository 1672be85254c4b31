"""Process-group plumbing for ``torchrun --nproc_per_node=N -m onebit train <recipe>``.

With one process (no ``WORLD_SIZE`` > 1 in the environment) every helper here is a no-op, so the
training loop has a single code path. Under torchrun: rank/world size come from the environment,
the batch of a recipe is the global batch (each rank takes its slice), only rank 0 writes files,
and metrics are kept as tensors and summed across ranks when they are read (every N steps and at
the end of an epoch), never per step. Bop needs no extra sync: after DDP's gradient all-reduce
every rank sees the same gradients and flips the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Dist", "setup", "all_reduce_sum"]


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> Dist:
    """Join the torchrun process group if there is one (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local)


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op with one process)."""
    if d.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
