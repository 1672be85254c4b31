"""TensorBoard events of a run, written into the run folder itself (rank 0 only).

- ``epoch/<metric>``: every number of the epoch's metrics.csv row (losses, accuracies, lr, gamma,
  log flip ratio, and whatever the row gains later), at the epoch number;
- ``step/loss``, ``step/log_flip_ratio``, and the schedules ``step/lr``, ``step/gamma``,
  ``step/threshold``: one point per optimizer step, at the step number. The loop keeps the step
  values on the device (or as host floats) and hands them over at the epoch's end, so logging
  adds no host sync per step;
- the run's config as hparams with its final metrics (``hparam/<metric>``), so TensorBoard's
  HPARAMS tab compares runs (e.g. a sweep's) by their settings. They are written into the run's
  own events file, not into a sub-folder as ``SummaryWriter.add_hparams`` does.

tensorboard is an optional extra: without it ``open_tensorboard`` returns None and nothing is
written.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..metrics import LOG_EPS

__all__ = ["EPOCH_SKIP", "HPARAM_METRICS", "TensorBoardLog", "hparam_values", "open_tensorboard"]

EPOCH_SKIP = frozenset({"epoch", "step", "flips", "seconds"})  # row columns that are not curves
HPARAM_METRICS = ("test_accuracy", "best_test_accuracy", "train_accuracy", "train_loss", "log_flip_ratio")


def hparam_values(config: dict) -> dict:
    """The config as TensorBoard accepts hparams: numbers, strings and booleans as they are,
    anything else (None, lists) as its text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in sorted(config.items())}


class TensorBoardLog:
    """A run's TensorBoard writer (see the module's docstring for the tags)."""

    def __init__(self, writer):
        self.writer = writer

    def steps(self, curves: dict[str, np.ndarray], last_step: int) -> None:
        """Per-step curves by name (``loss``, ``lr``, ``gamma``, ...), the last value at step
        ``last_step``."""
        for name, values in curves.items():
            first = last_step - len(values)
            for i, value in enumerate(values):
                self.writer.add_scalar(f"step/{name}", float(value), first + i + 1)

    def epoch(self, row: dict, flips: np.ndarray, numel: int) -> None:
        """The epoch's metrics.csv row at ``row["epoch"]``, and its flips per step and layer (the
        last row at step ``row["step"]``) as the log flip ratio over ``numel`` binary weights."""
        for key, value in row.items():
            if key not in EPOCH_SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
        if numel:
            self.steps({"log_flip_ratio": np.log(flips.sum(1) / numel + LOG_EPS)}, row["step"])
        self.writer.flush()

    def hparams(self, config: dict, final: dict, step: int) -> None:
        """The config as hparams, with the final metrics (``final``'s numbers among
        ``HPARAM_METRICS``) as ``hparam/<metric>`` scalars at ``step``."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {
            f"hparam/{k}": float(final[k])
            for k in HPARAM_METRICS
            if isinstance(final.get(k), (int, float)) and math.isfinite(final[k])
        }
        experiment, session_start, session_end = hparams(hparam_values(config), metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(run_dir: Path, enabled: bool) -> TensorBoardLog | None:
    """The run's TensorBoard log in ``run_dir``; None when disabled or tensorboard is missing."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is an optional extra
        return None
    return TensorBoardLog(SummaryWriter(str(run_dir)))
