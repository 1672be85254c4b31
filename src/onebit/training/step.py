"""The training step and the evaluation pass: the one place where forward, backward and the
optimizer step happen, so speed options (bf16 autocast, torch.compile) are added here only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["make_train_step", "evaluate", "reestimate_batchnorm", "to_device"]


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, schedulers=()):
    """``step(x, y) -> (loss, correct)``: zero grads, forward, cross-entropy on logits, backward,
    optimizer step, schedulers step. Returns 0-dim tensors (detached; no host sync)."""

    def step(x: torch.Tensor, y: torch.Tensor):
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
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
def evaluate(model: nn.Module, loader, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Sums over ``loader`` in eval mode: tensor [loss_sum, correct, count] (float64, on device)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
        logits = model(x)
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
    model.train(was_training)
    return sums


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, loader, device, max_examples: int = -1, channels_last: bool = False
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
        model(to_device(x, device, channels_last))
        seen += len(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)
    return model
