"""Run folders: where a training run keeps its files, and how a finished run is read back.

A run folder ``runs/<recipe>/<timestamp>/`` holds:

    config.toml     the resolved config (+ recipe name and source, and how the batch was divided)
    metrics.csv     one row per epoch: loss, train/test accuracy, lr, gamma, flips, log flip ratio, seconds
    flips.csv       one row per step: flips and log flip ratio, in total and per binary kernel
    last.pt         checkpoint after every epoch (and on Ctrl-C, and every ``checkpoint_every``), atomically
    best.pt         the checkpoint of the best test accuracy so far
    model.safetensors  best.pt's model weights as safetensors (written right after best.pt)
    summary.json    test_accuracy (fraction), epochs, wall_seconds, ...
    events.*        TensorBoard events (when tensorboard is installed)
    accuracy.png, flips.png

``RunFolder(path)`` names these files; ``load_run(path)`` rebuilds the trained model from them.
Checkpoints are read with ``torch.load(weights_only=True)``: a file in a shared run folder can be
refused (``CheckpointError``, one line), never run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from torch import nn

from . import checkpoint
from .build import build_model, load_data
from .config import ConfigError, parse_value, read_toml, validate

__all__ = [
    "CHECKPOINTS",
    "CheckpointSaver",
    "RestoredRun",
    "RunFolder",
    "load_run",
    "new_run_dir",
    "read_run_config",
    "restore_run",
]

CONFIG = "config.toml"
METRICS = "metrics.csv"
FLIPS = "flips.csv"
LAST = "last.pt"
BEST = "best.pt"
WEIGHTS = "model.safetensors"
SUMMARY = "summary.json"
ACCURACY_PLOT = "accuracy.png"
FLIPS_PLOT = "flips.png"
COMPARE_PLOT = "compare.png"
APPROXIMATION = "approximation.json"
SEEDS_SUMMARY = "seeds.json"
SEEDS_TABLE = "seeds.csv"
EVENTS = "events.out.tfevents.*"
CHECKPOINTS = ("best", "last")


def _file(name: str, doc: str) -> property:
    """A read-only property: the path of the run folder's file ``name``."""

    def path(self: RunFolder) -> Path:
        return self.path / name

    return property(path, doc=doc)


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder's files (nothing is read or created)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    config = _file(CONFIG, "config.toml: the resolved config")
    metrics = _file(METRICS, "metrics.csv: one row per epoch")
    flips = _file(FLIPS, "flips.csv: one row per optimizer step")
    last = _file(LAST, "last.pt: the latest checkpoint")
    best = _file(BEST, "best.pt: the checkpoint of the best test accuracy")
    weights = _file(WEIGHTS, "model.safetensors: best.pt's model weights")
    summary = _file(SUMMARY, "summary.json: the end-of-run figures")
    accuracy_plot = _file(ACCURACY_PLOT, "accuracy.png")
    flips_plot = _file(FLIPS_PLOT, "flips.png")
    compare_plot = _file(COMPARE_PLOT, "compare.png: a sweep's curves")
    approximation = _file(APPROXIMATION, "approximation.json")
    seeds_summary = _file(SEEDS_SUMMARY, "seeds.json: a multi-seed run's figures")
    seeds_table = _file(SEEDS_TABLE, "seeds.csv: one row per seed, mean, std")

    def events(self) -> list[Path]:
        """The TensorBoard event files, sorted."""
        return sorted(self.path.glob(EVENTS))

    def checkpoint(self, which: str = "best") -> Path:
        """The checkpoint file to read: ``best.pt`` (falling back to ``last.pt``) or ``last.pt``."""
        if which not in CHECKPOINTS:
            raise ConfigError(f"checkpoint {which!r}; allowed: {', '.join(CHECKPOINTS)}")
        for path in (self.best, self.last) if which == "best" else (self.last,):
            if path.is_file():
                return path
        expected = f"{BEST} or {LAST}" if which == "best" else LAST
        raise ConfigError(f"no checkpoint in {self.path}: expected {expected}")


def new_run_dir(out: str | os.PathLike, recipe: str) -> Path:
    """A fresh ``out/<recipe>/<YYYYmmdd-HHMMSS>[-N]`` folder. Each name is claimed by ``mkdir``,
    which only one caller can win: runs started in the same second (threads, processes, hosts
    sharing the folder) get separate folders, the later ones with ``-1``, ``-2``, ..."""
    base = Path(out) / recipe
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder under {base}")


class CheckpointSaver:
    """Writes a run's checkpoints atomically: ``last.pt`` every time, ``best.pt`` too when the
    test accuracy improved, and then best.pt's ``state["model"]`` as ``model.safetensors`` (the
    trained weights for anyone: no pickle, no onebit needed to read them). A crash never leaves
    half a file (between best.pt and model.safetensors it leaves the previous best's weights)."""

    def __init__(self, run_dir: str | os.PathLike | RunFolder):
        self.folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)

    def save(self, state: dict, best: bool = False) -> None:
        # last.pt is written last: it is the commit point a resume continues from (a crash before
        # it leaves best.pt one epoch ahead, which the resumed run writes again, bit for bit)
        if best:
            checkpoint.save_atomic(state, self.folder.best)
            checkpoint.save_weights(state["model"], self.folder.weights)
        checkpoint.save_atomic(state, self.folder.last)


def read_run_config(run_dir: str | os.PathLike) -> tuple[str, dict]:
    """(recipe name, config) from a run folder's ``config.toml``."""
    path = RunFolder(run_dir).config
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a onebit run folder: expected {path}")
    data = read_toml(path.read_text(), str(path))
    config = {k: parse_value(k, v) for k, v in data.get("config", {}).items()}
    return data.get("recipe", {}).get("name", "custom"), validate(config)


@dataclass(frozen=True)
class RestoredRun:
    """A run rebuilt from its folder: its config, the model with the checkpoint's weights (in eval
    mode), which checkpoint and epoch that was, and the run's data sets."""

    folder: RunFolder
    recipe: str
    config: dict
    model: nn.Module
    checkpoint: Path
    epoch: int
    train_set: object
    test_set: object

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return tuple(self.train_set.shape)


def restore_run(run_dir: str | os.PathLike, which: str = "best", overrides: dict | None = None) -> RestoredRun:
    """Rebuild a run's model from its ``config.toml`` (``overrides`` replace config keys, e.g. a
    moved ``data_dir``) with the weights of ``best.pt`` (falling back to ``last.pt``) or
    ``last.pt``. Reads the run's data sets for their class count and image shape."""
    folder = RunFolder(run_dir)
    recipe, config = read_run_config(folder.path)
    config = validate({**config, **(overrides or {})})
    path = folder.checkpoint(which)
    state = checkpoint.load(path)
    train_set, test_set = load_data(config)
    model = build_model(config, len(train_set.classes), train_set.shape)
    checkpoint.load_model_state(model, state["model"], path, f"the run's model {config['model']!r}")
    return RestoredRun(folder, recipe, config, model.eval(), path, state["epoch"], train_set, test_set)


def load_run(run_dir: str | os.PathLike, which: str = "best") -> tuple[nn.Module, dict]:
    """(model, config) of a run folder: the model rebuilt from ``config.toml`` with the weights of
    ``best.pt`` (falling back to ``last.pt``; ``which="last"`` for ``last.pt``), in eval mode.

    The checkpoint is read safely (nothing in it runs); a file that is not a onebit checkpoint, is
    damaged or does not fit the model raises ``CheckpointError`` (a ``ConfigError``), one line."""
    run = restore_run(run_dir, which)
    return run.model, run.config
