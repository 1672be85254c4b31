"""Training: one loop for every recipe, checkpoints that resume bit-identically, run folders with
metrics, flips, TensorBoard events and plots; the reproduction study's experiments."""

from .build import FlipSource, build_model, build_optimizer, build_schedulers, schedule_factor
from .checkpoint import CheckpointError, save_atomic
from .checkpoint import load as load_checkpoint
from .config import FIELDS, ConfigError, apply_overrides, defaults
from .loop import Interrupted, SaveError, Trainer, TrainState, format_summary, resume_run, train
from .runs import CheckpointSaver, RunFolder, load_run, new_run_dir, read_run_config
from .step import evaluate, make_train_step

__all__ = [
    "FIELDS",
    "CheckpointError",
    "CheckpointSaver",
    "ConfigError",
    "FlipSource",
    "Interrupted",
    "RunFolder",
    "SaveError",
    "TrainState",
    "Trainer",
    "apply_overrides",
    "build_model",
    "build_optimizer",
    "build_schedulers",
    "defaults",
    "evaluate",
    "format_summary",
    "load_checkpoint",
    "load_run",
    "make_train_step",
    "new_run_dir",
    "read_run_config",
    "resume_run",
    "save_atomic",
    "schedule_factor",
    "train",
]
