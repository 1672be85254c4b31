"""Figures from run folders, ready for a paper: accuracy per epoch, the log flip ratio per step,
and runs compared in the layout of the paper's sec. 5.1 (accuracy on top, log flip ratio below,
one column per swept hyperparameter).

Every figure is written twice: a PNG at ``DPI`` (200) for screens and docs, and a PDF next to it
(same name, ``.pdf``) for LaTeX. Axes carry their quantity and unit, epochs are integers,
accuracy is in percent. Titles name the recipe and its key settings (model, data, optimizer and
its hyperparameters, batch), read from the run's ``config.toml``; legends name runs by their
labels (a sweep's run labels, or ``labels=`` / ``onebit plot --label``), with the settings all
runs of a column share moved into the column's title; a column whose runs differ in one number
(``gamma=1e-3``, ...) is ordered by it and coloured along a sequential colour map. The per-step
log flip ratio is drawn faint (a step without a flip is a gap: its log is minus infinity), with
its running mean over about one epoch on top (where a step without a flip counts as half a flip)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..metrics import LOG_EPS
from .config import ConfigError
from .runs import RunFolder, read_run_config

__all__ = [
    "DPI",
    "FORMATS",
    "describe_run",
    "plot_compare",
    "plot_run",
    "plot_sweep",
    "is_sweep_folder",
    "read_flips",
    "read_metrics",
    "run_label",
]

DPI = 200
FORMATS = ("png", "pdf")
GREEK = (("gamma", "\u03b3"), ("threshold", "\u03c4"), ("tau", "\u03c4"))
FLIP_RATIO_LABEL = "log flip ratio  ln(flips / weights)"
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.fonttype": "none",
    "pdf.fonttype": 42,  # TrueType: text stays text in the PDF
}


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


def read_flips(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, flips, log flip ratio) per step from ``flips.csv`` (empty arrays if absent)."""
    path = RunFolder(run_dir).flips
    if not path.is_file():
        return np.zeros(0), np.zeros(0), np.zeros(0)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return _floats(rows, "step"), _floats(rows, "flips"), _floats(rows, "log_flip_ratio")


# ------------------------------------------------------------------------------ words


def _greek(text: str) -> str:
    for word, letter in GREEK:
        text = text.replace(word, letter)
    return text


def _number(x) -> str:
    """0.01, 1e-5 (not 1e-05)."""
    text = f"{x:g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def _settings(config: dict) -> dict[str, str]:
    """The key settings of a run as short phrases, by topic (compared runs share some)."""
    c = config
    out = {"model": f"{c['model']} on {c['dataset']}", "batch": f"batch {c['batch_size']}"}
    if c["optimizer"] == "bop":
        gamma = f"\u03b3 = {_number(c['gamma'])}"
        if c.get("gamma_decay", "none") == "linear":
            gamma += f" \u2192 {_number(c['gamma_end'])}"
        elif c.get("gamma_decay", "none") == "step":
            gamma += f" \u00d7 {_number(c['gamma_decay_rate'])} / {_number(c['gamma_decay_epochs'])} epochs"
        out["gamma"] = f"Bop {gamma}"
        out["threshold"] = f"\u03c4 = {_number(c['threshold'])}"
        out["real"] = f"{c['real_optimizer'].capitalize()} lr {_number(c['lr'])}"
    else:
        out["real"] = f"latent weights, {c['real_optimizer'].capitalize()} lr {_number(c['lr'])}"
    if c.get("lr_decay", "none") != "none" and c.get("lr_end") is not None:
        out["real"] += f" \u2192 {_number(c['lr_end'])}"
    return out


def _run_info(run_dir: Path) -> tuple[str, dict]:
    """(recipe name, settings) of a run; the folder's name and no settings when its config.toml
    is missing or from another version."""
    try:
        recipe, config = read_run_config(run_dir)
    except (ConfigError, OSError, KeyError, ValueError):
        return run_dir.name, {}
    return recipe, _settings(config)


def describe_run(run_dir: str | os.PathLike) -> str:
    """The title of a run's figures: its recipe, then its key settings."""
    recipe, settings = _run_info(Path(run_dir))
    return recipe + ("\n" + ", ".join(settings.values()) if settings else "")


def run_label(run_dir: str | os.PathLike) -> str:
    """A run's name in a legend: the sweep's run label, or the recipe (with the seed's folder)."""
    run_dir = Path(run_dir)
    recipe, _ = _run_info(run_dir)
    if "/" in recipe:  # a sweep's run: "<sweep>/<label>"
        return recipe.split("/", 1)[1]
    return f"{recipe} {run_dir.name}" if run_dir.name.startswith("seed-") else recipe


# ------------------------------------------------------------------------------ drawing


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _steps_per_epoch(rows: list[dict]) -> float:
    """Optimizer steps per epoch from metrics.csv (1 when unknown)."""
    if rows and rows[0].get("step") not in (None, "") and float(rows[0]["epoch"]) > 0:
        return max(float(rows[0]["step"]) / float(rows[0]["epoch"]), 1.0)
    return 1.0


def _smoothing_window(n_steps: int, steps_per_epoch: float) -> int:
    """About one epoch's steps, at most a tenth of the run; 1 (no smoothing) for short runs."""
    window = int(min(steps_per_epoch, n_steps // 10))
    return window if window >= 5 else 1


def _smoothed_log_ratio(log_ratio: np.ndarray, flips: np.ndarray, window: int) -> np.ndarray:
    """The running mean of the per-step log flip ratio over ``window`` steps centred on each step
    (cut at the run's ends). A step without a flip counts as half a flip (its log is minus
    infinity, ln(1e-9) in flips.csv, which would drag the mean down by orders of magnitude)."""
    ratio = np.exp(log_ratio) - LOG_EPS
    flipped = flips > 0
    if flipped.any():
        weights = np.median(flips[flipped] / ratio[flipped])  # binary weights n = flips / ratio
        log_ratio = np.where(flipped, log_ratio, np.log(0.5 / weights))
    i = np.arange(len(log_ratio))
    lo, hi = np.maximum(i - window // 2, 0), np.minimum(i + window // 2 + 1, len(log_ratio))
    sums = np.concatenate([[0.0], np.cumsum(log_ratio)])
    return (sums[hi] - sums[lo]) / (hi - lo)


def _without_zero_steps(log_ratio: np.ndarray) -> np.ndarray:
    """Steps without a flip as gaps: their log is minus infinity, drawn as no point."""
    return np.where(log_ratio <= np.log(LOG_EPS) + 1e-6, np.nan, log_ratio)


def _draw_flips(ax, run_dir: Path, rows: list[dict], label: str | None, color=None, raw_alpha: float = 0.3) -> int:
    """The per-step log flip ratio against the epoch, faint, and its running mean on top; returns
    the smoothing window (1: raw line only, drawn solid)."""
    steps, flips, ratio = read_flips(run_dir)
    if not len(steps):
        return 0
    x = steps / _steps_per_epoch(rows)
    window = _smoothing_window(len(steps), _steps_per_epoch(rows))
    if window == 1:
        ax.plot(x, _without_zero_steps(ratio), lw=1.2, color=color, label=label)
        return window
    raw = ax.plot(
        x, _without_zero_steps(ratio), lw=0.6, alpha=raw_alpha, color=color, label=None if label else "per step"
    )
    color = raw[0].get_color() if color is None else color
    ax.plot(x, _smoothed_log_ratio(ratio, flips, window), lw=1.6, color=color, label=label)
    return window


def _save(plt, fig, path: Path) -> Path:
    """``path`` (PNG at DPI) and the same figure as PDF next to it; closes the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    for fmt in FORMATS:
        if fmt != path.suffix.lstrip(".").lower():
            fig.savefig(path.with_suffix(f".{fmt}"), bbox_inches="tight")
    plt.close(fig)
    return path


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Write ``accuracy.png`` and ``flips.png`` (each with a ``.pdf`` twin) into ``run_dir``;
    returns the PNGs' paths."""
    plt = _matplotlib()
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    title = describe_run(run_dir)
    out = []
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 4))
        epochs = _floats(rows, "epoch")
        ax.plot(epochs, 100 * _floats(rows, "train_accuracy"), "o-", ms=3.5, label="train")
        test = 100 * _floats(rows, "test_accuracy")
        ax.plot(epochs[~np.isnan(test)], test[~np.isnan(test)], "s-", ms=3.5, label="test")
        _epoch_axis(ax)
        ax.set(ylabel="accuracy (%)", title=title)
        ax.legend(loc="lower right")
        out.append(_save(plt, fig, RunFolder(run_dir).accuracy_plot))

        fig, ax = plt.subplots(figsize=(6, 4))
        window = _draw_flips(ax, run_dir, rows, label=None)
        if window:
            if window > 1:  # a legend for the two lines; a single raw line needs none
                one_epoch = " (1 epoch)" if window == round(_steps_per_epoch(rows)) else ""
                ax.lines[-1].set_label(f"running mean over {window} steps{one_epoch}")
                ax.legend(loc="upper right")
            _epoch_axis(ax)
            ax.set(ylabel=FLIP_RATIO_LABEL, title=title)
            out.append(_save(plt, fig, RunFolder(run_dir).flips_plot))
        else:
            plt.close(fig)
    return out


# ------------------------------------------------------------------------------ comparisons


def _label_parts(label: str) -> list[str]:
    return [p.strip() for p in label.split(",") if p.strip()]


def _column_legends(labels: list[str]) -> tuple[list[str], list[str]]:
    """(legend labels, parts shared by all): the parts of comma-separated labels that every run
    of a column shares are left out of its legend (they go into the column's title)."""
    parts = [_label_parts(label) for label in labels]
    shared = [p for p in parts[0] if all(p in q for q in parts[1:])] if len(labels) > 1 else []
    legends = [", ".join(p for p in q if p not in shared) or label for q, label in zip(parts, labels)]
    return legends, shared


def _numeric_order(legends: list[str]) -> list[int] | None:
    """The order of a column's runs by the one number their legends vary (``NAME=NUMBER``, one
    NAME for all); None when the legends are not of that form."""
    parsed = []
    for text in legends:
        name, sep, value = text.partition("=")
        try:
            parsed.append((name.strip(), float(value)))
        except ValueError:
            return None
        if not sep:
            return None
    if len({name for name, _ in parsed}) != 1:
        return None
    return sorted(range(len(parsed)), key=lambda i: parsed[i][1])


def _column_title(name: str, shared: list[str]) -> str:
    """A column's title: its group's name, and what its runs share that the name does not say."""
    extra = [p for p in shared if p.replace(" ", "") not in name.replace(" ", "")]
    return _greek(", ".join(([name] if name else []) + extra))


def _common_title(run_dirs: list[Path], title: str | None) -> str:
    """The figure's title: ``title``, or the recipes and the settings every run shares."""
    if title:
        return title
    infos = [_run_info(d) for d in run_dirs]
    recipes = list(dict.fromkeys(r.split("/", 1)[0] for r, _ in infos))
    shared = [v for k, v in infos[0][1].items() if all(s.get(k) == v for _, s in infos[1:])]
    return " vs ".join(recipes) + ("\n" + ", ".join(shared) if shared else "")


def _groups(run_dirs: list[Path], groups) -> tuple[list[list[str]], list[str]]:
    """Each run's columns (a run's group may be a list: drawn in each) and the column names."""
    groups = [[g] if isinstance(g, str) else list(g) for g in (groups or [""] * len(run_dirs))]
    return groups, list(dict.fromkeys(g for gs in groups for g in gs))


def plot_compare(
    run_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    labels: list[str] | None = None,
    groups: list | None = None,
    title: str | None = None,
) -> Path:
    """One figure comparing runs, written to ``out`` (PNG) and its ``.pdf`` twin: per group a
    column with the test accuracy per epoch (top) and the log flip ratio (bottom: per step faint,
    its running mean solid), one colour per run. ``labels``: the legend's names (default: the
    runs' labels); ``groups``: each run's column name, or a list of names (drawn in each);
    ``title``: default the recipes and the settings every run shares."""
    plt = _matplotlib()
    run_dirs = [Path(d) for d in run_dirs]
    labels = labels or [run_label(d) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs: give one label per run")
    groups, names = _groups(run_dirs, groups)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            2,
            len(names),
            figsize=(4.2 * len(names) + 0.6 if len(names) > 1 else 9.0, 6.4),
            squeeze=False,
            sharex="col",
            sharey="row",
        )
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for col, name in enumerate(names):
            members = [i for i, gs in enumerate(groups) if name in gs]
            legends, shared = _column_legends([labels[i] for i in members])
            order = _numeric_order(legends)
            if order is not None and len(order) > 2:
                colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(order)))
            else:
                order, colors = list(range(len(members))), [cycle[k % len(cycle)] for k in range(len(members))]
            for k, j in enumerate(order):
                _draw_compared(axes[:, col], run_dirs[members[j]], _greek(legends[j]), colors[k])
            # one column: the figure's title already names the experiment
            axes[0, col].set_title(_column_title(name if len(names) > 1 else "", shared))
            _epoch_axis(axes[1, col])
            if len(names) > 1:
                axes[0, col].legend(loc="lower right")
            else:  # one column: the legend beside it, off the curves
                axes[0, col].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
        axes[0, 0].set_ylabel("test accuracy (%)")
        axes[1, 0].set_ylabel(FLIP_RATIO_LABEL)
        fig.suptitle(_greek(_common_title(run_dirs, title)))
        fig.tight_layout()
        return _save(plt, fig, Path(out))


def _draw_compared(axes, run_dir: Path, label: str, color) -> None:
    """One run in one column: test accuracy (train accuracy when never tested) and flips."""
    rows = read_metrics(run_dir)
    epochs, acc = _floats(rows, "epoch"), 100 * _floats(rows, "test_accuracy")
    keep = ~np.isnan(acc)
    if not keep.any():
        acc, keep = 100 * _floats(rows, "train_accuracy"), np.ones(len(rows), bool)
    axes[0].plot(epochs[keep], acc[keep], "o-", ms=3, lw=1.4, color=color, label=label)
    _draw_flips(axes[1], run_dir, rows, label=label, color=color, raw_alpha=0.18)


def plot_sweep(sweep_dir: str | os.PathLike) -> Path:
    """Redraw a finished sweep's ``compare.png`` (and PDF) from its folder: its runs, labels and
    groups as its ``summary.json`` lists them (each run found in the sweep's folder by name, so
    a moved folder still draws)."""
    folder = RunFolder(sweep_dir)
    try:
        runs = json.loads(folder.summary.read_text())["runs"]
        run_dirs = [folder.path / Path(r["run_dir"]).name for r in runs]
        labels, groups = [r["label"] for r in runs], [r.get("group", "") for r in runs]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileNotFoundError(f"{folder.summary}: not a sweep's summary ({e})") from None
    return plot_compare(run_dirs, folder.compare_plot, labels=labels, groups=groups)


def is_sweep_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sweep's folder (a summary.json listing runs, no metrics.csv)."""
    folder = RunFolder(path)
    if folder.metrics.is_file() or not folder.summary.is_file():
        return False
    try:
        return isinstance(json.loads(folder.summary.read_text()).get("runs"), list)
    except (OSError, ValueError, AttributeError):
        return False
