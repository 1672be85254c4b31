"""Weight constraints for latent-weight training (Larq's ``kernel_constraint``).

A quantized layer applies its ``kernel_constraint`` in place right after every step of any
``torch.optim.Optimizer`` that holds the layer's weight (a global optimizer step post-hook that
onebit registers once), so a user cannot forget to call it. ``apply_constraints(model)`` does the
same by hand, e.g. after loading latent weights from elsewhere.
"""

from __future__ import annotations

import torch

__all__ = ["WeightClip", "get"]


class WeightClip:
    """Clamp weights to [-clip_value, clip_value] in place (Larq's ``weight_clip``)."""

    def __init__(self, clip_value: float = 1.0):
        if clip_value <= 0:
            raise ValueError(f"WeightClip clip_value={clip_value!r} must be > 0")
        self.clip_value = float(clip_value)

    @torch.no_grad()
    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.clamp_(-self.clip_value, self.clip_value)

    def __repr__(self) -> str:
        return f"WeightClip(clip_value={self.clip_value})"


_REGISTRY = {"weight_clip": WeightClip}


def get(identifier):
    """Resolve a constraint: None, "weight_clip", an instance or any callable acting in place."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        if identifier in _REGISTRY:
            return _REGISTRY[identifier]()
        raise ValueError(
            f"unknown constraint {identifier!r}; valid names: {', '.join(sorted(_REGISTRY))}"
        )
    if callable(identifier):
        return identifier
    raise ValueError(f"cannot use {identifier!r} as a constraint; pass None, a callable or 'weight_clip'")
