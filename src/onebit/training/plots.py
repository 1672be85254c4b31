"""PNG plots from a run folder's CSV files, as the paper's figures: accuracy per epoch and the log
flip ratio per step (raw and smoothed). ``plot_compare`` overlays several runs, one column per
group (e.g. the gamma and threshold halves of the sec. 5.1 sweep)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .runs import RunFolder

__all__ = ["read_metrics", "read_flips", "plot_run", "plot_compare"]


def _matplotlib():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _floats(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``metrics.csv`` (strings; empty cells for values not measured)."""
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a onebit run folder?")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_flips(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(steps, log flip ratio per step) from ``flips.csv`` (empty arrays if absent)."""
    path = RunFolder(run_dir).flips
    if not path.is_file():
        return np.zeros(0), np.zeros(0)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return _floats(rows, "step"), _floats(rows, "log_flip_ratio")


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if len(y) < window or window < 2:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def _label(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Label, grid and legend one single-axes figure, save it as PNG and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Write ``accuracy.png`` and ``flips.png`` into ``run_dir``; returns their paths."""
    plt = _matplotlib()
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = _floats(rows, "epoch")
    ax.plot(epochs, _floats(rows, "train_accuracy"), "o-", label="train")
    test = _floats(rows, "test_accuracy")
    ax.plot(epochs[~np.isnan(test)], test[~np.isnan(test)], "s-", label="test")
    out.append(_finish(plt, fig, ax, "epoch", "accuracy", _label(run_dir), RunFolder(run_dir).accuracy_plot))

    steps, ratio = read_flips(run_dir)
    if len(steps):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(steps, ratio, lw=0.5, alpha=0.4, label="per step")
        window = max(1, len(steps) // 50)
        if window > 1:
            ax.plot(steps[window - 1 :], _smooth(ratio, window), lw=1.5, label=f"mean of {window}")
        out.append(
            _finish(
                plt,
                fig,
                ax,
                "step",
                "log flip ratio  ln(flips / n + 1e-9)",
                _label(run_dir),
                RunFolder(run_dir).flips_plot,
            )
        )
    return out


def plot_compare(
    run_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    labels: list[str] | None = None,
    groups: list | None = None,
) -> Path:
    """One PNG comparing runs: per group a column with test accuracy (top) and smoothed log flip
    ratio (bottom), one curve per run. A run's group may be a list: it is drawn in each."""
    plt = _matplotlib()
    run_dirs = [Path(d) for d in run_dirs]
    labels = labels or [_label(d) for d in run_dirs]
    groups = [[g] if isinstance(g, str) else list(g) for g in (groups or ["runs"] * len(run_dirs))]
    names = list(dict.fromkeys(g for gs in groups for g in gs))
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 7), squeeze=False)
    for d, label, gs in zip(run_dirs, labels, groups):
        rows = read_metrics(d)
        epochs, test = _floats(rows, "epoch"), _floats(rows, "test_accuracy")
        keep = ~np.isnan(test)
        if not keep.any():
            test, keep = _floats(rows, "train_accuracy"), np.ones(len(rows), bool)
        steps, ratio = read_flips(d)
        for group in gs:
            col = names.index(group)
            axes[0, col].plot(epochs[keep], test[keep], "o-", ms=3, label=label)
            if len(steps):
                window = max(1, len(steps) // 50)
                axes[1, col].plot(
                    steps[window - 1 :] if window > 1 else steps, _smooth(ratio, window), lw=1.2, label=label
                )
    for col, name in enumerate(names):
        axes[0, col].set_title(name)
        axes[0, col].set_xlabel("epoch")
        axes[0, col].set_ylabel("test accuracy")
        axes[1, col].set_xlabel("step")
        axes[1, col].set_ylabel("log flip ratio (smoothed)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
