"""The training step and the evaluation pass: the one place where forward, backward and the
optimizer step happen, so speed options (bf16 autocast, torch.compile) are added here only.

Precision: ``bf16`` runs forward (and so backward) under ``torch.autocast`` with bfloat16; the
weights, their gradients, Bop's moving average and every optimizer step stay float32 (autocast
casts copies of the weights inside the ops). Binary operands (+/-1) are exact in bf16 and its
matrix products accumulate in fp32; what rounds is the real-valued part (the first layer, batch
norm's input, the pre-activations whose sign is taken). ``auto`` takes bf16 only where it is
native: CUDA devices that support it, CPUs with AVX512-BF16 or AMX-BF16 (elsewhere torch emulates
bf16 on the CPU, many times slower than fp32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "autocast",
    "configure_device",
    "cpu_bf16_flags",
    "evaluate",
    "make_train_step",
    "reestimate_batchnorm",
    "resolve_precision",
    "to_device",
]

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's flags (``/proc/cpuinfo``) that make bf16 arithmetic native; empty elsewhere."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no way to tell, so fp32
            return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(fp32 or bf16, why) for the ``precision`` key on ``device``."""
    if precision != "auto":
        return precision, "set"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ("bf16", "auto: the GPU supports it") if ok else ("fp32", "auto: the GPU has no bf16")
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        return (
            ("bf16", f"auto: the CPU has {', '.join(flags)}") if flags else ("fp32", "auto: no native bf16 on this CPU")
        )
    return "fp32", f"auto: bf16 is not used on {device.type}"


def autocast(device: torch.device, precision: str):
    """The context that forward passes run under: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_device(device: torch.device) -> None:
    """Process-wide speed settings for ``device``: cuDNN picks the fastest convolution algorithms
    for the run's fixed input shapes (``cudnn.benchmark``)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
    precision: str = "fp32",
    device: str | torch.device | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``step(x, y) -> (loss, correct)``: zero grads, forward and cross-entropy on logits (under
    ``autocast`` for ``precision``), backward, optimizer step, schedulers step. Returns 0-dim
    tensors (detached; no host sync)."""
    device = torch.device(device) if device is not None else torch.device("cpu")

    def step(x: torch.Tensor, y: torch.Tensor):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        for s in schedulers:
            s.step()
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum()
        return loss.detach(), correct

    return step


def to_device(x: torch.Tensor, device, channels_last: bool = False) -> torch.Tensor:
    """Move a batch to ``device``; image batches in NHWC memory order when ``channels_last``."""
    if channels_last and x.dim() == 4:
        return x.to(device, memory_format=torch.channels_last, non_blocking=True)
    return x.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    channels_last: bool = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """Sums over ``loader`` in eval mode: tensor [loss_sum, correct, count] (float64, on device);
    forward passes in ``precision`` as training's."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
    model.train(was_training)
    return sums


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, loader, device, max_examples: int = -1, channels_last: bool = False, precision: str = "fp32"
) -> nn.Module:
    """Reset every batch norm's running statistics and re-estimate them as exact averages over
    ``loader`` (the first ``max_examples`` examples when >= 0; train-mode forward passes, no
    gradient, no parameter change); returns ``model`` in the mode it was in."""
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    seen = 0
    for x, _ in loader:
        if 0 <= max_examples <= seen:
            break
        with autocast(torch.device(device), precision):
            model(to_device(x, device, channels_last))
        seen += len(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)
    return model
