"""Process-group plumbing for ``torchrun --nproc_per_node=N -m onebit train <recipe>``.

With one process (no ``WORLD_SIZE`` > 1 in the environment) every helper here is a no-op, so the
training loop has a single code path. Under torchrun (one or several nodes):

- rank, local rank and world size come from the environment torchrun sets; the backend is NCCL on
  CUDA (each process on ``cuda:LOCAL_RANK``) and gloo on CPU;
- the batch of a recipe is the GLOBAL batch: each rank takes ``batch_size / world_size`` examples of
  every global batch (an indivisible batch is a ``ConfigError``), so a global batch holds the same
  examples whatever the number of processes;
- only rank 0 prints and writes files; every rank reads a checkpoint to resume;
- metrics are kept as tensors and summed across ranks when they are read (every N steps and at the
  end of an epoch), never per step;
- Bop needs no extra communication: after DDP's gradient all-reduce every rank sees the same
  gradients and flips the same weights, so flip counts are the same on every rank (rank 0's count
  is the global count). ``check_replicas`` verifies it every N steps with a checksum of the binary
  weights and stops the run with a clear error when they differ;
- ``sync_batchnorm``: torch's SyncBatchNorm on CUDA, an equivalent gloo implementation on CPU.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Dist",
    "setup",
    "shutdown",
    "local_batch",
    "all_reduce_sum",
    "any_rank",
    "broadcast_object",
    "default_threads",
    "weight_checksums",
    "check_replicas",
    "sync_buffers",
    "convert_sync_batchnorm",
    "describe",
]


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that prints and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(self.local_world_size, 1))


def default_threads() -> int:
    """CPU threads per process when ``threads=0``: the cores shared by the processes of this node."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 1
    return max(1, (os.cpu_count() or 1) // max(local, 1))


def setup(device: torch.device) -> Dist:
    """Join the torchrun process group if there is one (gloo on CPU, NCCL on CUDA).

    On CUDA each process uses ``cuda:LOCAL_RANK`` (returned as ``Dist.device``); with one process
    ``device`` is returned unchanged.
    """
    _check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
        atexit.register(_destroy)
    return Dist(rank, world, local, local_world, dist.get_backend(), device)


def _check_device(device: torch.device) -> None:
    """``ConfigError`` (one line) for a device this machine does not have."""
    from .config import ConfigError

    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and (count == 0 or (device.index or 0) >= count):
        raise ConfigError(f"device={str(device)!r}: this machine has {count} CUDA device(s); use device=auto or cpu")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device='mps': Apple's MPS is not available here; use device=auto or cpu")


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown() -> None:
    """After a successful run under torchrun: wait until every rank is done, then leave the
    process group. Without the wait, a rank that exits while another still finishes its run
    could abort at exit inside gloo ("terminate called without an active exception").
    Call it once no more collectives follow (the CLI does); a no-op without a process group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_batch(batch_size: int, d: Dist) -> int:
    """This rank's share of the global ``batch_size``; ``ConfigError`` when it does not divide."""
    if batch_size % d.world_size:
        from .config import ConfigError

        lower = batch_size - batch_size % d.world_size
        raise ConfigError(
            f"batch_size={batch_size} is the global batch and must divide by the {d.world_size} processes "
            f"(--nnodes x --nproc_per_node); use a multiple of {d.world_size}, e.g. {lower or d.world_size} "
            f"or {lower + d.world_size}"
        )
    return batch_size // d.world_size


def describe(batch_size: int, d: Dist) -> dict:
    """The ``[distributed]`` table of a run's config.toml."""
    return {
        "world_size": d.world_size,
        "nodes": d.nodes,
        "processes_per_node": d.local_world_size,
        "backend": d.backend or "none",
        "global_batch": batch_size,
        "batch_per_process": batch_size // d.world_size,
    }


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op with one process)."""
    if d.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, d: Dist) -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not d.enabled:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int64, device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj, d: Dist):
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=d.device if d.device.type == "cuda" else None)
    return box[0]


# ----------------------------------------------------------------------------- replica check

_HASH_MUL = 2654435761  # Knuth's multiplicative hash
_HASH_MOD = 2147483647


@torch.no_grad()
def weight_checksums(params) -> torch.Tensor:
    """One int64 per tensor: a position-weighted hash of its sign bits (``w < 0``), on the params'
    device. Two sign patterns that differ anywhere give different sums with overwhelming
    probability (a swap of two weights included); no host sync."""
    sums = []
    for p in params:
        bits = (p.detach().reshape(-1) < 0).to(torch.int64)
        weights = (torch.arange(1, bits.numel() + 1, device=bits.device, dtype=torch.int64) * _HASH_MUL) % _HASH_MOD
        sums.append((bits * weights).sum())
    if not sums:
        return torch.zeros(0, dtype=torch.int64)
    return torch.stack(sums)


def check_replicas(params, names, d: Dist, step: int) -> None:
    """Compare ``weight_checksums(params)`` across ranks (one small all-gather); raise
    ``RuntimeError`` naming the step, the ranks and the kernels when they differ. Every rank
    raises the same error, so no rank is left waiting in a collective."""
    if not d.enabled or not params:
        return
    local = weight_checksums(params).to(d.device)
    gathered = [torch.empty_like(local) for _ in range(d.world_size)]
    dist.all_gather(gathered, local)
    table = torch.stack(gathered).cpu()
    bad_ranks = [r for r in range(d.world_size) if not torch.equal(table[r], table[0])]
    if bad_ranks:
        kernels = sorted({names[i] for r in bad_ranks for i in torch.nonzero(table[r] != table[0]).flatten().tolist()})
        raise RuntimeError(
            f"binary weights diverged across processes at step {step}: rank(s) {', '.join(map(str, bad_ranks))} "
            f"differ from rank 0 in {', '.join(kernels)} (sign checksums "
            f"{[table[r].tolist() for r in [0] + bad_ranks]}). Under DDP every rank must flip the same weights; "
            "a difference means non-deterministic gradients or a rank that stepped differently"
        )


# ----------------------------------------------------------------------------- batch norm


def _bn_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def sync_buffers(model: nn.Module, d: Dist, average: bool) -> None:
    """Make batch-norm statistics the same on every rank before evaluating or saving:
    ``average`` the running means/variances over ranks (each rank saw its own share of the data),
    or take rank 0's (statistics already synchronized). Counters are always rank 0's."""
    if not d.enabled:
        return
    for m in _bn_modules(model):
        for buf in m.buffers(recurse=False):
            if buf is None:
                continue
            if average and buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(d.world_size)
            else:
                dist.broadcast(buf, src=0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the gradients (as torch's SyncBatchNorm)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU (gloo; torch's runs on GPUs only): batch statistics are summed over
    ranks with an autograd-aware all-reduce (float64 sums of x and x^2), so a 2-rank batch of
    B/2 + B/2 examples normalizes as one batch of B. Eval mode and one process: plain batch norm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() < 2:
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xd = x.double()
        count = torch.full((1,), x.numel() // c, dtype=torch.float64, device=x.device)
        total = _AllReduceSum.apply(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self._momentum()
                unbiased = (var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y

    def _momentum(self) -> float:
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked.item() if self.num_batches_tracked is not None else 1)
        return self.momentum


def convert_sync_batchnorm(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Every batch norm of ``module`` synchronized across processes: torch's SyncBatchNorm on CUDA,
    ``_GlooSyncBatchNorm`` on CPU; both share the parameters and buffers of the batch norms they
    replace (optimizers and checkpoints keep working; state-dict keys are unchanged)."""
    if device is not None and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out = _GlooSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child))
    return out
