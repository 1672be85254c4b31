"""The training loop: one loop for every recipe (Bop + Adam, or latent weights + Adam/SGD).

``train(config)`` builds data, model and optimizer from a config dict, trains with a progress bar,
and writes the run folder ``runs/<recipe>/<timestamp>/``:

    config.toml     the resolved config (+ recipe name and source)
    metrics.csv     one row per epoch: loss, train/test accuracy, lr, gamma, flips, log flip ratio, seconds
    flips.csv       one row per step: flips and log flip ratio, in total and per binary kernel
    last.pt         checkpoint after every epoch (and on Ctrl-C), written atomically
    best.pt         the checkpoint of the best test accuracy so far
    summary.json    test_accuracy (fraction), epochs, wall_seconds, ...
    events.*        TensorBoard events (when tensorboard is installed)
    accuracy.png, flips.png

Determinism: ``seed`` fixes the initialisation, the data order and the augmentation; ``resume``
continues bit-identically (2 epochs straight == 1 epoch + resume + 1 epoch). Host syncs happen
every ``log_every`` steps and once per epoch, never per step; under torchrun only rank 0 prints
and writes, and metric sums are all-reduced when read.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .. import __version__, settings
from ..layers import popcount
from ..data import Loader
from ..metrics import LOG_EPS
from . import checkpoint, distributed
from .build import FlipSource, build_model, build_optimizer, build_schedulers, load_data
from .config import ConfigError, to_toml, validate
from .progress import Progress
from .step import evaluate, make_train_step, reestimate_batchnorm, to_device

__all__ = ["Interrupted", "train", "new_run_dir", "METRIC_COLUMNS"]

METRIC_COLUMNS = [
    "epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
    "lr", "gamma", "flips", "log_flip_ratio", "seconds",
]


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint; ``run_dir`` resumes it."""

    def __init__(self, run_dir: Path, epoch: int, batch: int):
        super().__init__(f"interrupted at epoch {epoch + 1}, batch {batch}; checkpoint saved in {run_dir}")
        self.run_dir = run_dir


def new_run_dir(out: str | os.PathLike, recipe: str) -> Path:
    """A fresh ``out/<recipe>/<YYYYmmdd-HHMMSS>[-N]`` folder."""
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _StopFlag:
    """SIGINT handler: the first Ctrl-C asks the loop to stop after the current step (it saves a
    checkpoint); a second one raises KeyboardInterrupt at once."""

    def __init__(self, stream):
        self.requested = False
        self.stream = stream
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.stream.write("\nCtrl-C: saving a checkpoint after this step (press again to abort)\n")
        self.stream.flush()

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    tmp = run_dir / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, METRIC_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    os.replace(tmp, run_dir / "metrics.csv")


def _truncate_flips(path: Path, completed: int) -> None:
    """Keep the rows of the first ``completed`` epochs (a resume rewrites the later ones)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if int(r[1]) <= completed]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def _append_flips(path: Path, names: list[str], first_step: int, epoch: int, flips: np.ndarray, numel: int) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["step", "epoch", "flips", "log_flip_ratio"] + [f"flips/{n}" for n in names])
        for i, row in enumerate(flips):
            total = int(row.sum())
            writer.writerow([first_step + i + 1, epoch, total, f"{math.log(total / numel + LOG_EPS):.6f}"] + row.tolist())


def _tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(run_dir))


def _fmt_pct(x) -> str:
    return "  -   " if x is None else f"{100 * x:6.2f}%"


def train(
    config: dict,
    *,
    recipe: str = "custom",
    source: str = "",
    run_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    verbose: bool = True,
    stream=None,
    on_step=None,
) -> dict:
    """Train from ``config`` (see ``onebit.training.config``); returns the run summary dict.

    ``resume``: a run folder whose ``last.pt`` to continue from (its folder is reused).
    ``on_step(epoch, batch, step)``: called after every optimizer step (notebooks, tests).
    Raises ``Interrupted`` after Ctrl-C (checkpoint saved), ``ConfigError``/``DataError`` on bad input.
    """
    config = validate(dict(config))
    mode = config.get("xnor_forward", "auto")  # run folders from before the key: auto
    if mode == "on" and not popcount.available():
        raise ConfigError("xnor_forward='on' needs numba, which is not installed (pip install 'onebit[jit]'); "
                          "allowed without it: auto, off")
    with settings.override(popcount_forward=mode):  # the switch holds for this run (this thread) only
        return _train(config, recipe=recipe, source=source, run_dir=run_dir, resume=resume, verbose=verbose,
                      stream=stream, on_step=on_step)


def _train(config, *, recipe, source, run_dir, resume, verbose, stream, on_step) -> dict:
    started = time.perf_counter()
    stream = stream if stream is not None else sys.stdout
    torch.set_num_threads(config["threads"] or distributed.default_threads())
    dist = distributed.setup(_device(config["device"]))
    device, main = dist.device, dist.is_main
    distributed.local_batch(config["batch_size"], dist)  # a clear error when the global batch does not divide

    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt = checkpoint.load(run_dir / "last.pt")
    _seed_everything(config["seed"])

    train_set, test_set = load_data(config)
    cl = config["channels_last"]
    model = build_model(config, len(train_set.classes), train_set.shape).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    optimizer, bop = build_optimizer(config, model)
    train_loader = Loader(train_set, config["batch_size"], train=True, seed=config["seed"], rank=dist.rank, world_size=dist.world_size)
    test_loader = Loader(test_set, max(config["batch_size"], 256), train=False, rank=dist.rank, world_size=dist.world_size)
    steps_per_epoch = len(train_loader) if not config["max_steps"] else min(len(train_loader), config["max_steps"])
    epochs = config["epochs"]
    schedulers = build_schedulers(config, optimizer, bop, steps_per_epoch, steps_per_epoch * epochs)

    state = dict(epoch=0, batch=0, step=0, history=[], best=None, best_epoch=None, wall_seconds=0.0, partial=None)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for s, sd in zip(schedulers, ckpt["schedulers"]):
            s.load_state_dict(sd)
        for key in state:
            state[key] = ckpt[key]
        checkpoint.set_rng_state(ckpt["rng"])
    flip_source = FlipSource(model, bop)

    net = model
    if dist.enabled:
        if config["sync_batchnorm"]:
            net = distributed.convert_sync_batchnorm(net, device)  # torch's on CUDA, gloo's on CPU
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    net.train()
    train_step = make_train_step(net, optimizer, schedulers)

    writer = None
    if main:
        run_dir = Path(run_dir) if run_dir is not None else new_run_dir(config["out"], recipe)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(
            to_toml({
                "recipe": {"name": recipe, "source": source, "onebit": __version__}, "config": config,
                "distributed": distributed.describe(config["batch_size"], dist),
            })
        )
        _truncate_flips(run_dir / "flips.csv", state["epoch"])
        writer = _tensorboard(run_dir, config["tensorboard"])
    run_dir = Path(distributed.broadcast_object(str(run_dir) if main else None, dist))
    # collectives at log points must run on every rank: all ranks follow rank 0's terminal
    live_progress = distributed.broadcast_object(bool(verbose and main and hasattr(stream, "isatty") and stream.isatty()), dist)
    check_every = config["check_replicas_every"] if dist.enabled else 0

    def say(text: str) -> None:
        if verbose and main:
            stream.write(text + "\n")
            stream.flush()

    n_binary = flip_source.numel
    opt_text = (
        f"Bop gamma={config['gamma']:g} threshold={config['threshold']:g} + {config['real_optimizer']} lr={config['lr']:g}"
        if bop is not None else f"latent weights + {config['real_optimizer']} lr={config['lr']:g}"
    )
    say(
        f"onebit {recipe}: {config['model']} on {config['dataset']} ({len(train_set)} train / {len(test_set)} test), "
        f"{opt_text}, batch {config['batch_size']}"
        + (f" ({config['batch_size'] // dist.world_size} per process x {dist.world_size} processes)" if dist.enabled else "")
        + f", {epochs} epochs, {n_binary:,} binary weights"
    )
    if ckpt is not None:
        say(f"resuming {run_dir} at epoch {state['epoch'] + 1}, batch {state['batch']}")
    else:
        say(f"run folder {run_dir}")

    def make_checkpoint(epoch: int, batch: int, partial) -> dict:
        return {
            "format": 1, "onebit": __version__, "torch": torch.__version__, "recipe": recipe, "source": source,
            "config": config, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedulers": [s.state_dict() for s in schedulers], "epoch": epoch, "batch": batch,
            "step": state["step"], "history": state["history"], "best": state["best"],
            "best_epoch": state["best_epoch"], "partial": partial, "rng": checkpoint.rng_state(),
            "wall_seconds": state["wall_seconds"] + (time.perf_counter() - started),
        }

    last = None
    with _StopFlag(stream) as stop:
        for epoch in range(state["epoch"], epochs):
            train_loader.set_epoch(epoch)
            start = state["batch"] if epoch == state["epoch"] else 0
            sums = torch.zeros(3, dtype=torch.float64, device=device)
            flips = torch.zeros(steps_per_epoch, len(flip_source), dtype=torch.int64, device=device)
            seconds = 0.0
            partial = state["partial"] if epoch == state["epoch"] else None
            if partial is not None and main:  # saved sums are global: rank 0 carries them
                sums.copy_(partial["sums"])
                flips.copy_(partial["flips"])
                seconds = partial["seconds"]
            progress = Progress(steps_per_epoch, f"epoch {epoch + 1}/{epochs}", stream, enabled=verbose and main)
            progress.update(start)
            t_epoch = time.perf_counter()
            for b, (x, y) in enumerate(train_loader.batches(start), start=start):
                if b >= steps_per_epoch:
                    break
                x, y = to_device(x, device, cl), y.to(device, non_blocking=True)
                loss, correct = train_step(x, y)
                sums[0] += loss.double() * len(y)
                sums[1] += correct
                sums[2] += len(y)
                if len(flip_source):
                    flips[b] = flip_source.read()  # Bop's flips: the same on every rank (checked below)
                state["step"] += 1
                if check_every and state["step"] % check_every == 0:
                    distributed.check_replicas(flip_source.params, flip_source.names, dist, state["step"])
                if (b + 1) % config["log_every"] == 0 and live_progress:
                    s = distributed.all_reduce_sum(sums.clone(), dist).tolist()
                    progress.update(b + 1, f"loss {s[0] / s[2]:.4f} acc {100 * s[1] / s[2]:.2f}%")
                else:
                    progress.update(b + 1)
                if on_step is not None:
                    on_step(epoch, b, state["step"])
                stopping = stop.requested
                if dist.enabled:  # every rank stops at the same step (agreed at log points)
                    stopping = (b + 1) % config["log_every"] == 0 and distributed.any_rank(stopping, dist)
                if stopping:
                    seconds += time.perf_counter() - t_epoch
                    total = distributed.all_reduce_sum(sums.clone(), dist)
                    part = {"sums": total.cpu(), "flips": flips.cpu(), "seconds": seconds}
                    if main:
                        checkpoint.save_atomic(make_checkpoint(epoch, b + 1, part), run_dir / "last.pt")
                    if writer is not None:
                        writer.close()
                    raise Interrupted(run_dir, epoch, b + 1)
            seconds += time.perf_counter() - t_epoch

            s = distributed.all_reduce_sum(sums.clone(), dist).tolist()
            if dist.enabled and config["check_replicas_every"]:
                distributed.check_replicas(flip_source.params, flip_source.names, dist, state["step"])
            flips_host = flips.cpu().numpy()
            step_totals = flips_host.sum(1)
            mean_ratio = float(step_totals.mean()) / n_binary if n_binary else 0.0
            test_loss = test_acc = None
            if (epoch + 1) % config["eval_every"] == 0 or epoch + 1 == epochs:
                if config["bn_reestimate"]:
                    # the same number of examples on every rank (synchronized batch norms need equal batch counts)
                    n = (config["bn_reestimate"] if config["bn_reestimate"] > 0 else len(train_set)) // dist.world_size
                    plain = Loader(train_set, test_loader.batch_size, train=False, rank=dist.rank, world_size=dist.world_size)
                    reestimate_batchnorm(model, plain, device, n, cl)
                # every rank evaluates (and rank 0 saves) the same statistics: averaged over ranks,
                # or rank 0's when batch norms are synchronized
                distributed.sync_buffers(model, dist, average=not config["sync_batchnorm"])
                t = distributed.all_reduce_sum(evaluate(net, test_loader, device, cl), dist).tolist()
                test_loss, test_acc = t[0] / t[2], t[1] / t[2]
            lrs = [g["lr"] for o in (optimizer.optimizers if bop is not None else [optimizer]) if o is not bop for g in o.param_groups]
            row = {
                "epoch": epoch + 1, "step": state["step"], "train_loss": round(s[0] / s[2], 6),
                "train_accuracy": round(s[1] / s[2], 6),
                "test_loss": None if test_loss is None else round(test_loss, 6),
                "test_accuracy": None if test_acc is None else round(test_acc, 6),
                "lr": lrs[0] if lrs else None, "gamma": bop.gamma if bop is not None else None,
                "flips": int(step_totals.sum()),
                "log_flip_ratio": round(math.log(mean_ratio + LOG_EPS), 6) if n_binary else None,
                "seconds": round(seconds, 3),
            }
            state["history"].append(row)
            improved = test_acc is not None and (state["best"] is None or test_acc > state["best"])
            if improved:
                state["best"], state["best_epoch"] = test_acc, epoch + 1
            state["epoch"], state["batch"], state["partial"] = epoch + 1, 0, None
            if main:
                _write_metrics(run_dir, state["history"])
                first = state["step"] - len(flips_host)
                _append_flips(run_dir / "flips.csv", flip_source.names, first, epoch + 1, flips_host, max(n_binary, 1))
                if writer is not None:
                    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "gamma", "log_flip_ratio"):
                        if row[key] is not None:
                            writer.add_scalar(f"epoch/{key}", row[key], epoch + 1)
                    for i, total in enumerate(step_totals):
                        writer.add_scalar("step/log_flip_ratio", math.log(total / max(n_binary, 1) + LOG_EPS), first + i + 1)
                    writer.flush()
                last = make_checkpoint(epoch + 1, 0, None)
                checkpoint.save_atomic(last, run_dir / "last.pt")
                if improved:
                    checkpoint.save_atomic(last, run_dir / "best.pt")
            flip_text = f"  log flip ratio {row['log_flip_ratio']:.2f}" if n_binary else ""
            progress.finish(
                f"loss {row['train_loss']:.4f}  train {_fmt_pct(row['train_accuracy'])}  "
                f"test {_fmt_pct(row['test_accuracy'])}{flip_text}  {seconds:.1f}s"
            )

    if writer is not None:
        writer.close()
    wall = state["wall_seconds"] + (time.perf_counter() - started)
    final = state["history"][-1] if state["history"] else {}
    summary = {
        "recipe": recipe,
        "test_accuracy": final.get("test_accuracy"),
        "best_test_accuracy": state["best"],
        "best_epoch": state["best_epoch"],
        "train_accuracy": final.get("train_accuracy"),
        "epochs": state["epoch"],
        "steps": state["step"],
        "wall_seconds": round(wall, 3),
        "train_seconds": round(sum(r["seconds"] for r in state["history"]), 3),
        "seed": config["seed"],
        "binary_weights": n_binary,
        "run_dir": str(run_dir),
    }
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if config["plots"]:
            from .plots import plot_run

            try:
                plot_run(run_dir)
            except Exception as e:  # a plot must never lose a finished run
                say(f"warning: plots not written ({e})")
            summary["wall_seconds"] = round(state["wall_seconds"] + (time.perf_counter() - started), 3)
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        say(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """The end-of-run screen: test accuracy, epochs, wall time, run folder."""
    best = ""
    if summary.get("best_test_accuracy") is not None:
        best = f"  (best {100 * summary['best_test_accuracy']:.2f}% at epoch {summary['best_epoch']})"
    acc = summary.get("test_accuracy")
    lines = [
        "",
        f"onebit {summary['recipe']}: done",
        f"  test accuracy  {'-' if acc is None else f'{100 * acc:.2f}%'}{best}",
        f"  epochs         {summary['epochs']} ({summary['steps']} steps, {summary['train_seconds']:.1f} s training)",
        f"  wall time      {summary['wall_seconds']:.1f} s",
        f"  run folder     {summary['run_dir']}",
    ]
    return "\n".join(lines)
