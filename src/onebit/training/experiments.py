"""Experiments built on ``train``: sweeps (paper sec. 5.1, the reproduction's lr-invariance study),
the reproduction's approximation-viewpoint evaluation, and re-evaluating a finished run."""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from torch import nn

from ..data import Loader
from ..layers import QuantLayer
from ..quantizers import precision_of
from .config import ConfigError
from .loop import train
from .plots import plot_compare
from .runs import RunFolder, new_run_dir, restore_run
from .step import evaluate, reestimate_batchnorm

__all__ = ["run_sweep", "approximation_viewpoint", "evaluate_run", "latent_view", "reestimate_batchnorm"]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


def _sweep_worker(args):
    config, recipe, run_dir = args
    return train(config, recipe=recipe, run_dir=run_dir, verbose=False)


def _sweep_tasks(name: str, runs: list[tuple[dict, dict]], root: Path, jobs: int) -> list[tuple[dict, str, Path]]:
    """(config, run name, run folder) per run; parallel runs split the cores between them."""
    tasks = []
    for run, config in runs:
        run_dir = root / _slug(run["label"])
        run_dir.mkdir()
        if jobs > 1 and config["threads"] == 0:
            config = dict(config, threads=max(1, (os.cpu_count() or 1) // jobs))
        tasks.append((config, f"{name}/{run['label']}", run_dir))
    return tasks


def _run_tasks(tasks, labels: list[str], jobs: int, verbose: bool, say) -> list[dict]:
    """Train the runs one after the other, or ``jobs`` at a time in spawned processes."""
    if jobs <= 1:
        results = []
        for label, (config, name, run_dir) in zip(labels, tasks):
            say(f"--- {label}")
            results.append(train(config, recipe=name, run_dir=run_dir, verbose=verbose, stream=say.stream))
        return results
    results = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        for label, summary in zip(labels, pool.map(_sweep_worker, tasks)):
            say(f"  {label:<28} test {100 * (summary['test_accuracy'] or 0):6.2f}%  {summary['wall_seconds']:.1f}s")
            results.append(summary)
    return results


class _Say:
    """Print a line when verbose."""

    def __init__(self, verbose: bool, stream):
        self.verbose, self.stream = verbose, stream if stream is not None else sys.stdout

    def __call__(self, text: str) -> None:
        if self.verbose:
            self.stream.write(text + "\n")
            self.stream.flush()


def run_sweep(recipe, jobs: int = 1, verbose: bool = True, stream=None) -> dict:
    """Train every run of a sweep recipe into ``runs/<recipe>/<timestamp>/<label>/`` (in parallel
    processes with ``jobs`` > 1, splitting the cores between them), then draw ``compare.png``:
    accuracy and log flip ratio curves, one column per group."""
    say = _Say(verbose, stream)
    started = time.perf_counter()
    root = RunFolder(new_run_dir(recipe.config["out"], recipe.name))
    configs = recipe.run_configs()
    runs = [run for run, _ in configs]
    tasks = _sweep_tasks(recipe.name, configs, root.path, jobs)
    say(f"onebit {recipe.name}: {len(tasks)} runs into {root.path}" + (f" ({jobs} at a time)" if jobs > 1 else ""))
    results = _run_tasks(tasks, [run["label"] for run in runs], jobs, verbose, say)
    plot = plot_compare(
        [r["run_dir"] for r in results],
        root.compare_plot,
        labels=[run["label"] for run in runs],
        groups=[run.get("group", "runs") for run in runs],
    )
    best = max(results, key=lambda r: r["test_accuracy"] or 0)
    keys = ("test_accuracy", "best_test_accuracy", "wall_seconds", "run_dir")
    summary = {
        "recipe": recipe.name,
        "test_accuracy": best["test_accuracy"],
        "best_run": best["recipe"],
        "epochs": recipe.config["epochs"],
        "wall_seconds": round(time.perf_counter() - started, 3),
        "run_dir": str(root.path),
        "plot": str(plot),
        "runs": [
            dict(label=run["label"], group=run.get("group", "runs"), **{k: r[k] for k in keys})
            for run, r in zip(runs, results)
        ],
    }
    root.summary.write_text(json.dumps(summary, indent=2) + "\n")
    say(f"\nonebit {recipe.name}: done, {len(results)} runs")
    for item in summary["runs"]:
        say(f"  {item['label']:<28} test {100 * (item['test_accuracy'] or 0):6.2f}%")
    say(f"  plot           {plot}\n  run folder     {root.path}")
    return summary


# ------------------------------------------------------------------------- approximation viewpoint


def latent_view(model: nn.Module) -> nn.Module:
    """A copy of a latent-weight model whose binary layers use the real latent weights directly
    (kernel quantizer removed); activations stay binary."""
    view = copy.deepcopy(model)
    for m in view.modules():
        if isinstance(m, QuantLayer) and precision_of(m.kernel_quantizer) == 1:
            m.kernel_quantizer = None
            m.kernel_constraint = None
    return view


def approximation_viewpoint(recipe, verbose: bool = True, stream=None, run_dir=None) -> dict:
    """The reproduction study's test of the "latent weights approximate real weights" view: train
    with latent weights, then evaluate the test set (1) with binary weights, (2) with the latent
    weights in place of their signs, (3) with latent weights after re-estimating batch-norm
    statistics on the training set. Writes ``approximation.json`` and adds the three accuracies
    to ``summary.json``."""
    stream = stream if stream is not None else sys.stdout
    config = dict(recipe.config)
    if config["optimizer"] != "latent":
        raise ConfigError(
            f"approximation-viewpoint needs optimizer=latent (latent weights), got {config['optimizer']!r}"
        )
    summary = train(config, recipe=recipe.name, source=recipe.source, run_dir=run_dir, verbose=verbose, stream=stream)
    run = restore_run(summary["run_dir"], "last")
    model, device = run.model, torch.device("cpu")
    batch = max(config["batch_size"], 256)
    test = Loader(run.test_set, batch, train=False)
    train_plain = Loader(run.train_set, batch, train=False)  # training images, no augmentation

    def acc(m):
        s = evaluate(m, test, device).tolist()
        return s[1] / s[2]

    latent = latent_view(model)
    result = {
        "binary_weights": acc(model),
        "latent_weights": acc(latent),
        "latent_weights_bn_reestimated": acc(reestimate_batchnorm(latent, train_plain, device).eval()),
    }
    run.folder.approximation.write_text(json.dumps(result, indent=2) + "\n")
    summary.update({f"accuracy_{k}": v for k, v in result.items()})
    run.folder.summary.write_text(json.dumps(summary, indent=2) + "\n")
    if verbose:
        stream.write("\napproximation viewpoint (test accuracy):\n")
        stream.write(f"  binary weights (as trained)                 {100 * result['binary_weights']:6.2f}%\n")
        stream.write(f"  latent weights                              {100 * result['latent_weights']:6.2f}%\n")
        stream.write(
            f"  latent weights, batch norm re-estimated     {100 * result['latent_weights_bn_reestimated']:6.2f}%\n"
        )
        stream.flush()
    return summary


# ------------------------------------------------------------------------- finished runs


def evaluate_run(run_dir: str | os.PathLike, which: str = "best", overrides: dict | None = None) -> dict:
    """Test loss/accuracy of a run's ``best.pt`` (or ``last.pt``) on its test set."""
    run = restore_run(run_dir, which, overrides)
    torch.set_num_threads(run.config["threads"] or os.cpu_count() or 1)
    loader = Loader(run.test_set, max(run.config["batch_size"], 256), train=False)
    s = evaluate(run.model, loader, torch.device("cpu")).tolist()
    return {
        "checkpoint": str(run.checkpoint),
        "epoch": run.epoch,
        "test_loss": s[0] / s[2],
        "test_accuracy": s[1] / s[2],
        "examples": int(s[2]),
    }
