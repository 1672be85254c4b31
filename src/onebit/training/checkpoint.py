"""Checkpoints written atomically (temp file + ``os.replace``): a crash never leaves half a file.

A training checkpoint holds the model, the optimizer (Bop's gradient EMA included), the
schedulers, the position (epoch, batch, step), the partial metrics of an interrupted epoch, the
history of per-epoch metrics, every RNG state (torch, CUDA, numpy, python), the resolved config and
the onebit/torch versions. The data order needs no state: it is a function of (seed, epoch, batch).

Run folders are shared, so reading one must never run code hidden in it: a checkpoint holds only
tensors, numbers, strings, lists and dicts (the RNG states too, see ``rng_state``) and ``load``
reads it with ``torch.load(weights_only=True)``, which refuses anything else. A file that is not
such a checkpoint (damaged, truncated, foreign, or one of the checkpoints of onebit 0.1.0 and
earlier, which held numpy arrays) raises ``CheckpointError``: one line naming the file.
``save_weights`` writes a model's weights as safetensors (no code at all, any framework reads it).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError

__all__ = [
    "KEYS",
    "CheckpointError",
    "atomic_write",
    "save_atomic",
    "write_text_atomic",
    "remove_temp_files",
    "load",
    "load_model_state",
    "save_weights",
    "rng_state",
    "set_rng_state",
]

# what every onebit training checkpoint holds (besides "format", "onebit", "torch", "source")
KEYS = (
    "recipe",
    "config",
    "model",
    "optimizer",
    "schedulers",
    "epoch",
    "batch",
    "step",
    "history",
    "best",
    "best_epoch",
    "partial",
    "rng",
    "wall_seconds",
)
_TYPES = {"config": dict, "model": dict, "optimizer": dict, "schedulers": list, "history": list, "rng": dict}


class CheckpointError(ConfigError):
    """A file that is not a onebit checkpoint, or is damaged (one line naming the file)."""


TEMP_SUFFIX = ".tmp"  # the temp files of atomic writes: "<name>.<random>.tmp" beside the file


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **kwargs):
    """Write ``path`` all at once: the block writes to a temp file beside it (``open`` arguments
    ``mode`` and ``kwargs``), which is flushed to disk and renamed over ``path`` when the block ends
    (``os.replace``: readers see the old file or the new one, never half of one). On an error (a full
    disk) the temp file is removed and ``path`` is untouched; a process killed meanwhile leaves only
    the temp file, which ``remove_temp_files`` deletes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); nothing where a folder cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file in the same folder, then rename over ``path`` (``atomic_write``)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file (UTF-8) atomically (``atomic_write``)."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files of atomic writes that a killed process left in ``folder`` (not in its
    subfolders); returns them."""
    removed = []
    for path in sorted(Path(folder).glob("*" + TEMP_SUFFIX)):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", keys: tuple[str, ...] = KEYS) -> dict:
    """A checkpoint read safely (``torch.load(weights_only=True)``: tensors, numbers, strings,
    lists and dicts only; nothing in the file runs). ``keys``: the entries it must have (all of a
    training checkpoint's by default; ``()`` for any dict).

    Raises ``CheckpointError`` (one line naming the file) when the file is not such a dict: a
    damaged or truncated file, a foreign pickle, or a checkpoint of onebit 0.1.0 or earlier (their
    numpy RNG state cannot be read safely: retrain, or re-save it with that version's trust)."""
    try:
        with warnings.catch_warnings():  # e.g. about a foreign file's pickle protocol: the error says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # whatever the file holds, one line and nothing run
        raise CheckpointError(f"{path} is not a onebit checkpoint or is damaged ({_reason(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a onebit checkpoint: it holds a {type(state).__name__}, not a dict")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a onebit checkpoint or is damaged (no {', '.join(missing)})")
    for key, kind in _TYPES.items():
        if key in keys and not isinstance(state[key], kind):
            got = type(state[key]).__name__
            raise CheckpointError(
                f"{path} is not a onebit checkpoint: its {key!r} is a {got}, expected a {kind.__name__}"
            )
    return state


def load_model_state(model: torch.nn.Module, state_dict: dict, path, what: str = "the model") -> None:
    """``model.load_state_dict(state_dict)``; weights of another model (or not weights at all)
    raise ``CheckpointError``: one line naming ``path`` (the checkpoint) and ``what``, not torch's
    list of keys."""
    try:
        model.load_state_dict(state_dict)
    except Exception as e:
        why = " ".join(str(e).split()) or type(e).__name__
        why = why if len(why) <= 200 else why[:197] + "..."
        raise CheckpointError(f"{path} does not fit {what}: {why}") from None


def _reason(e: Exception) -> str:
    """One short line saying why ``torch.load`` refused a file."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        name = found.group(1)
        old = " (a checkpoint of onebit 0.1.0 or earlier?)" if name.startswith("numpy") else ""
        return f"it refers to {name}, which a checkpoint never holds; nothing was run{old}"
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [t.strip() for t in text.split("WeightsUnpickler error:")[-1].splitlines()]
    line = next((t for t in lines if t and not t.startswith(boilerplate)), "")
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    line = line if len(line) <= 160 else line[:157] + "..."
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def save_weights(state_dict: dict, path: str | os.PathLike) -> None:
    """Write a model's ``state_dict`` as safetensors, atomically (``atomic_write``).

    Tensors are copied to the CPU in contiguous layout (a channels_last model saves too), values
    unchanged: Bop's binary kernels stay exactly +/-1. Read back with
    ``model.load_state_dict(safetensors.torch.load_file(path))``."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format) for k, v in state_dict.items()}
    data = save(tensors, metadata={"format": "pt"})
    with atomic_write(path) as f:
        f.write(data)


def rng_state() -> dict:
    """Every RNG's state as tensors, ints, floats, strings and lists (safe to load: no numpy
    array, no tuple of python's own); ``set_rng_state`` restores them bit for bit."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
