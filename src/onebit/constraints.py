"""Weight constraints for latent-weight training (Larq's ``kernel_constraint``).

A quantized layer's ``kernel_constraint`` is applied in place right after every step of any
``torch.optim.Optimizer`` that holds the layer's weight, so a user cannot forget to call it.

How: this module is the one place that enforces constraints. When a layer gets a constraint it
calls ``enforce(layer)``, which installs one optimizer step post-hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``) the first time. After a step, the hook
applies the constraints of the constrained layers whose weight that optimizer holds. Which those
are is worked out once per optimizer and again only when layers gain constraints or the optimizer's
param groups change, so a step costs one check plus the constraints themselves; a process without
constrained layers pays nothing beyond an early return. ``onebit.apply_constraints(model)`` applies
them by hand, e.g. after loading latent weights from elsewhere.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = ["WeightClip", "enforce", "get", "names"]


class WeightClip:
    """Clamp weights to [-clip_value, clip_value] in place (Larq's ``weight_clip``)."""

    def __init__(self, clip_value: float = 1.0):
        ok = isinstance(clip_value, numbers.Real) and not isinstance(clip_value, bool) and math.isfinite(clip_value)
        if not ok or clip_value <= 0:
            raise ValueError(f"WeightClip clip_value={clip_value!r} must be > 0 (a finite number)")
        self.clip_value = float(clip_value)

    @torch.no_grad()
    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.clamp_(-self.clip_value, self.clip_value)

    def __repr__(self) -> str:
        return f"WeightClip(clip_value={self.clip_value})"


_REGISTRY = {"weight_clip": WeightClip}


def names() -> list[str]:
    """The registered constraint names, sorted."""
    return sorted(_REGISTRY)


def get(identifier: str | Callable | None) -> Callable | None:
    """Resolve a constraint: None, "weight_clip", an instance or any callable acting in place."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        if identifier in _REGISTRY:
            return _REGISTRY[identifier]()
        raise ValueError(f"unknown constraint {identifier!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    if callable(identifier):
        return identifier
    raise ValueError(f"cannot use {identifier!r} as a constraint; pass None, a callable or 'weight_clip'")


# Layers with a constraint (weakly held), a counter bumped when the set grows, and per optimizer
# the (key, [(layer ref, weight)]) of the constrained weights it holds.
_LAYERS: weakref.WeakSet = weakref.WeakSet()
_generation = 0
_PER_OPTIMIZER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_hook = None


def enforce(layer: torch.nn.Module) -> None:
    """Apply ``layer.kernel_constraint`` to ``layer.weight`` after every step of any optimizer
    holding that weight (a no-op for a layer without a constraint)."""
    global _generation, _hook
    if layer.kernel_constraint is None or layer in _LAYERS:
        return
    _LAYERS.add(layer)
    _generation += 1
    if _hook is None:
        _hook = register_optimizer_step_post_hook(_after_step)


def _held(optimizer, key):
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    pairs = [(weakref.ref(m), m.weight) for m in list(_LAYERS) if id(m.weight) in held]
    _PER_OPTIMIZER[optimizer] = (key, pairs)
    return pairs


def _after_step(optimizer, args, kwargs) -> None:
    if not _LAYERS:
        return
    key = (_generation, tuple(len(group["params"]) for group in optimizer.param_groups))
    cached = _PER_OPTIMIZER.get(optimizer)
    pairs = cached[1] if cached is not None and cached[0] == key else _held(optimizer, key)
    for ref, weight in pairs:
        layer = ref()
        if layer is None or layer.weight is not weight:  # a layer gone or its weight replaced
            pairs = _held(optimizer, key)
            break
    for ref, weight in pairs:
        layer = ref()
        if layer is not None and layer.kernel_constraint is not None:
            layer.kernel_constraint(weight)
