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

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip install tomli
    import tomli as tomllib
import torch
from torch import nn

from ..data import Loader
from ..layers import QuantLayer
from ..quantizers import precision_of
from . import checkpoint
from .build import build_model, load_data
from .config import ConfigError, parse_value, validate
from .loop import new_run_dir, train
from .plots import plot_compare
from .step import evaluate, reestimate_batchnorm

__all__ = ["run_sweep", "approximation_viewpoint", "evaluate_run", "read_run_config", "latent_view", "reestimate_batchnorm"]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


def _sweep_worker(args):
    config, recipe, run_dir = args
    return train(config, recipe=recipe, run_dir=run_dir, verbose=False)


def run_sweep(recipe, jobs: int = 1, verbose: bool = True, stream=None) -> dict:
    """Train every run of a sweep recipe into ``runs/<recipe>/<timestamp>/<label>/`` (in parallel
    processes with ``jobs`` > 1, splitting the cores between them), then draw ``compare.png``:
    accuracy and log flip ratio curves, one column per group."""
    stream = stream if stream is not None else sys.stdout
    started = time.perf_counter()
    root = new_run_dir(recipe.config["out"], recipe.name)
    runs = recipe.run_configs()
    tasks = []
    for run, config in runs:
        run_dir = root / _slug(run["label"])
        run_dir.mkdir()
        if jobs > 1 and config["threads"] == 0:
            config = dict(config, threads=max(1, (os.cpu_count() or 1) // jobs))
        tasks.append((config, f"{recipe.name}/{run['label']}", run_dir))

    def say(text):
        if verbose:
            stream.write(text + "\n")
            stream.flush()

    say(f"onebit {recipe.name}: {len(tasks)} runs into {root}" + (f" ({jobs} at a time)" if jobs > 1 else ""))
    results = []
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            for (run, _), summary in zip(runs, pool.map(_sweep_worker, tasks)):
                say(f"  {run['label']:<28} test {100 * (summary['test_accuracy'] or 0):6.2f}%  {summary['wall_seconds']:.1f}s")
                results.append(summary)
    else:
        for (run, _), (config, name, run_dir) in zip(runs, tasks):
            say(f"--- {run['label']}")
            results.append(train(config, recipe=name, run_dir=run_dir, verbose=verbose, stream=stream))
    plot = plot_compare(
        [r["run_dir"] for r in results], root / "compare.png",
        labels=[run["label"] for run, _ in runs], groups=[run.get("group", "runs") for run, _ in runs],
    )
    best = max(results, key=lambda r: r["test_accuracy"] or 0)
    summary = {
        "recipe": recipe.name,
        "test_accuracy": best["test_accuracy"],
        "best_run": best["recipe"],
        "epochs": recipe.config["epochs"],
        "wall_seconds": round(time.perf_counter() - started, 3),
        "run_dir": str(root),
        "plot": str(plot),
        "runs": [dict(label=run["label"], group=run.get("group", "runs"), **{k: r[k] for k in ("test_accuracy", "best_test_accuracy", "wall_seconds", "run_dir")})
                 for (run, _), r in zip(runs, results)],
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(f"\nonebit {recipe.name}: done, {len(results)} runs")
    for item in summary["runs"]:
        say(f"  {item['label']:<28} test {100 * (item['test_accuracy'] or 0):6.2f}%")
    say(f"  plot           {plot}\n  run folder     {root}")
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
        raise ConfigError(f"approximation-viewpoint needs optimizer=latent (latent weights), got {config['optimizer']!r}")
    summary = train(config, recipe=recipe.name, source=recipe.source, run_dir=run_dir, verbose=verbose, stream=stream)
    run_dir = Path(summary["run_dir"])
    ckpt = checkpoint.load(run_dir / "last.pt")
    train_set, test_set = load_data(config)
    model = build_model(config, len(train_set.classes), train_set.shape)
    model.load_state_dict(ckpt["model"])
    device = torch.device("cpu")
    batch = max(config["batch_size"], 256)
    test = Loader(test_set, batch, train=False)
    train_plain = Loader(train_set, batch, train=False)  # training images, no augmentation

    def acc(m):
        s = evaluate(m, test, device).tolist()
        return s[1] / s[2]

    latent = latent_view(model)
    result = {
        "binary_weights": acc(model),
        "latent_weights": acc(latent),
        "latent_weights_bn_reestimated": acc(reestimate_batchnorm(latent, train_plain, device).eval()),
    }
    (run_dir / "approximation.json").write_text(json.dumps(result, indent=2) + "\n")
    summary.update({f"accuracy_{k}": v for k, v in result.items()})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if verbose:
        stream.write("\napproximation viewpoint (test accuracy):\n")
        stream.write(f"  binary weights (as trained)                 {100 * result['binary_weights']:6.2f}%\n")
        stream.write(f"  latent weights                              {100 * result['latent_weights']:6.2f}%\n")
        stream.write(f"  latent weights, batch norm re-estimated     {100 * result['latent_weights_bn_reestimated']:6.2f}%\n")
        stream.flush()
    return summary


# ------------------------------------------------------------------------- finished runs


def read_run_config(run_dir: str | os.PathLike) -> tuple[str, dict]:
    """(recipe name, config) from a run folder's ``config.toml``."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a onebit run folder: expected {path}")
    data = tomllib.loads(path.read_text())
    config = {k: parse_value(k, v) for k, v in data.get("config", {}).items()}
    return data.get("recipe", {}).get("name", "custom"), validate(config)


def evaluate_run(run_dir: str | os.PathLike, which: str = "best", overrides: dict | None = None) -> dict:
    """Test loss/accuracy of a run's ``best.pt`` (or ``last.pt``) on its test set."""
    run_dir = Path(run_dir)
    _, config = read_run_config(run_dir)
    config.update(overrides or {})
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        path = run_dir / "last.pt"
    if not path.is_file():
        raise ConfigError(f"no checkpoint in {run_dir}: expected best.pt or last.pt")
    ckpt = checkpoint.load(path)
    torch.set_num_threads(config["threads"] or os.cpu_count() or 1)
    train_set, test_set = load_data(config)
    model = build_model(config, len(train_set.classes), train_set.shape)
    model.load_state_dict(ckpt["model"])
    s = evaluate(model, Loader(test_set, max(config["batch_size"], 256), train=False), torch.device("cpu")).tolist()
    return {"checkpoint": str(path), "epoch": ckpt["epoch"], "test_loss": s[0] / s[2], "test_accuracy": s[1] / s[2], "examples": int(s[2])}
