"""Runs that survive anything: training processes killed with SIGKILL (at seeded random moments,
and at the worst ones: inside a checkpoint write, between flips.csv and last.pt, between best.pt
and last.pt, inside an evaluation) and resumed, several times, end with the
weights, metrics.csv (but its seconds column) and flips.csv of an uninterrupted run, bit for bit.
Also: mid-epoch checkpoints (``checkpoint_every``), a full disk, run folders of runs started in the
same second, and a sweep with two worker processes."""

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from onebit.cli import main
from onebit.recipes import load_recipe
from onebit.training import SaveError, resume_run, runs, train
from onebit.training.checkpoint import load
from onebit.training.config import ConfigError, apply_overrides, checkpoint_interval
from onebit.training.experiments import run_sweep

# 3 epochs x 4 steps of batch 32, a mid-epoch checkpoint every 3 steps (at steps 3, 6, 9; epoch
# ends at 4, 8, 12), an evaluation after every epoch with batch norm re-estimated over 128 images
TINY = [
    "plots=false",
    "tensorboard=false",
    "threads=1",
    "batch_size=32",
    "max_steps=4",
    "log_every=2",
    "bn_reestimate=128",
    "epochs=3",
    "checkpoint_every=3",
]
TIMEOUT = 120

# Runs the CLI (``python -c HOOK train ...``) after arranging for the process to SIGKILL itself at
# the N-th time it reaches a moment: ONEBIT_TEST_KILL=MOMENT:N.
HOOK = r"""
import os, signal, sys
import torch
from onebit.training import checkpoint, loop

moment, n = os.environ["ONEBIT_TEST_KILL"].split(":")
seen = [0]


def die_the_nth_time():
    seen[0] += 1
    if seen[0] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


if moment == "temp":  # inside a checkpoint write: half a temp file
    save = torch.save

    def torch_save(obj, f, *args, **kwargs):
        if seen[0] + 1 == int(n):
            f.write(b"half a checkpoint")
            f.flush()
        die_the_nth_time()
        return save(obj, f, *args, **kwargs)

    torch.save = torch_save
elif moment == "flips":  # flips.csv has the epoch's rows and half a row more; last.pt is older
    append = loop._append_flips

    def append_flips(path, *args):
        append(path, *args)
        with open(path, "a") as f:
            f.write("99,")
        die_the_nth_time()

    loop._append_flips = append_flips
elif moment == "best":  # best.pt written, last.pt not yet
    save_atomic = checkpoint.save_atomic

    def save_then_die(obj, path):
        save_atomic(obj, path)
        if str(path).endswith("best.pt"):
            die_the_nth_time()

    checkpoint.save_atomic = save_then_die
elif moment == "eval":  # inside an evaluation
    evaluate = loop.evaluate

    def evaluate_then_die(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        die_the_nth_time()
        return result

    loop.evaluate = evaluate_then_die

from onebit.cli import main

sys.exit(main(sys.argv[1:]))
"""


def env(kill: str | None = None) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("ONEBIT_TEST_KILL", None)
    if kill is not None:
        e["ONEBIT_TEST_KILL"] = kill
    return e


def launch(args: list[str], kill: str | None = None) -> subprocess.Popen:
    """``python -m onebit ARGS`` (with a kill hook: the same CLI under ``python -c HOOK``)."""
    cmd = [sys.executable, "-c", HOOK] if kill else [sys.executable, "-m", "onebit"]
    return subprocess.Popen(cmd + args, env=env(kill), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_args(out: Path) -> list[str]:
    return ["train", "mnist-bop", *TINY, f"out={out}"]


def resume_args(run_dir: Path) -> list[str]:
    return ["train", "--resume", str(run_dir)]


def finish(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=TIMEOUT)[0]
    finally:
        if proc.poll() is None:
            proc.kill()


def the_run(out: Path) -> Path:
    (run_dir,) = list((out / "mnist-bop").iterdir())
    return run_dir


TIMINGS = ("seconds", "data_seconds")  # wall-clock columns: differ between any two runs


def rows(path: Path, drop: tuple = ()) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def same(a, b) -> bool:
    """Equal, tensors bit for bit, through dicts and lists."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The run ended as the uninterrupted ``reference``: weights, optimizer, schedulers, history,
    best, metrics.csv but its seconds, flips.csv; best.pt's weights; summary.json's figures."""
    a, b = load(run_dir / "last.pt"), load(reference / "last.pt")
    for key in ("model", "optimizer", "schedulers", "epoch", "batch", "step", "best", "best_epoch", "partial"):
        assert same(a[key], b[key]), key
    assert without_seconds(a["history"]) == without_seconds(b["history"])
    assert same(load(run_dir / "best.pt")["model"], load(reference / "best.pt")["model"])
    assert rows(run_dir / "metrics.csv", drop=TIMINGS) == rows(reference / "metrics.csv", drop=TIMINGS)
    assert (run_dir / "flips.csv").read_text() == (reference / "flips.csv").read_text()
    figures = ("test_accuracy", "best_test_accuracy", "best_epoch", "train_accuracy", "epochs", "steps")
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert {k: sa[k] for k in figures} == {k: sb[k] for k in figures}
    assert not list(run_dir.glob("*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process) and how long it took."""
    out = tmp_path_factory.mktemp("straight")
    config = apply_overrides(load_recipe("mnist-bop").config, TINY + [f"out={out}"])
    started = time.perf_counter()
    summary = train(config, recipe="mnist-bop", verbose=False)
    return Path(summary["run_dir"]), time.perf_counter() - started


def test_killed_at_the_worst_moments_resumes_bit_identically(reference, tmp_path):
    # 1. killed inside the first checkpoint's write (step 3): no last.pt, half a temp file
    proc = launch(start_args(tmp_path), kill="temp:1")
    text = finish(proc)
    run_dir = the_run(tmp_path)
    assert (
        proc.returncode == -signal.SIGKILL
        and not (run_dir / "last.pt").exists()
        and list(run_dir.glob("last.pt.*.tmp"))
    ), text
    # 2. nothing to continue: starts over; killed after epoch 1's flips.csv rows, before its last.pt
    proc = launch(resume_args(run_dir), kill="flips:1")
    text = finish(proc)
    assert proc.returncode == -signal.SIGKILL and "starting the run over" in text, text
    assert not list(run_dir.glob("*.tmp"))
    assert (run_dir / "flips.csv").read_text().endswith("\n99,")
    assert (load(run_dir / "last.pt")["epoch"], load(run_dir / "last.pt")["batch"]) == (0, 3)
    # 3. from the middle of epoch 1; killed between epoch 1's best.pt and its last.pt
    proc = launch(resume_args(run_dir), kill="best:1")
    text = finish(proc)
    assert proc.returncode == -signal.SIGKILL and "resuming" in text, text
    assert load(run_dir / "best.pt")["epoch"] == 1 and load(run_dir / "last.pt")["epoch"] == 0
    # 4. from the middle of epoch 1 again; killed inside epoch 2's evaluation (last.pt at step 6)
    proc = launch(resume_args(run_dir), kill="eval:2")
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    assert load(run_dir / "last.pt")["step"] == 6 and not (run_dir / "summary.json").exists()
    # 5. to the end
    proc = launch(resume_args(run_dir))
    text = finish(proc)
    assert proc.returncode == 0, text
    assert_same_run(run_dir, reference[0])


def _started(proc: subprocess.Popen) -> str:
    """Read the run's output up to its header (run folder created, training starts)."""
    lines = []
    while True:
        line = proc.stdout.readline()
        lines.append(line)
        if not line or line.startswith(("run folder ", "resuming ")):
            return "".join(lines)


def test_killed_at_random_moments_resumes_bit_identically(reference, tmp_path):
    ref_dir, seconds = reference
    rng = random.Random(20261129)
    kills, log = 0, []
    proc = launch(start_args(tmp_path))
    for attempt in range(2):
        text = _started(proc)
        delay = rng.uniform(0.0, 0.4 * seconds)  # two kills land before the run could end
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        text += finish(proc)
        log.append(f"attempt {attempt}: {'killed' if killed else 'ended'} after {delay:.2f}s")
        assert proc.returncode in (0, -signal.SIGKILL), text
        proc = launch(resume_args(the_run(tmp_path)))
    text = finish(proc)
    assert proc.returncode == 0, text
    assert kills >= 2, log
    assert_same_run(the_run(tmp_path), ref_dir)


# ------------------------------------------------------------------------------ in one process


def tiny(out: Path, *extra: str) -> dict:
    return apply_overrides(load_recipe("mnist-bop").config, TINY + [f"out={out}", *extra])


class Crash(Exception):
    pass


def crash_at(step: int):
    def on_step(epoch, batch, at):
        if at == step:
            raise Crash

    return on_step


def test_checkpoint_every_steps_saves_mid_epoch_and_resumes_bit_identically(tmp_path):
    straight = Path(train(tiny(tmp_path / "a", "checkpoint_every=off"), recipe="mnist-bop", verbose=False)["run_dir"])
    with pytest.raises(Crash):
        train(tiny(tmp_path / "b", "checkpoint_every=3"), recipe="mnist-bop", verbose=False, on_step=crash_at(8))
    run_dir = the_run(tmp_path / "b")
    ckpt = load(run_dir / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (1, 2, 6) and ckpt["partial"] is not None
    assert len(rows(run_dir / "flips.csv")) == 4  # epoch 1's; epoch 2's first steps are in last.pt
    resume_run(run_dir, verbose=False)
    assert_same_run(run_dir, straight)
    (run_dir / "summary.json").unlink()  # as if killed after the last checkpoint
    resume_run(run_dir, verbose=False)  # nothing left to train: writes the summary
    assert_same_run(run_dir, straight)


def test_checkpoint_every_minutes_saves_mid_epoch(tmp_path):
    with pytest.raises(Crash):  # a time shorter than a step: a checkpoint after every step
        train(tiny(tmp_path, "checkpoint_every=0.00001m"), recipe="mnist-bop", verbose=False, on_step=crash_at(3))
    ckpt = load(the_run(tmp_path) / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 2, 2)


@pytest.mark.parametrize(
    "value, interval",
    [
        ("off", (0, 0.0)),
        ("0", (0, 0.0)),
        ("500", (500, 0.0)),
        ("30m", (0, 1800.0)),
        ("90s", (0, 90.0)),
        ("2H", (0, 7200.0)),
    ],
)
def test_checkpoint_every_values(value, interval):
    config = apply_overrides(load_recipe("mnist-bop").config, [f"checkpoint_every={value}"])
    assert checkpoint_interval(config["checkpoint_every"]) == interval


@pytest.mark.parametrize("value", ["-5", "1.5", "soon", "m", "30 minutes", "infm"])
def test_checkpoint_every_bad_values(value):
    allowed = "checkpoint_every must be off, a number of optimizer steps such as 500, or a time such as 90s, 30m or 2h"
    with pytest.raises(ConfigError, match=allowed):
        apply_overrides(load_recipe("mnist-bop").config, [f"checkpoint_every={value}"])


def disk_full_after(monkeypatch, step: int):
    """From optimizer step ``step`` on, every fsync fails as on a full disk (a checkpoint's, the
    metrics', flips.csv's: whichever the run writes first)."""
    armed = [False]
    fsync = os.fsync

    def full_disk_fsync(fd):
        if armed[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    def arm(epoch, batch, at):
        armed[0] = armed[0] or at >= step

    monkeypatch.setattr(os, "fsync", full_disk_fsync)
    return arm


def test_disk_full_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, monkeypatch):
    straight = Path(train(tiny(tmp_path / "a", "epochs=2"), recipe="mnist-bop", verbose=False)["run_dir"])
    with pytest.raises(SaveError) as info:
        train(
            tiny(tmp_path / "b", "epochs=2"), recipe="mnist-bop", verbose=False, on_step=disk_full_after(monkeypatch, 7)
        )
    run_dir = the_run(tmp_path / "b")
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message, message
    assert (
        f"last.pt still holds epoch 2, batch 2; make room, then continue with: onebit train --resume {run_dir}"
        in message
    )
    monkeypatch.undo()  # space again
    ckpt = load(run_dir / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 2)
    assert [r["epoch"] for r in rows(run_dir / "metrics.csv")] == ["1"]  # metrics.csv was not rewritten
    assert not list(run_dir.glob("*.tmp"))
    resume_run(run_dir, verbose=False)
    assert_same_run(run_dir, straight)


def test_disk_full_on_the_first_checkpoint_from_the_command_line(tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"some bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(start_args(tmp_path) + ["epochs=1", "checkpoint_every=off"]) == 2
    err = capsys.readouterr().err
    run_dir = the_run(tmp_path)
    assert err.count("\n") == 1 and err.startswith(f"onebit: error: cannot save the run in {run_dir}: "), err
    assert "No space left on device; no checkpoint was written yet" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml", "flips.csv", "metrics.csv"]
    monkeypatch.setattr(torch, "save", real_save)
    assert main(resume_args(run_dir)) == 0  # starts over
    assert "starting the run over" in capsys.readouterr().out
    assert load(run_dir / "last.pt")["epoch"] == 1


def test_nothing_to_resume(tmp_path, capsys):
    with pytest.raises(ConfigError, match="nothing to resume in .*: expected a run folder with last.pt"):
        resume_run(tmp_path)
    assert main(resume_args(tmp_path)) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ------------------------------------------------------------------------------ many runs at once


def test_runs_started_in_the_same_second_get_separate_folders(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(runs, "datetime", Frozen)
    start = threading.Barrier(8)
    made = []

    def make():
        start.wait()
        made.append(runs.new_run_dir(tmp_path, "mnist-bop"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in made)
    assert names == sorted(["20260102-030405"] + [f"20260102-030405-{i}" for i in range(1, 8)])
    assert all(p.is_dir() for p in made)


def test_sweep_with_two_jobs(tmp_path):
    """A sweep with ``--jobs 2``: two worker processes; each run as if trained alone."""
    recipe = load_recipe("lr-invariance").with_overrides(
        ["epochs=1", "max_steps=2", "batch_size=16", "threads=1", "plots=false", "tensorboard=false", f"out={tmp_path}"]
    )
    recipe.runs = recipe.runs[:2]
    summary = run_sweep(recipe, jobs=2, verbose=False)
    assert [r["label"] for r in summary["runs"]] == [r["label"] for r in recipe.runs]
    assert Path(summary["plot"]).is_file() and len({r["run_dir"] for r in summary["runs"]}) == 2
    for (run, config), result in zip(recipe.run_configs(), summary["runs"]):
        alone = train(config, recipe="alone", verbose=False, run_dir=tmp_path / "alone" / run["label"])
        assert result["test_accuracy"] == alone["test_accuracy"], run["label"]
        trained = load(Path(result["run_dir"]) / "last.pt")["model"]
        assert same(trained, load(Path(alone["run_dir"]) / "last.pt")["model"]), run["label"]
