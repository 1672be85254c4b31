"""Figures: what a reader sees is checked on the matplotlib objects (axis labels, integer epoch
ticks, titles from the recipe and its settings, legend labels) and in the files (PNG at 200 dpi,
a PDF twin)."""

import csv
import json
import math
import struct

import numpy as np
import pytest

from onebit.cli import main
from onebit.recipes import load_recipe
from onebit.training import plots
from onebit.training.config import apply_overrides, to_toml
from onebit.training.loop import METRIC_COLUMNS


def write_run(path, recipe="mnist-bop", name=None, epochs=6, steps_per_epoch=20, overrides=(), seed=0):
    """A run folder as the trainer writes it: config.toml, metrics.csv, flips.csv."""
    rng = np.random.default_rng(seed)
    config = apply_overrides(load_recipe(recipe).config, list(overrides))
    path.mkdir(parents=True)
    (path / "config.toml").write_text(to_toml({"recipe": {"name": name or recipe}, "config": config}))
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, METRIC_COLUMNS)
        w.writeheader()
        for e in range(1, epochs + 1):
            acc = 1 - 0.5 / e
            w.writerow(dict(epoch=e, step=e * steps_per_epoch, train_accuracy=acc, test_accuracy=acc - 0.01))
    with open(path / "flips.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "flips", "log_flip_ratio"])
        for s in range(1, epochs * steps_per_epoch + 1):
            w.writerow([s, (s - 1) // steps_per_epoch + 1, 10, -3 - s / 50 + rng.normal(0, 0.3)])
    return path


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, by file name, before they are closed."""
    saved = {}
    original = plots._save

    def keep(plt, fig, path):
        fig.canvas.draw()
        saved[path.name] = fig
        return original(plt, fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def png_dpi(path) -> float:
    """The resolution a PNG declares (its pHYs chunk), in dots per inch."""
    data = path.read_bytes()
    i = data.index(b"pHYs")
    x_per_metre, _, unit = struct.unpack(">IIB", data[i + 4 : i + 13])
    assert unit == 1
    return x_per_metre * 0.0254


def tick_values(axis) -> list[float]:
    lo, hi = axis.get_view_interval()
    return [t for t in axis.get_ticklocs() if lo <= t <= hi]


def test_run_figures_are_labelled_for_a_paper(tmp_path, figures):
    run = write_run(tmp_path / "run")
    paths = plots.plot_run(run)
    assert [p.name for p in paths] == ["accuracy.png", "flips.png"]
    for p in paths:
        assert p.is_file() and round(png_dpi(p)) == plots.DPI >= 150
        assert p.with_suffix(".pdf").read_bytes().startswith(b"%PDF")

    acc = figures["accuracy.png"].axes[0]
    assert acc.get_xlabel() == "epoch" and acc.get_ylabel() == "accuracy (%)"
    assert all(float(t).is_integer() for t in tick_values(acc.xaxis))
    title = acc.get_title()
    assert (
        title.startswith("mnist-bop\n") and "small_cnn on mnist5k" in title and "\u03b3 = 0.03 \u2192 0.0001" in title
    )
    assert "\u03c4 = 1e-5" in title and "batch 64" in title
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["train", "test"]
    test_line = acc.get_lines()[1]
    assert max(test_line.get_ydata()) == pytest.approx(100 * (1 - 0.5 / 6) - 1)  # percent, not a fraction

    flips = figures["flips.png"].axes[0]
    assert flips.get_xlabel() == "epoch" and flips.get_ylabel().startswith("log flip ratio")
    assert all(float(t).is_integer() for t in tick_values(flips.xaxis))
    legend = [t.get_text() for t in flips.get_legend().get_texts()]
    assert legend == ["per step", "running mean over 12 steps"]  # a tenth of the run: shorter than its epochs
    raw, smooth = flips.get_lines()
    assert raw.get_alpha() < 0.5 and (smooth.get_alpha() or 1) == 1 and smooth.get_linewidth() > raw.get_linewidth()
    assert len(smooth.get_xdata()) == 120  # every step, the ends with narrower windows
    assert len(raw.get_xdata()) == 120 and raw.get_xdata()[-1] == 6  # steps drawn against the epoch


def test_a_long_run_is_smoothed_over_one_epoch(tmp_path, figures):
    plots.plot_run(write_run(tmp_path / "run", epochs=20, steps_per_epoch=62))
    legend = [t.get_text() for t in figures["flips.png"].axes[0].get_legend().get_texts()]
    assert legend == ["per step", "running mean over 62 steps (1 epoch)"]


def test_a_short_run_draws_its_flips_unsmoothed(tmp_path, figures):
    plots.plot_run(write_run(tmp_path / "run", epochs=2, steps_per_epoch=4))
    flips = figures["flips.png"].axes[0]
    assert len(flips.get_lines()) == 1 and flips.get_legend() is None


@pytest.mark.parametrize("n_steps, per_epoch, window", [(1240, 62, 62), (120, 20, 12), (40, 20, 1), (5000, 1000, 500)])
def test_smoothing_window_is_about_an_epoch(n_steps, per_epoch, window):
    assert plots._smoothing_window(n_steps, per_epoch) == window


def sweep_runs(tmp_path):
    specs = [
        ("gamma=1e-1,tau=1e-5", ["gamma (tau=1e-5)"], ["gamma=0.1", "threshold=1e-5"]),
        ("gamma=1e-2,tau=1e-5", ["gamma (tau=1e-5)", "threshold (gamma=1e-2)"], ["gamma=0.01", "threshold=1e-5"]),
        ("gamma=1e-2,tau=1e-3", ["threshold (gamma=1e-2)"], ["gamma=0.01", "threshold=1e-3"]),
    ]
    runs = [
        write_run(tmp_path / label, name=f"mnist-bop-sweep/{label}", overrides=["gamma_decay=none", *o], seed=i)
        for i, (label, _, o) in enumerate(specs)
    ]
    return runs, [s[0] for s in specs], [s[1] for s in specs]


def test_sweep_comparison_has_the_papers_layout(tmp_path, figures):
    runs, labels, groups = sweep_runs(tmp_path)
    out = plots.plot_compare(runs, tmp_path / "compare.png", labels=labels, groups=groups)
    assert out.is_file() and out.with_suffix(".pdf").is_file() and round(png_dpi(out)) == plots.DPI
    fig = figures["compare.png"]
    top, bottom = fig.axes[:2], fig.axes[2:]
    assert len(fig.axes) == 4  # accuracy on top, log flip ratio below, one column per hyperparameter
    assert [ax.get_title() for ax in top] == ["\u03b3 (\u03c4=1e-5)", "\u03c4 (\u03b3=1e-2)"]
    # the legend names what varies in the column; what all its runs share is in the column title
    assert [t.get_text() for t in top[0].get_legend().get_texts()] == ["\u03b3=1e-1", "\u03b3=1e-2"]
    assert [t.get_text() for t in top[1].get_legend().get_texts()] == ["\u03c4=1e-5", "\u03c4=1e-3"]
    # steps without a flip are gaps, and the running mean is the log of the mean ratio
    raw = bottom[0].get_lines()[0].get_ydata()
    assert np.isfinite(raw).all()
    assert top[0].get_ylabel() == "test accuracy (%)" and bottom[0].get_ylabel().startswith("log flip ratio")
    assert all(ax.get_xlabel() == "epoch" for ax in bottom)
    assert all(float(t).is_integer() for ax in bottom for t in tick_values(ax.xaxis))
    title = fig._suptitle.get_text()
    assert title.startswith("mnist-bop-sweep\n") and "small_cnn on mnist5k" in title and "\u03b3" not in title


def test_compare_names_runs_by_the_given_labels(tmp_path, figures):
    a = write_run(tmp_path / "a" / "seed-0")
    b = write_run(tmp_path / "b", recipe="mnist-latent")
    plots.plot_compare([a, b], tmp_path / "cmp.png", labels=["Bop", "Adam"])
    fig = figures["cmp.png"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["Bop", "Adam"]
    assert fig._suptitle.get_text().startswith("mnist-bop vs mnist-latent\n")
    plots.plot_compare([a, b], tmp_path / "default.png")
    assert [t.get_text() for t in figures["default.png"].axes[0].get_legend().get_texts()] == [
        "mnist-bop seed-0",
        "mnist-latent",
    ]


def test_compare_wants_one_label_per_run(tmp_path):
    runs, _, _ = sweep_runs(tmp_path)
    with pytest.raises(ValueError, match="2 labels for 3 runs"):
        plots.plot_compare(runs, tmp_path / "x.png", labels=["a", "b"])


def test_a_folder_without_config_is_titled_by_its_name(tmp_path, figures):
    run = write_run(tmp_path / "old-run")
    (run / "config.toml").unlink()
    plots.plot_run(run)
    assert figures["accuracy.png"].axes[0].get_title() == "old-run"


@pytest.mark.parametrize(
    "legends, order",
    [
        (["gamma=1e-1", "gamma=1e-3", "gamma=1e-2"], [1, 2, 0]),
        (["tau=1e-5", "tau=0", "tau=1e-3"], [1, 0, 2]),
        (["gamma=1e-1", "tau=1e-3"], None),
        (["Bop", "Adam"], None),
        (["lr=fast", "lr=slow"], None),
    ],
)
def test_columns_are_ordered_by_the_swept_number(legends, order):
    assert plots._numeric_order(legends) == order


def test_smoothed_flips_are_a_centred_mean_of_the_logs_with_half_a_flip_for_none():
    n = 1000
    flips = np.array([500, 0, 0, 20, 0, 10, 0])
    log_ratio = np.log(flips / n + 1e-9)
    logs = np.log(np.where(flips > 0, flips, 0.5) / n)
    expected = [logs[max(i - 2, 0) : i + 3].mean() for i in range(7)]  # 5 steps, cut at the ends
    assert plots._smoothed_log_ratio(log_ratio, flips, 5) == pytest.approx(expected, rel=1e-6)
    assert np.isnan(plots._without_zero_steps(log_ratio)).tolist() == [False, True, True, False, True, False, True]


@pytest.mark.parametrize("x, text", [(0.01, "0.01"), (1e-5, "1e-5"), (3e-2, "0.03"), (1e-10, "1e-10"), (0.0, "0")])
def test_numbers_in_titles(x, text):
    assert plots._number(x) == text and math.isclose(float(text), x)


def test_a_sweep_folder_is_redrawn_from_its_summary(tmp_path, figures):
    sweep = tmp_path / "moved-sweep"
    runs, labels, groups = sweep_runs(sweep)
    listed = [
        {"label": label, "group": g, "run_dir": f"/elsewhere/{r.name}"} for r, label, g in zip(runs, labels, groups)
    ]
    (sweep / "summary.json").write_text(json.dumps({"recipe": "mnist-bop-sweep", "runs": listed}))
    assert plots.is_sweep_folder(sweep) and not plots.is_sweep_folder(runs[0])
    out = plots.plot_sweep(sweep)
    assert out == sweep / "compare.png" and out.is_file() and (sweep / "compare.pdf").is_file()
    assert [ax.get_title() for ax in figures["compare.png"].axes[:2]] == [
        "\u03b3 (\u03c4=1e-5)",
        "\u03c4 (\u03b3=1e-2)",
    ]
    (sweep / "compare.png").unlink()
    # onebit plot SWEEP_DIR [SWEEP_DIR ...]: each redrawn, no comparison of the sweeps
    assert main(["plot", str(sweep), str(sweep)]) == 0 and (sweep / "compare.png").is_file()


@pytest.mark.parametrize("summary", ['{"recipe": "x"}', "not json", '{"runs": [{"label": "a"}]}'])
def test_a_folder_that_is_no_sweep(tmp_path, summary):
    (tmp_path / "summary.json").write_text(summary)
    if plots.is_sweep_folder(tmp_path):
        with pytest.raises(FileNotFoundError, match="not a sweep's summary"):
            plots.plot_sweep(tmp_path)
    else:
        assert summary != '{"runs": [{"label": "a"}]}'
