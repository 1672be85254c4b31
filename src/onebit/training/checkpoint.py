"""Checkpoints written atomically (temp file + ``os.replace``): a crash never leaves half a file.

A training checkpoint holds the model, the optimizer (Bop's gradient EMA included), the
schedulers, the position (epoch, batch, step), the partial metrics of an interrupted epoch, the
history of per-epoch metrics, every RNG state (torch, CUDA, numpy, python), the resolved config and
the onebit/torch versions. The data order needs no state: it is a function of (seed, epoch, batch).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["save_atomic", "load", "rng_state", "set_rng_state"]


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by onebit (it contains python objects: trusted files only)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
