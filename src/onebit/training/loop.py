"""The training loop: one loop for every recipe (Bop + Adam, or latent weights + Adam/SGD).

``train(config)`` builds data, model and optimizer from a config dict, trains with a progress bar,
and writes the run folder ``runs/<recipe>/<timestamp>/`` (config.toml, metrics.csv, flips.csv,
last.pt, best.pt, summary.json, TensorBoard events, plots; see ``onebit.training.runs``).

Determinism: ``seed`` fixes the initialisation, the data order and the augmentation; ``resume``
continues bit-identically (2 epochs straight == 1 epoch + resume + 1 epoch). Host syncs happen
every ``log_every`` steps and once per epoch, never per step; under torchrun only rank 0 prints
and writes, and metric sums are all-reduced when read.

Crashes: ``last.pt`` is the commit point. At an epoch's end rank 0 writes metrics.csv, appends
flips.csv, writes best.pt, then last.pt (every file atomically but flips.csv, whose rows of epochs
after the checkpoint a resume drops); mid-epoch checkpoints (``checkpoint_every``, Ctrl-C) write
last.pt only. A run killed at any moment resumes from its last.pt bit for bit (``resume_run``);
one killed before its first checkpoint starts over. A failed write (disk full) ends the run with
``SaveError`` and leaves the previous checkpoint intact.
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
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from .. import __version__, settings
from ..data import Loader
from ..layers import popcount
from ..metrics import LOG_EPS
from . import checkpoint, distributed
from .build import FlipSource, build_model, build_optimizer, build_schedulers, data_workers, load_data
from .config import ConfigError, apply_overrides, checkpoint_interval, read_toml, to_toml, validate
from .progress import Progress
from .runs import CheckpointSaver, RunFolder, new_run_dir, read_run_config
from .step import configure_device, evaluate, make_train_step, reestimate_batchnorm, resolve_precision, to_device
from .tensorboard import open_tensorboard

__all__ = [
    "Interrupted",
    "METRIC_COLUMNS",
    "SaveError",
    "TrainState",
    "Trainer",
    "format_summary",
    "resume_run",
    "train",
]

METRIC_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "lr",
    "gamma",
    "flips",
    "log_flip_ratio",
    "seconds",
    "data_seconds",
]


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint; ``run_dir`` resumes it."""

    def __init__(self, run_dir: Path, epoch: int, batch: int):
        super().__init__(f"interrupted at epoch {epoch + 1}, batch {batch}; checkpoint saved in {run_dir}")
        self.run_dir, self.epoch, self.batch = run_dir, epoch, batch

    def __reduce__(self):  # picklable: a sweep's worker process raises it to the parent
        return type(self), (self.run_dir, self.epoch, self.batch)


class SaveError(OSError):
    """A run-folder file could not be written (disk full, read-only, ...). The run stops (on every
    rank); the message is one line saying which checkpoint is intact and how to continue."""


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


def _write_metrics(path: Path, history: list[dict]) -> None:
    """Rewrite ``metrics.csv`` atomically: one row per epoch, empty cells for None."""
    with checkpoint.atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, METRIC_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})


def _flips_header(names: list[str]) -> list[str]:
    return ["step", "epoch", "flips", "log_flip_ratio"] + [f"flips/{n}" for n in names]


def _row_epoch(row: list[str], width: int) -> float:
    """The epoch of a flips.csv row; infinity for a row cut off by a killed process."""
    try:
        return int(row[1]) if len(row) == width else math.inf
    except ValueError:
        return math.inf


def _truncate_flips(path: Path, names: list[str], completed: int) -> None:
    """Keep the rows of the first ``completed`` epochs (a resume writes the later ones again) and
    drop what a killed process left after them (rows of an epoch after its last checkpoint, a row
    cut off); atomically. No file when no epoch was completed."""
    if completed == 0 or not path.exists():
        path.unlink(missing_ok=True)
        return
    header = _flips_header(names)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    keep = [r for r in rows if _row_epoch(r, len(header)) <= completed]
    with checkpoint.atomic_write(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + keep)


def _append_flips(path: Path, names: list[str], first_step: int, epoch: int, flips: np.ndarray, numel: int) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(_flips_header(names))
        for i, row in enumerate(flips):
            total = int(row.sum())
            writer.writerow(
                [first_step + i + 1, epoch, total, f"{math.log(total / numel + LOG_EPS):.6f}"] + row.tolist()
            )
        f.flush()
        os.fsync(f.fileno())  # on disk before the checkpoint that commits the epoch


def _reason(e: OSError) -> str:
    """Why a write failed, in a few words ("No space left on device")."""
    return e.strerror or str(e) or type(e).__name__


def _position(epoch: int, batch: int) -> str:
    """Where a checkpoint stands, in words."""
    return f"the end of epoch {epoch}" if batch == 0 else f"epoch {epoch + 1}, batch {batch}"


def _fmt_pct(x) -> str:
    return "  -   " if x is None else f"{100 * x:6.2f}%"


@dataclass
class TrainState:
    """Where a run stands; every checkpoint holds these fields under their names."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # completed batches of epoch ``epoch`` (after Ctrl-C), else 0
    step: int = 0  # optimizer steps so far
    history: list = field(default_factory=list)  # one metrics.csv row per completed epoch
    best: float | None = None  # best test accuracy so far
    best_epoch: int | None = None
    wall_seconds: float = 0.0  # wall time of the sessions before this one (resume)
    partial: dict | None = None  # metric sums, flips and seconds of the interrupted epoch

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        return cls(**{f.name: ckpt[f.name] for f in fields(cls)})


@dataclass
class _Epoch:
    """One epoch in progress: metric sums [loss, correct, count] and per-step flips (on the device)."""

    index: int
    start: int  # first batch (> 0 when resuming mid-epoch)
    sums: torch.Tensor
    flips: torch.Tensor
    seconds: float = 0.0
    data_seconds: float = 0.0  # of ``seconds``: the time the step waited for its batch
    progress: Progress | None = None
    t0: float = 0.0
    curves: list = field(default_factory=list)  # per step (TensorBoard only): (schedules, loss on the device)

    def lap(self) -> None:
        now = time.perf_counter()
        self.seconds += now - self.t0
        self.t0 = now

    def data_wait(self) -> float:
        """The share of the epoch's training time spent waiting for data (so far)."""
        elapsed = self.seconds + time.perf_counter() - self.t0
        return self.data_seconds / elapsed if elapsed > 0 else 0.0

    def timed(self, batches):
        """``batches``, adding the time spent waiting for each to ``data_seconds``."""
        batches = iter(batches)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            self.data_seconds += time.perf_counter() - t
            if batch is None:
                return
            yield batch


class Trainer:
    """One training run from a validated config: ``Trainer(config, ...).run()`` returns the summary
    dict (``train`` does this under the config's ``xnor_forward`` setting). The constructor sets up
    processes, data, model, optimizer and the run folder, and restores a checkpoint to resume."""

    def __init__(
        self,
        config: dict,
        *,
        recipe: str = "custom",
        source: str = "",
        run_dir: str | os.PathLike | None = None,
        resume: str | os.PathLike | None = None,
        verbose: bool = True,
        stream: TextIO | None = None,
        on_step: Callable[[int, int, int], object] | None = None,
    ) -> None:
        self.started = time.perf_counter()
        self.config, self.recipe, self.source = config, recipe, source
        self.verbose, self.on_step = verbose, on_step
        self.stream = stream if stream is not None else sys.stdout
        torch.set_num_threads(config["threads"] or distributed.default_threads())
        self.dist = distributed.setup(_device(config["device"]))
        self.device, self.main = self.dist.device, self.dist.is_main
        distributed.local_batch(config["batch_size"], self.dist)  # a clear error when the global batch does not divide
        ckpt = None
        if resume is not None:
            run_dir = Path(resume)
            last = RunFolder(run_dir).last
            ckpt = checkpoint.load(last)
        _seed_everything(config["seed"])
        self._build()
        self.state = TrainState()
        self.committed = None  # (epoch, batch) of the checkpoint in last.pt, when there is one
        if ckpt is not None:
            self._resume(ckpt, last)
            self.committed = (self.state.epoch, self.state.batch)
        self.checkpoint_steps, self.checkpoint_seconds = checkpoint_interval(config.get("checkpoint_every", "off"))
        self.saved_at = time.monotonic()
        self.flip_source = FlipSource(self.model, self.bop)
        self._wrap()
        self._open_run_folder(run_dir)
        self._header(resumed=ckpt is not None)

    # ------------------------------------------------------------------------------ set-up

    def _build(self) -> None:
        """Data sets, model, optimizer, loaders and schedulers (in this order: the seed's draws)."""
        c, d = self.config, self.dist
        self.train_set, self.test_set = load_data(c)
        self.channels_last = c["channels_last"]
        self.precision, self.precision_why = resolve_precision(c.get("precision", "fp32"), self.device)
        configure_device(self.device)
        self.model = build_model(c, len(self.train_set.classes), self.train_set.shape).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer, self.bop = build_optimizer(c, self.model)
        self.loader_options = dict(
            rank=d.rank,
            world_size=d.world_size,
            num_workers=data_workers(c, d.local_world_size if d.enabled else 1),
            pin_memory=self.device.type == "cuda",
            device=self.device if self.device.type == "cuda" else None,  # image folders: floats made there
            report=self._warn,
        )
        self.train_loader = Loader(self.train_set, c["batch_size"], train=True, seed=c["seed"], **self.loader_options)
        self.test_loader = Loader(self.test_set, max(c["batch_size"], 256), train=False, **self.loader_options)
        n = len(self.train_loader)
        self.steps_per_epoch = n if not c["max_steps"] else min(n, c["max_steps"])
        self.epochs = c["epochs"]
        self.schedulers = build_schedulers(
            c, self.optimizer, self.bop, self.steps_per_epoch, self.steps_per_epoch * self.epochs
        )

    def _resume(self, ckpt: dict, path) -> None:
        """Restore weights, optimizer and schedulers, the position and every RNG from a checkpoint
        (weights that do not fit the model: one line naming ``path``)."""
        checkpoint.load_model_state(self.model, ckpt["model"], path, "the run's model")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for s, sd in zip(self.schedulers, ckpt["schedulers"]):
            s.load_state_dict(sd)
        self.state = TrainState.from_checkpoint(ckpt)
        checkpoint.set_rng_state(ckpt["rng"])

    def _wrap(self) -> None:
        """The network that trains: the model, under torchrun in DistributedDataParallel."""
        net = self.model
        if self.dist.enabled:
            if self.config["sync_batchnorm"]:
                net = distributed.convert_sync_batchnorm(net, self.device)  # torch's on CUDA, gloo's on CPU
            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if self.config.get("compile", False):
            net = torch.compile(net)
        net.train()
        self.net = net
        self.train_step = make_train_step(net, self.optimizer, self.schedulers, self.precision, self.device)

    def _open_run_folder(self, run_dir) -> None:
        """Rank 0 creates (or tidies) the folder, writes config.toml and opens TensorBoard; every
        rank learns the folder and whether progress is drawn live."""
        self.writer, error = None, None
        if self.main:
            try:
                run_dir = Path(run_dir) if run_dir is not None else new_run_dir(self.config["out"], self.recipe)
                self._prepare_folder(RunFolder(run_dir))
            except OSError as e:
                error = f"cannot write the run folder {run_dir or self.config['out']}: {_reason(e)}"
            else:
                self.writer = open_tensorboard(run_dir, self.config["tensorboard"])
        run_dir, error = distributed.broadcast_object((str(run_dir), error) if self.main else None, self.dist)
        if error is not None:
            raise SaveError(error)
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.saver = CheckpointSaver(self.folder)
        # collectives at log points must run on every rank: all ranks follow rank 0's terminal
        tty = self.verbose and self.main and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.live_progress = distributed.broadcast_object(bool(tty), self.dist)
        self.check_every = self.config["check_replicas_every"] if self.dist.enabled else 0

    def _prepare_folder(self, folder: RunFolder) -> None:
        """The folder as the checkpoint left it: config.toml written, what a killed process left
        removed (temp files; metrics.csv and flips.csv rows of epochs after the checkpoint)."""
        folder.path.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_temp_files(folder.path)
        tables = {
            "recipe": {"name": self.recipe, "source": self.source, "onebit": __version__},
            "config": self.config,
            "distributed": distributed.describe(self.config["batch_size"], self.dist),
        }
        checkpoint.write_text_atomic(folder.config, to_toml(tables))
        if self.state.history:
            _write_metrics(folder.metrics, self.state.history)
        else:
            folder.metrics.unlink(missing_ok=True)
        _truncate_flips(folder.flips, self.flip_source.names, self.state.epoch)

    def _header(self, resumed: bool) -> None:
        c, d = self.config, self.dist
        if self.bop is not None:
            opt = f"Bop gamma={c['gamma']:g} threshold={c['threshold']:g} + {c['real_optimizer']} lr={c['lr']:g}"
        else:
            opt = f"latent weights + {c['real_optimizer']} lr={c['lr']:g}"
        split = f" ({c['batch_size'] // d.world_size} per process x {d.world_size} processes)" if d.enabled else ""
        self._say(
            f"onebit {self.recipe}: {c['model']} on {c['dataset']} ({len(self.train_set)} train / "
            f"{len(self.test_set)} test), {opt}, batch {c['batch_size']}{split}, {self.epochs} epochs, "
            f"{self.flip_source.numel:,} binary weights"
        )
        note = getattr(self.train_set, "image_note", "")
        if note:
            workers = self.train_loader.num_workers
            auto = " (num_workers auto: this process's share of the cores)" if c.get("num_workers", -1) < 0 else ""
            self._say(f"data: {note}" + (f", {workers} worker processes{auto}" if workers else ""))
        if self.precision != "fp32" or c.get("compile", False):
            compiled = ", model compiled (torch.compile)" if c.get("compile", False) else ""
            self._say(f"precision {self.precision} ({self.precision_why}){compiled}")
        if resumed:
            self._say(f"resuming {self.run_dir} at epoch {self.state.epoch + 1}, batch {self.state.batch}")
        else:
            self._say(f"run folder {self.run_dir}")

    def _say(self, text: str) -> None:
        if self.verbose and self.main:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _warn(self, text: str) -> None:
        """A warning from any process (each rank decodes its own images)."""
        if self.verbose:
            rank = f"[rank {self.dist.rank}] " if self.dist.enabled else ""
            self.stream.write(f"\n{rank}warning: {text}\n")
            self.stream.flush()

    # ------------------------------------------------------------------------------ training

    def run(self) -> dict:
        """Train the remaining epochs; returns the summary. Ctrl-C saves ``last.pt`` and raises
        ``Interrupted``."""
        try:
            with _StopFlag(self.stream) as self.stop:
                for epoch in range(self.state.epoch, self.epochs):
                    self._end_epoch(self._train_epoch(epoch))
            if self.writer is not None and self.state.history:
                final = dict(self.state.history[-1], best_test_accuracy=self.state.best)
                self.writer.hparams(self.config, final, self.state.step)
        finally:
            self.train_loader.close()
            self.test_loader.close()
            if self.writer is not None:
                self.writer.close()
        return self._finish()

    def _train_epoch(self, epoch: int) -> _Epoch:
        ep = self._begin_epoch(epoch)
        for b, (x, y) in enumerate(ep.timed(self.train_loader.batches(ep.start, self.steps_per_epoch)), ep.start):
            self._step(ep, b, x, y)
            if self._stopping(b):
                self._interrupt(ep, b + 1)
            if b + 1 < self.steps_per_epoch and self._checkpoint_due(b):
                self._save_partial(ep, b + 1)
        ep.lap()
        return ep

    def _begin_epoch(self, epoch: int) -> _Epoch:
        """Fresh sums, or the saved ones of an epoch interrupted by Ctrl-C."""
        self.train_loader.set_epoch(epoch)
        resuming = epoch == self.state.epoch
        ep = _Epoch(
            epoch,
            self.state.batch if resuming else 0,
            sums=torch.zeros(3, dtype=torch.float64, device=self.device),
            flips=torch.zeros(self.steps_per_epoch, len(self.flip_source), dtype=torch.int64, device=self.device),
        )
        partial = self.state.partial if resuming else None
        if partial is not None and self.main:  # saved sums are global: rank 0 carries them
            ep.sums.copy_(partial["sums"])
            ep.flips.copy_(partial["flips"])
            ep.seconds = partial["seconds"]
            ep.data_seconds = partial.get("data_seconds", 0.0)  # checkpoints from before the column: 0
        ep.progress = Progress(
            self.steps_per_epoch,
            f"epoch {epoch + 1}/{self.epochs}",
            self.stream,
            enabled=self.verbose and self.main,
            start=ep.start,
        )
        ep.t0 = time.perf_counter()
        return ep

    def _step(self, ep: _Epoch, b: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on batch ``b``; metrics stay on the device (read at log points)."""
        x, y = to_device(x, self.device, self.channels_last), y.to(self.device, non_blocking=True)
        schedules = self._schedules() if self.writer is not None else None  # the values this step uses
        loss, correct = self.train_step(x, y)
        if schedules is not None:
            ep.curves.append((schedules, loss))
        ep.sums[0] += loss.double() * len(y)
        ep.sums[1] += correct
        ep.sums[2] += len(y)
        if len(self.flip_source):
            ep.flips[b] = self.flip_source.read()  # Bop's flips: the same on every rank (checked below)
        self.state.step += 1
        if self.check_every and self.state.step % self.check_every == 0:
            distributed.check_replicas(self.flip_source.params, self.flip_source.names, self.dist, self.state.step)
        if (b + 1) % self.config["log_every"] == 0 and self.live_progress:
            s = distributed.all_reduce_sum(ep.sums.clone(), self.dist).tolist()
            ep.progress.update(b + 1, loss=s[0] / s[2], acc=s[1] / s[2], data_wait=ep.data_wait())
        else:
            ep.progress.update(b + 1)
        if self.on_step is not None:
            self.on_step(ep.index, b, self.state.step)

    def _stopping(self, b: int) -> bool:
        """Whether Ctrl-C asks to stop after batch ``b``; every rank stops at the same step
        (agreed at log points)."""
        stopping = self.stop.requested
        if self.dist.enabled:
            stopping = (b + 1) % self.config["log_every"] == 0 and distributed.any_rank(stopping, self.dist)
        return stopping

    def _checkpoint_due(self, b: int) -> bool:
        """Whether ``checkpoint_every`` asks for a mid-epoch checkpoint after batch ``b``: every N
        steps (the same step on every rank), or when the time is up (rank 0's clock, agreed at log
        points under torchrun)."""
        if self.checkpoint_steps:
            return self.state.step % self.checkpoint_steps == 0
        if not self.checkpoint_seconds:
            return False
        due = self.main and time.monotonic() - self.saved_at >= self.checkpoint_seconds
        if self.dist.enabled:
            due = (b + 1) % self.config["log_every"] == 0 and distributed.any_rank(due, self.dist)
        return due

    def _interrupt(self, ep: _Epoch, batch: int) -> None:
        """Save ``last.pt`` mid-epoch and raise ``Interrupted``."""
        self._save_partial(ep, batch)
        raise Interrupted(self.run_dir, ep.index, batch)

    def _save_partial(self, ep: _Epoch, batch: int) -> None:
        """Save ``last.pt`` mid-epoch: the epoch's global sums so far, its flips and seconds, and the
        batch to continue from (a resume goes on from there bit for bit)."""
        ep.lap()
        total = distributed.all_reduce_sum(ep.sums.clone(), self.dist)
        partial = {"sums": total.cpu(), "flips": ep.flips.cpu(), "seconds": ep.seconds, "data_seconds": ep.data_seconds}
        self._commit(ep.index, batch, partial, logs=lambda: self._log_steps(ep))
        ep.t0 = time.perf_counter()  # the epoch's seconds leave out the saving

    # ------------------------------------------------------------------------------ epoch end

    def _end_epoch(self, ep: _Epoch) -> None:
        """Metrics of the epoch, evaluation, then (rank 0) files, checkpoints and the epoch line."""
        s = distributed.all_reduce_sum(ep.sums.clone(), self.dist).tolist()
        if self.dist.enabled and self.config["check_replicas_every"]:
            distributed.check_replicas(self.flip_source.params, self.flip_source.names, self.dist, self.state.step)
        flips = ep.flips.cpu().numpy()
        test_loss, test_acc = self._evaluate(ep.index)
        row = self._metrics_row(ep, s, flips, test_loss, test_acc)
        st = self.state
        st.history.append(row)
        improved = test_acc is not None and (st.best is None or test_acc > st.best)
        if improved:
            st.best, st.best_epoch = test_acc, ep.index + 1
        st.epoch, st.batch, st.partial = ep.index + 1, 0, None
        self._commit(st.epoch, 0, None, best=improved, logs=lambda: self._log_epoch(row, flips, ep))
        flip_text = f"  log flip ratio {row['log_flip_ratio']:.2f}" if self.flip_source.numel else ""
        ep.progress.finish(
            f"loss {row['train_loss']:.4f}  train {_fmt_pct(row['train_accuracy'])}  "
            f"test {_fmt_pct(row['test_accuracy'])}{flip_text}  {ep.seconds:.1f}s",
            data_wait=ep.data_wait(),
        )

    def _evaluate(self, epoch: int) -> tuple[float | None, float | None]:
        """(test loss, test accuracy) every ``eval_every`` epochs and after the last, else Nones."""
        c, d = self.config, self.dist
        if (epoch + 1) % c["eval_every"] != 0 and epoch + 1 != self.epochs:
            return None, None
        if c["bn_reestimate"]:
            # the same number of examples on every rank (synchronized batch norms need equal batch counts)
            n = (c["bn_reestimate"] if c["bn_reestimate"] > 0 else len(self.train_set)) // d.world_size
            plain = Loader(self.train_set, self.test_loader.batch_size, train=False, **self.loader_options)
            reestimate_batchnorm(self.model, plain, self.device, n, self.channels_last, self.precision)
        # every rank evaluates (and rank 0 saves) the same statistics: averaged over ranks,
        # or rank 0's when batch norms are synchronized
        distributed.sync_buffers(self.model, d, average=not c["sync_batchnorm"])
        t = distributed.all_reduce_sum(
            evaluate(self.net, self.test_loader, self.device, self.channels_last, self.precision), d
        ).tolist()
        return t[0] / t[2], t[1] / t[2]

    def _metrics_row(self, ep: _Epoch, s: list, flips: np.ndarray, test_loss, test_acc) -> dict:
        """The epoch's metrics.csv row from the global sums [loss, correct, count] and the flips."""
        n_binary = self.flip_source.numel
        mean_ratio = float(flips.sum(1).mean()) / n_binary if n_binary else 0.0
        schedules = self._schedules()
        return {
            "epoch": ep.index + 1,
            "step": self.state.step,
            "train_loss": round(s[0] / s[2], 6),
            "train_accuracy": round(s[1] / s[2], 6),
            "test_loss": None if test_loss is None else round(test_loss, 6),
            "test_accuracy": None if test_acc is None else round(test_acc, 6),
            "lr": schedules["lr"],
            "gamma": schedules.get("gamma"),
            "flips": int(flips.sum()),
            "log_flip_ratio": round(math.log(mean_ratio + LOG_EPS), 6) if n_binary else None,
            "seconds": round(ep.seconds, 3),
            "data_seconds": round(ep.data_seconds, 3),
        }

    def _schedules(self) -> dict:
        """The schedules' current values: the real-valued optimizer's lr; Bop's gamma and threshold."""
        optimizers = self.optimizer.optimizers if self.bop is not None else [self.optimizer]
        lrs = [g["lr"] for o in optimizers if o is not self.bop for g in o.param_groups]
        values = {"lr": lrs[0] if lrs else None}
        if self.bop is not None:
            values.update(gamma=self.bop.gamma, threshold=self.bop.threshold)
        return values

    def _log_epoch(self, row: dict, flips: np.ndarray, ep: _Epoch) -> None:
        """metrics.csv (rewritten), flips.csv (appended) and TensorBoard."""
        n_binary = max(self.flip_source.numel, 1)
        _write_metrics(self.folder.metrics, self.state.history)
        first = self.state.step - len(flips)
        _append_flips(self.folder.flips, self.flip_source.names, first, row["epoch"], flips, n_binary)
        if self.writer is not None:
            self._log_steps(ep)
            self.writer.epoch(row, flips, self.flip_source.numel)

    def _log_steps(self, ep: _Epoch) -> None:
        """TensorBoard's per-step loss (rank 0's batch under torchrun) and schedules of the steps
        since the last call (at the epoch's end, and at a mid-epoch checkpoint)."""
        if self.writer is None or not ep.curves:
            return
        curves = {"loss": torch.stack([loss for _, loss in ep.curves]).float().cpu().numpy()}
        for name, value in ep.curves[0][0].items():
            if value is not None:
                curves[name] = np.array([schedules[name] for schedules, _ in ep.curves])
        self.writer.steps(curves, self.state.step)
        ep.curves.clear()

    def _commit(self, epoch: int, batch: int, partial, best: bool = False, logs=None) -> None:
        """Rank 0 writes the epoch's files (``logs``), best.pt when ``best``, then last.pt: the
        commit point, from which a resume continues and rewrites what came after. A failed write
        (disk full) stops the run on every rank with ``SaveError``; the files written before stay."""
        message = None
        if self.main:
            try:
                if logs is not None:
                    logs()
                self.saver.save(self._checkpoint(epoch, batch, partial), best=best)
                self.committed = (epoch, batch)
            except OSError as e:
                message = self._save_failed(e)
        if self.dist.enabled:  # every rank stops together
            message = distributed.broadcast_object(message, self.dist)
        if message is not None:
            raise SaveError(message)
        self.saved_at = time.monotonic()

    def _save_failed(self, e: OSError) -> str:
        """One line: what failed, which checkpoint is intact, how to continue."""
        if self.committed is None:
            kept = "no checkpoint was written yet"
        else:
            kept = f"last.pt still holds {_position(*self.committed)}"
        return (
            f"cannot save the run in {self.run_dir}: {_reason(e)}; {kept}; make room, then continue with: "
            f"onebit train --resume {self.run_dir}"
        )

    def _checkpoint(self, epoch: int, batch: int, partial) -> dict:
        """The checkpoint dict (these keys are the file format: old run folders resume)."""
        st = self.state
        return {
            "format": 1,
            "onebit": __version__,
            "torch": str(torch.__version__),  # a plain string: checkpoints hold no torch class
            "recipe": self.recipe,
            "source": self.source,
            "config": self.config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "epoch": epoch,
            "batch": batch,
            "step": st.step,
            "history": st.history,
            "best": st.best,
            "best_epoch": st.best_epoch,
            "partial": partial,
            "rng": checkpoint.rng_state(),
            "wall_seconds": self._wall_seconds(),
        }

    def _wall_seconds(self) -> float:
        return self.state.wall_seconds + (time.perf_counter() - self.started)

    # ------------------------------------------------------------------------------ end of run

    def _finish(self) -> dict:
        """The summary dict; rank 0 writes summary.json and the plots, and prints the summary."""
        st = self.state
        final = st.history[-1] if st.history else {}
        summary = {
            "recipe": self.recipe,
            "test_accuracy": final.get("test_accuracy"),
            "best_test_accuracy": st.best,
            "best_epoch": st.best_epoch,
            "train_accuracy": final.get("train_accuracy"),
            "epochs": st.epoch,
            "steps": st.step,
            "wall_seconds": round(self._wall_seconds(), 3),
            "train_seconds": round(sum(r["seconds"] for r in st.history), 3),
            "seed": self.config["seed"],
            "binary_weights": self.flip_source.numel,
            "run_dir": str(self.run_dir),
        }
        if self.main:
            self._write_summary(summary)
            if self.config["plots"]:
                self._plot()
                summary["wall_seconds"] = round(self._wall_seconds(), 3)
                self._write_summary(summary)
            self._say(format_summary(summary))
        return summary

    def _write_summary(self, summary: dict) -> None:
        try:
            checkpoint.write_text_atomic(self.folder.summary, json.dumps(summary, indent=2) + "\n")
        except OSError as e:
            raise SaveError(
                f"cannot write {self.folder.summary}: {_reason(e)}; the run is complete in last.pt: "
                f"onebit train --resume {self.run_dir} writes it"
            ) from None

    def _plot(self) -> None:
        from .plots import plot_run

        try:
            plot_run(self.run_dir)
        except Exception as e:  # a plot must never lose a finished run
            self._say(f"warning: plots not written ({e})")


def train(
    config: dict,
    *,
    recipe: str = "custom",
    source: str = "",
    run_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    verbose: bool = True,
    stream: TextIO | None = None,
    on_step: Callable[[int, int, int], object] | None = None,
) -> dict:
    """Train from ``config`` (see ``onebit.training.config``); returns the run summary dict.

    ``resume``: a run folder whose ``last.pt`` to continue from (its folder is reused; see also
    ``resume_run``). ``on_step(epoch, batch, step)``: called after every optimizer step (notebooks,
    tests). Raises ``Interrupted`` after Ctrl-C (checkpoint saved), ``ConfigError``/``DataError`` on
    bad input, ``SaveError`` when the run folder cannot be written (the last checkpoint is intact).
    """
    config = validate(dict(config))
    mode = config.get("xnor_forward", "auto")  # run folders from before the key: auto
    if mode == "on" and not popcount.available():
        raise ConfigError(
            "xnor_forward='on' needs numba, which is not installed (pip install 'onebit[jit]'); "
            "allowed without it: auto, off"
        )
    with settings.override(popcount_forward=mode):  # the switch holds for this run (this thread) only
        trainer = Trainer(
            config,
            recipe=recipe,
            source=source,
            run_dir=run_dir,
            resume=resume,
            verbose=verbose,
            stream=stream,
            on_step=on_step,
        )
        return trainer.run()


def resume_run(
    run_dir: str | os.PathLike,
    overrides: list[str] | tuple = (),
    *,
    verbose: bool = True,
    stream: TextIO | None = None,
    on_step: Callable[[int, int, int], object] | None = None,
) -> dict:
    """Continue the run in ``run_dir`` from its ``last.pt`` (recipe, config and position from the
    checkpoint; ``key=value`` ``overrides`` applied); returns the summary, as ``train`` does.

    A run killed before its first checkpoint starts over in the same folder from its
    ``config.toml``. ``ConfigError`` (one line) when the folder holds neither: nothing to resume."""
    folder = RunFolder(run_dir)
    options = dict(verbose=verbose, stream=stream, on_step=on_step)
    if folder.last.is_file():
        ckpt = checkpoint.load(folder.last)
        config = apply_overrides(ckpt["config"], list(overrides))
        return train(config, recipe=ckpt["recipe"], source=ckpt.get("source", ""), resume=folder.path, **options)
    if not folder.config.is_file():
        raise ConfigError(
            f"nothing to resume in {run_dir}: expected a run folder with last.pt "
            f"(or the config.toml of a run stopped before its first checkpoint)"
        )
    recipe, config = read_run_config(folder.path)
    source = read_toml(folder.config.read_text(), str(folder.config)).get("recipe", {}).get("source", "")
    if verbose and os.environ.get("RANK", "0") == "0":
        out = stream if stream is not None else sys.stdout
        out.write(f"no checkpoint in {run_dir} yet: starting the run over\n")
    config = apply_overrides(config, list(overrides))
    return train(config, recipe=recipe, source=source, run_dir=folder.path, **options)


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
