"""Experiments built on ``train``: sweeps (paper sec. 5.1, the reproduction's lr-invariance study),
the reproduction's approximation-viewpoint evaluation, a recipe over several seeds, and
re-evaluating a finished run."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from torch import nn

from ..data import Loader
from ..layers import QuantLayer
from ..quantizers import is_binary
from .checkpoint import write_text_atomic
from .config import ConfigError
from .loop import train
from .plots import plot_sweep
from .runs import RunFolder, new_run_dir, restore_run
from .step import evaluate, make_train_step, reestimate_batchnorm

__all__ = [
    "run_sweep",
    "run_seeds",
    "seed_statistics",
    "approximation_viewpoint",
    "retrain_batchnorm",
    "evaluate_run",
    "latent_view",
    "reestimate_batchnorm",
]


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
    processes with ``jobs`` > 1, splitting the cores between them), then write ``summary.json`` and
    draw ``compare.png`` (and its PDF) from it: test accuracy on top, log flip ratio below, one
    column per group (``plots.plot_sweep``)."""
    say = _Say(verbose, stream)
    started = time.perf_counter()
    root = RunFolder(new_run_dir(recipe.config["out"], recipe.name))
    configs = recipe.run_configs()
    runs = [run for run, _ in configs]
    tasks = _sweep_tasks(recipe.name, configs, root.path, jobs)
    say(f"onebit {recipe.name}: {len(tasks)} runs into {root.path}" + (f" ({jobs} at a time)" if jobs > 1 else ""))
    results = _run_tasks(tasks, [run["label"] for run in runs], jobs, verbose, say)
    best = max(results, key=lambda r: r["test_accuracy"] or 0)
    keys = ("test_accuracy", "best_test_accuracy", "wall_seconds", "run_dir")
    summary = {
        "recipe": recipe.name,
        "test_accuracy": best["test_accuracy"],
        "best_run": best["recipe"],
        "epochs": recipe.config["epochs"],
        "wall_seconds": round(time.perf_counter() - started, 3),
        "run_dir": str(root.path),
        "plot": str(root.compare_plot),
        "runs": [
            dict(label=run["label"], group=run.get("group", ""), **{k: r[k] for k in keys})
            for run, r in zip(runs, results)
        ],
    }
    write_text_atomic(root.summary, json.dumps(summary, indent=2) + "\n")
    plot = plot_sweep(root.path)  # drawn from summary.json, as `onebit plot SWEEP_DIR` redraws it
    say(f"\nonebit {recipe.name}: done, {len(results)} runs")
    for item in summary["runs"]:
        say(f"  {item['label']:<28} test {100 * (item['test_accuracy'] or 0):6.2f}%")
    say(f"  plot           {plot}\n  run folder     {root.path}")
    return summary


# ------------------------------------------------------------------------- approximation viewpoint


def latent_view(model: nn.Module) -> nn.Module:
    """A copy of a latent-weight model as the study's code builds its "real-weight" model: every
    binary layer after the first uses its real latent kernel (kernel quantizer and constraint
    removed); the first layer keeps its binary kernel, and input quantizers stay as they are."""
    view = copy.deepcopy(model)
    binary = [m for m in view.modules() if isinstance(m, QuantLayer) and is_binary(m.kernel_quantizer)]
    for m in binary[1:]:
        m.kernel_quantizer = None
        m.kernel_constraint = None
    return view


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def retrain_batchnorm(model: nn.Module, loader, config: dict, device) -> nn.Module:
    """Train only the batch-norm parameters of ``model`` (in place) for ``config["epochs"]`` epochs
    (``max_steps`` per epoch when set) with Adam at ``config["lr"]``; every other parameter is
    frozen. Running statistics update as in any training (train-mode forward passes)."""
    bn_ids = {id(p) for m in _batchnorms(model) for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) in bn_ids]
    for p in model.parameters():
        p.requires_grad_(id(p) in bn_ids)
    step = make_train_step(model, torch.optim.Adam(params, lr=config["lr"], eps=config["adam_eps"]))
    model.train()
    for epoch in range(config["epochs"]):
        loader.set_epoch(config["epochs"] + epoch)  # the data orders after the first training's
        for i, (x, y) in enumerate(loader):
            if 0 < config["max_steps"] <= i:
                break
            step(x.to(device), y.to(device))
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def _kernels(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, QuantLayer)]


APPROXIMATION_ROWS = {
    "binary_weights": "binary weights (as trained)",
    "latent_weights": "latent weights (first layer binary)",
    "latent_weights_bn_retrained": "latent weights, batch norm retrained",
    "binary_weights_bn_retrained": "binary weights, retrained batch norm",
    "latent_weights_bn_reestimated": "latent weights, BN statistics re-estimated",
}


def _approximation_accuracies(run, config: dict, device) -> dict:
    """The four accuracies of the study's code, plus latent weights with re-estimated statistics."""
    batch = max(config["batch_size"], 256)
    test = Loader(run.test_set, batch, train=False)

    def acc(m):
        s = evaluate(m, test, device).tolist()
        return s[1] / s[2]

    binary = run.model.eval()
    latent = latent_view(binary)
    result = {"binary_weights": acc(binary), "latent_weights": acc(latent)}
    plain = Loader(run.train_set, batch, train=False)  # training images, no augmentation
    reestimated = reestimate_batchnorm(copy.deepcopy(latent), plain, device)
    before = _kernels(latent)
    train_loader = Loader(run.train_set, config["batch_size"], train=True, seed=config["seed"])
    retrain_batchnorm(latent, train_loader, config, device)
    if not all(torch.equal(a, b) for a, b in zip(before, _kernels(latent))):
        raise RuntimeError("batch-norm retraining changed a kernel")
    result["latent_weights_bn_retrained"] = acc(latent)
    for target, source in zip(_batchnorms(binary), _batchnorms(latent)):
        target.load_state_dict(source.state_dict())
    result["binary_weights_bn_retrained"] = acc(binary)
    result["latent_weights_bn_reestimated"] = acc(reestimated.eval())
    return result


def approximation_viewpoint(recipe, verbose: bool = True, stream=None, run_dir=None) -> dict:
    """The reproduction study's test of the "latent weights approximate real weights" view, as its
    code runs it: train with latent weights; evaluate the test set (1) with binary weights, (2)
    with latent weights in every layer but the first (``latent_view``); (3) retrain only the
    batch norms of (2) for as many epochs, kernels frozen, and evaluate; (4) copy those batch
    norms into the binary network and evaluate. Also (5): (2) with its batch-norm statistics
    re-estimated over the training images. Writes ``approximation.json`` and adds the accuracies
    to ``summary.json``."""
    stream = stream if stream is not None else sys.stdout
    config = dict(recipe.config)
    if config["optimizer"] != "latent":
        raise ConfigError(
            f"approximation-viewpoint needs optimizer=latent (latent weights), got {config['optimizer']!r}"
        )
    summary = train(config, recipe=recipe.name, source=recipe.source, run_dir=run_dir, verbose=verbose, stream=stream)
    run = restore_run(summary["run_dir"], "last")
    torch.manual_seed(config["seed"])
    result = _approximation_accuracies(run, config, torch.device("cpu"))
    write_text_atomic(run.folder.approximation, json.dumps(result, indent=2) + "\n")
    summary.update({f"accuracy_{k}": v for k, v in result.items()})
    write_text_atomic(run.folder.summary, json.dumps(summary, indent=2) + "\n")
    if verbose:
        stream.write("\napproximation viewpoint (test accuracy):\n")
        for key, text in APPROXIMATION_ROWS.items():
            stream.write(f"  {text:<44}{100 * result[key]:6.2f}%\n")
        stream.flush()
    return summary


# ------------------------------------------------------------------------- several seeds


def _seed_values(summary: dict) -> dict:
    """The numbers of one seed's summary that a seeds table reports."""
    keys = [k for k in summary if k.startswith("accuracy_")] or ["test_accuracy", "best_test_accuracy"]
    return {k: summary[k] for k in keys if isinstance(summary.get(k), (int, float))}


def seed_statistics(rows: list[dict]) -> dict:
    """{key: {"mean", "std", "n"}} over the per-seed rows (population std, as numpy's default)."""
    stats = {}
    for key in rows[0]:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        stats[key] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "n": len(values)}
    return stats


def run_seeds(recipe, verbose: bool = True, stream=None) -> dict:
    """Run a train or approximation-viewpoint recipe ``seeds`` times (seeds ``seed``,
    ``seed + 1``, ...), each into ``runs/<recipe>/<timestamp>/seed-<N>/``; write ``seeds.json``
    and ``seeds.csv`` (one row per seed, then mean and std) and print the table."""
    say = _Say(verbose, stream)
    if recipe.kind not in ("train", "approximation-viewpoint"):
        raise ConfigError(f"seeds > 1 works for train and approximation-viewpoint recipes, not {recipe.kind!r}")
    n, first = recipe.config["seeds"], recipe.config["seed"]
    root = RunFolder(new_run_dir(recipe.config["out"], recipe.name))
    say(f"onebit {recipe.name}: {n} seeds into {root.path}")
    runs = []
    for seed in range(first, first + n):
        one = recipe.with_overrides([f"seed={seed}", "seeds=1"])
        run_dir = root.path / f"seed-{seed}"
        run_dir.mkdir()
        say(f"--- seed {seed}")
        if recipe.kind == "approximation-viewpoint":
            s = approximation_viewpoint(one, verbose=verbose, stream=say.stream, run_dir=run_dir)
        else:
            s = train(one.config, recipe=recipe.name, source=recipe.source, run_dir=run_dir, verbose=verbose)
        runs.append(dict(seed=seed, run_dir=str(run_dir), **_seed_values(s)))
    keys = [k for k in runs[0] if k not in ("seed", "run_dir")]
    stats = seed_statistics([{k: r[k] for k in keys} for r in runs])
    summary = {"recipe": recipe.name, "seeds": n, "run_dir": str(root.path), "mean_std": stats, "runs": runs}
    write_text_atomic(root.seeds_summary, json.dumps(summary, indent=2) + "\n")
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["seed", *keys])
    w.writerows([[r["seed"], *(f"{r[k]:.6f}" for k in keys)] for r in runs])
    for what in ("mean", "std"):
        w.writerow([what, *(f"{stats[k][what]:.6f}" for k in keys)])
    write_text_atomic(root.seeds_table, table.getvalue())
    say(format_seeds(summary))
    return summary


def format_seeds(summary: dict) -> str:
    """The seeds table: one line per key, mean +/- std in percent, and each seed's value."""
    lines = [f"\nonebit {summary['recipe']}: {summary['seeds']} seeds (test accuracy, mean +/- std)"]
    for key, s in summary["mean_std"].items():
        each = " ".join(f"{100 * r[key]:.2f}" for r in summary["runs"])
        lines.append(f"  {key:<40} {100 * s['mean']:6.2f} +/- {100 * s['std']:5.2f}%   ({each})")
    lines.append(f"  run folder     {summary['run_dir']}")
    return "\n".join(lines)


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
