"""The `onebit` command: train/list/summary/eval/plot, --help with recipe defaults, resume, and
one-line errors with exit code 2 (no traceback)."""

import json
import subprocess
import sys

import pytest

from onebit.cli import main

TINY = ["epochs=1", "max_steps=2", "batch_size=32", "threads=1", "plots=false", "tensorboard=false"]


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "args, match",
    [
        (["train", "mnist-nope"], "unknown recipe 'mnist-nope'; available: "),
        (["train", "nope=1"], "unknown key 'nope'; allowed keys: "),
        (["train", "epochs=abc"], "bad value epochs='abc': expected int"),
        (["train", "optimizer=adamw"], "allowed: bop, latent"),
        (["train", "--bogus"], "unknown option '--bogus'"),
        (["train", "mnist-bop", "cifar10-bop-sweep"], "one recipe at a time"),
        (["train", "--resume", "/nonexistent/run"], "expected a run folder with last.pt"),
        (["train", "dataset=mnist"], "needs data_dir"),
        (["frobnicate"], "unknown command 'frobnicate'; allowed: train, list"),
        (["export", "/nonexistent/run", "x.obe"], "/nonexistent/run"),
        (["summary", "resnet9000"], "unknown model or recipe 'resnet9000'; models: "),
        (["eval", "/nonexistent/run"], "not a onebit run folder"),
        (["summary", "small_cnn", "--input-size", "abc"], "expected C,H,W"),
        (["export", "small_cnn", "x.obe"], "a zoo model name needs --input-size C,H,W"),
        (["export", "small_cnn", "x.obe", "--input-size", "0,1"], "--input-size '0,1': expected C,H,W"),
        (["export", "a", "b", "--bogus"], "unrecognized arguments: --bogus"),
        (["bench-engine", "no_such_model"], "neither a run folder nor a zoo model (binary_alexnet"),
        (["bench-engine", "small_cnn", "--backend", "gpu"], "invalid choice: 'gpu'"),
        (["eval", "/nonexistent/run", "--checkpoint", "first"], "invalid choice: 'first'"),
        (["list", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_errors_are_one_line_exit_2(capsys, tmp_path, args, match):
    code, out, err = run_cli(
        capsys, *args, *([f"out={tmp_path}"] if args[0] == "train" and "--resume" not in args else [])
    )
    assert code == 2
    assert err.startswith("onebit: error: ") and err.count("\n") == 1 and match in err, err
    assert "Traceback" not in err


def test_error_from_console_has_no_traceback():
    p = subprocess.run([sys.executable, "-m", "onebit", "train", "gamma=lots"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "bad value gamma='lots'" in p.stderr


def test_help_lists_recipe_defaults(capsys):
    code, out, _ = run_cli(capsys, "train", "cifar10-binarynet-bop", "--help")
    assert code == 0
    assert "gamma" in out and "0.0001" in out and "*batch_size" in out and "sec. 5.2" in out
    code, out, _ = run_cli(capsys, "train", "--help")
    assert code == 0 and "key=value" in out
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "approximation-viewpoint" in out


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "mnist-bop" in out and "source:" in out and "binarynet" in out


def test_summary(capsys):
    code, out, _ = run_cli(capsys, "summary", "small_cnn")
    assert code == 0 and len(out.splitlines()) > 5
    # a model's default input is its own (binarynet: CIFAR-10's 3,32,32)
    code, out, _ = run_cli(capsys, "summary", "binarynet")
    code2, out2, _ = run_cli(capsys, "summary", "binarynet", "--input-size", "3,32,32")
    assert code == code2 == 0 and out == out2
    code, out2, _ = run_cli(capsys, "summary", "mnist-bop")
    assert code == 0 and len(out2.splitlines()) > 5


def test_train_eval_plot_resume(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "train", *TINY, f"out={tmp_path}")
    assert code == 0
    assert "test accuracy" in out and "wall time" in out and "run folder" in out
    (run_dir,) = list((tmp_path / "mnist-bop").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) >= {"test_accuracy", "epochs", "wall_seconds"}
    assert "epoch 1/1" in out  # plain per-epoch line when stdout is not a terminal
    code, out, _ = run_cli(capsys, "eval", str(run_dir))
    assert code == 0 and f"{100 * summary['test_accuracy']:.2f}%" in out
    code, out, _ = run_cli(capsys, "train", "--resume", str(run_dir), "epochs=2")
    assert code == 0 and "resuming" in out
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    code, out, _ = run_cli(capsys, "plot", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp.png"))
    assert code == 0 and (run_dir / "accuracy.png").is_file() and (tmp_path / "cmp.png").is_file()
    engine_file = tmp_path / "model.obe"
    code, out, err = run_cli(capsys, "export", str(run_dir), str(engine_file))
    assert code == 0 and engine_file.is_file(), err
    code, out, err = run_cli(
        capsys,
        "bench-engine",
        str(engine_file),
        "--batch",
        "1",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--backend",
        "numpy",
    )
    assert code == 0 and "ms" in out, err
    # a run folder: the model rebuilt from the run, at its data set's input size, also timed in torch
    code, out, err = run_cli(
        capsys, "bench-engine", str(run_dir), "--batch", "2", "--repeats", "1", "--threads", "1", "--backend", "numpy"
    )
    assert code == 0 and "| 2 |" in out and "| - |" not in out, err
    code, out, err = run_cli(capsys, "eval", str(run_dir), "--checkpoint", "last")
    assert code == 0 and "last.pt" in out, err


def test_ctrl_c_exit_code(capsys, tmp_path, monkeypatch):
    from onebit.training import Interrupted

    def interrupted(*a, **k):
        raise Interrupted(tmp_path, 0, 3)

    monkeypatch.setattr("onebit.training.train", interrupted)
    code, _, err = run_cli(capsys, "train", *TINY, f"out={tmp_path}")
    assert code == 130 and "onebit train --resume" in err


def test_package_layout():
    """The console script's entry point and ``python -m onebit``; each command's module."""
    import onebit.cli as cli
    from onebit.cli import deploy, info, train

    assert cli.__all__ == ["main"]
    assert cli.COMMANDS["export"] is deploy.cmd_export and cli.COMMANDS["summary"] is info.cmd_summary
    assert cli.COMMANDS["train"] is train.cmd_train
    p = subprocess.run([sys.executable, "-m", "onebit", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "bench-engine" in p.stdout
