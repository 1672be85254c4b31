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
        (["train", "mnist-nope"], "unknown recipe 'mnist-nope' (did you mean 'mnist-bop'?); available: "),
        (["train", "nope=1"], "unknown key 'nope'; allowed keys: "),
        (["train", "gama=1e-3"], "unknown key 'gama' (did you mean 'gamma'?); allowed keys: "),
        (["train", "no/such/recipe.toml"], "recipe file 'no/such/recipe.toml' does not exist"),
        (["trian"], "unknown command 'trian' (did you mean 'train'?)"),
        (["summary", "quiknet"], "unknown model or recipe 'quiknet' (did you mean 'quicknet'?)"),
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
        (["export", "small_cnn", "x.obe", "--onnx-dynamo"], "--onnx-dynamo: also give --onnx PATH"),
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


def test_version(capsys):
    import onebit

    for flag in ("--version", "-V"):
        assert run_cli(capsys, flag) == (0, f"onebit {onebit.__version__}\n", "")


MY_RECIPE = """
[recipe]
description = "my own small run"
source = "me"

[config]
epochs = 1
max_steps = 2
batch_size = 32
threads = 1
plots = false
tensorboard = false
"""


def test_train_a_users_recipe_file(capsys, tmp_path):
    path = tmp_path / "my-recipe.toml"
    path.write_text(MY_RECIPE)
    code, out, err = run_cli(capsys, "train", str(path), f"out={tmp_path}", "--quiet")
    assert code == 0, err
    assert (tmp_path / "my-recipe").is_dir() and "test accuracy" in out
    code, out, _ = run_cli(capsys, "train", str(path), "--help")
    assert code == 0 and "my own small run" in out and "*max_steps" in out
    code, out, _ = run_cli(capsys, "summary", str(path))
    assert code == 0 and "small_cnn" in out


@pytest.mark.parametrize(
    "text, match",
    [
        ("[recipe]\ndescription = 1\n[confg]\nepochs = 1\n", "unknown key 'confg' (did you mean 'config'?)"),
        ("[config]\nepcohs = 1\n", "[config]: unknown key 'epcohs' (did you mean 'epochs'?)"),
        ("[config]\nepochs = -1\n", "epochs"),
        ("[recipe]\nkind = 'sweep'\n", "is a sweep without [[runs]]"),
        ("[recipe]\nnotes = 3\n", "notes must be a list of strings"),
        ("[config\n", "is not valid TOML"),
    ],
)
def test_a_bad_recipe_file_is_one_line(capsys, tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, _, err = run_cli(capsys, "train", str(path), f"out={tmp_path}")
    assert code == 2 and err.count("\n") == 1 and match in err and f"recipe file {str(path)!r}" in err, err


def test_the_command_line_reference_covers_every_command():
    from pathlib import Path

    from onebit.cli import COMMANDS

    page = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    assert all(f"onebit {name}" in page for name in COMMANDS)


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
    code, out3, _ = run_cli(capsys, "summary", "small_cnn", "--input-size", "1,28,28")
    assert code == 0 and out3 == run_cli(capsys, "summary", "small_cnn")[1]


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
    assert (run_dir / "accuracy.pdf").is_file() and (tmp_path / "cmp.pdf").is_file()
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
    assert "| 2/2, " in out  # the engine's answers were compared with torch's: same argmax on both images
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


# ---------------------------------------------------------------------------------------------
# Every bad input: one line on stderr, exit status 2, no traceback, nothing written
# (docs/reliability.md counts these cases)

LIGHT = ["threads=1", "plots=false", "tensorboard=false"]


def refused(capsys, *args, match=""):
    """Run ``onebit ARGS`` in-process: exit status 2 and one line ``onebit: error: ...``."""
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (code, out, err)
    assert err.startswith("onebit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and match in err, err
    return err


def no_checkpoints(root):
    return not list(root.rglob("*.pt"))


def _first_bad(name):
    """A value of key ``name`` that no run can use (out of range, not a choice, or no number)."""
    from onebit.training.config import FIELDS, Range

    field = FIELDS[name]
    kind = type(field.default)
    if kind is bool:
        return "maybe"
    if kind is str:
        words = [w for w in ("definitely-not-allowed", "") if field.choices or (field.check and field.check(w))]
        return words[0] if words else None
    check = field.check if isinstance(field.check, Range) else Range(0)
    below = check.lo if check.lo_open else check.lo - 1
    if below in check.also:
        below -= 1
    return str(kind(below))


def _config_keys():
    from onebit.training.config import FIELDS

    return [(k, _first_bad(k)) for k in FIELDS if _first_bad(k) is not None]


@pytest.mark.parametrize("key, bad", _config_keys())
def test_every_key_refuses_a_value_no_run_can_use(capsys, tmp_path, key, bad):
    refused(capsys, "train", f"{key}={bad}", f"out={tmp_path}", match=f"bad value {key}=")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "override, match",
    [
        ("gamma=nan", "bad value gamma='nan': expected a finite number"),
        ("gamma=inf", "expected a finite number"),
        ("gamma=0", "gamma must be in (0, 1]"),
        ("lr=-1e-3", "lr must be >= 0"),
        ("threshold=-inf", "expected a finite number"),
        ("image_size=-5", "image_size must be in [16, 4096] or 0"),
        ("image_size=100000", "image_size must be in [16, 4096] or 0"),
        ("augment_pad=1000", "augment_pad must be in [0, 64]"),
        ("epochs=0", "epochs must be >= 1"),
        ("epochs=1.5", "expected int"),
        ("seed=-1", "seed must be in [0, 9223372036854775807]"),
        ("batch_size=99999999999999999999999", "expected an int of at most 19 digits"),
        ("bn_reestimate=-2", "bn_reestimate must be >= 0 or -1"),
        ("momentum=1.5", "momentum must be in [0, 1]"),
        ("model=resnet50", "model must be one of"),
        ("input_quantizer=sign", "input_quantizer must be one of none, approx_sign"),
        ("kernel_constraint=clip", "kernel_constraint must be one of auto, none, weight_clip"),
        ("device=gpu", "device must be auto, cpu, cuda, cuda:N or mps"),
        ("out=", "out must be a folder name"),
        ("channels_last=maybe", "expected bool"),
        ("dataset=imagenet", "allowed: mnist5k, mnist, cifar10, imagefolder"),
    ],
)
def test_bad_values(capsys, tmp_path, override, match):
    refused(capsys, "train", override, f"out={tmp_path}", match=match)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ data files (onebit train)


def _mnist(root, **kw):
    from test_data import write_mnist_idx

    root.mkdir(exist_ok=True)
    write_mnist_idx(root, **kw)
    return root


def _idx(path, array):
    from test_data import write_idx

    write_idx(path, array)


def _bad_mnist(root, how):
    import numpy as np

    data = _mnist(root / "mnist", compress=how == "truncated gz")
    if how == "missing file":
        (data / "t10k-labels-idx1-ubyte").unlink()
    elif how == "garbage idx":
        (data / "train-images-idx3-ubyte").write_bytes(b"garbage!garbage!")
    elif how == "empty idx":
        (data / "train-labels-idx1-ubyte").write_bytes(b"")
    elif how == "truncated idx header":
        (data / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    elif how == "truncated idx body":
        path = data / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "truncated gz":
        path = data / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:-40])
    elif how == "labels out of range":
        _idx(data / "train-labels-idx1-ubyte", np.full(12, 12))
    elif how == "images and labels differ":
        _idx(data / "train-labels-idx1-ubyte", np.zeros(11))
    elif how == "test images of another size":
        _idx(data / "t10k-images-idx3-ubyte", np.zeros((5, 32, 32)))
    return data


MNIST_CASES = {
    "missing file": "expected t10k-labels-idx1-ubyte[.gz]",
    "garbage idx": "not an idx file",
    "empty idx": "not an idx file",
    "truncated idx header": "truncated idx header",
    "truncated idx body": "header says",
    "truncated gz": "cannot read idx file",
    "labels out of range": "labels must be 0..9, found 12..12",
    "images and labels differ": "do not match",
    "test images of another size": "training images are (1, 28, 28) (C, H, W) but test images (1, 32, 32)",
}


@pytest.mark.parametrize("how", list(MNIST_CASES))
def test_damaged_mnist_files(capsys, tmp_path, how):
    data = _bad_mnist(tmp_path, how)
    out = tmp_path / "runs"
    args = ["train", "dataset=mnist", f"data_dir={data}", f"out={out}", "batch_size=4", *LIGHT]
    refused(capsys, *args, match=MNIST_CASES[how])
    assert no_checkpoints(tmp_path)


def _bad_cifar(root, how):
    import pickle

    import numpy as np

    from test_data import write_cifar

    folder = write_cifar(root / "cifar")
    batch = folder / "data_batch_2"
    if how == "garbage pickle":
        batch.write_bytes(b"not a pickle")
    elif how == "empty batch":
        batch.write_bytes(b"")
    elif how == "truncated pickle":
        batch.write_bytes(batch.read_bytes()[:-50])
    elif how == "not a dict":
        batch.write_bytes(pickle.dumps([1, 2, 3]))
    elif how == "no labels":
        batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    elif how == "wrong image size":
        batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}))
    elif how == "labels out of range":
        batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    elif how == "labels not numbers":
        batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["cat", "dog"]}))
    elif how == "no test batch":
        (folder / "test_batch").unlink()
    return root / "cifar"


CIFAR_CASES = {
    "garbage pickle": "cannot unpickle",
    "empty batch": "cannot unpickle",
    "truncated pickle": "cannot unpickle",
    "not a dict": "has no 'data'/'labels' entries",
    "no labels": "has no 'data'/'labels' entries",
    "wrong image size": "expected (N, 3072) with N labels",
    "labels out of range": "labels must be 0..9, found 0..10",
    "labels not numbers": "are not arrays of integers",
    "no test batch": "expected data_batch_1..5 and test_batch",
}


@pytest.mark.parametrize("how", list(CIFAR_CASES))
def test_damaged_cifar_files(capsys, tmp_path, how):
    data = _bad_cifar(tmp_path, how)
    args = ["train", "dataset=cifar10", f"data_dir={data}", f"out={tmp_path / 'runs'}", "batch_size=8", *LIGHT]
    refused(capsys, *args, match=CIFAR_CASES[how])
    assert no_checkpoints(tmp_path)


def _images(root, per_class=2):
    pytest.importorskip("PIL")
    from test_data import write_imagefolder

    return write_imagefolder(root / "images", per_class=per_class)


def _bad_images(root, how):
    data = _images(root, per_class=4)
    cat = data / "train" / "cat"
    if how == "truncated png":
        path = cat / "0.png"
        path.write_bytes(path.read_bytes()[:-60])
    elif how == "truncated jpg":
        path = cat / "1.jpg"
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "not an image":
        (cat / "9.jpg").write_text("hello")
    elif how == "empty file":
        (data / "test" / "dog" / "9.png").write_bytes(b"")
    elif how == "no test folder":
        import shutil

        shutil.rmtree(data / "test")
    elif how == "no images":
        for f in data.rglob("*.*"):
            f.unlink()
    return data


IMAGE_CASES = {
    "truncated png": "cannot be decoded: ",
    "truncated jpg": "cannot be decoded: ",
    "not an image": "9.jpg (UnidentifiedImageError",
    "empty file": "9.png (UnidentifiedImageError",
    "no test folder": "/test/<class>/ (or val/)",
    "no images": "found none",
}


@pytest.mark.parametrize("how", list(IMAGE_CASES))
def test_damaged_image_folders_are_refused_before_training(capsys, tmp_path, how):
    data = _bad_images(tmp_path, how)
    args = ["train", "dataset=imagefolder", f"data_dir={data}", "image_size=32", "batch_size=2", *LIGHT]
    err = refused(capsys, *args, f"out={tmp_path / 'runs'}", match=IMAGE_CASES[how])
    if how.startswith("truncated"):
        assert "1 of 16 images" in err and ("0.png" in err or "1.jpg" in err), err
    assert no_checkpoints(tmp_path)


def test_an_image_folder_smaller_than_one_batch(capsys, tmp_path):
    """A new user's first try: the folder holds fewer images than the recipe's batch."""
    data = _images(tmp_path)
    args = ["train", "mnist-bop", "dataset=imagefolder", f"data_dir={data}", f"out={tmp_path / 'runs'}", *LIGHT]
    refused(capsys, *args, match="batch_size=64 is larger than the training set (4 examples): use batch_size=4 or less")
    assert no_checkpoints(tmp_path)


# ------------------------------------------------------------------ run folders and checkpoints


def _run_folder(root, config_text=None):
    """A run folder with a valid config.toml (or ``config_text``) and no checkpoint."""
    from onebit.training.config import defaults, to_toml

    run = root / "run"
    run.mkdir()
    text = to_toml({"recipe": {"name": "mnist-bop"}, "config": defaults()}) if config_text is None else config_text
    (run / "config.toml").write_text(text)
    return run


def _checkpoint_bytes(how):
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"model": {}, "epoch": 1}, buf)
    good = buf.getvalue()
    return {
        "empty": b"",
        "garbage": b"this is not a checkpoint at all",
        "truncated": good[: len(good) // 2],
        "a list": (lambda b: (torch.save([1, 2], b), b.getvalue())[1])(io.BytesIO()),
        "keys missing": good,
    }[how]


CHECKPOINTS = ["empty", "garbage", "truncated", "a list", "keys missing"]


@pytest.mark.parametrize("how", CHECKPOINTS)
def test_resume_from_a_damaged_last_pt(capsys, tmp_path, how):
    run = _run_folder(tmp_path)
    (run / "last.pt").write_bytes(_checkpoint_bytes(how))
    before = sorted(p.name for p in run.iterdir())
    refused(capsys, "train", "--resume", str(run), match="last.pt")
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written, nothing lost


@pytest.mark.parametrize("how", CHECKPOINTS)
@pytest.mark.parametrize("command", ["eval", "export", "bench-engine"])
def test_eval_export_bench_a_damaged_best_pt(capsys, tmp_path, how, command):
    run = _run_folder(tmp_path)
    (run / "best.pt").write_bytes(_checkpoint_bytes(how))
    args = {"eval": [], "export": [str(tmp_path / "m.obe")], "bench-engine": ["--repeats", "1"]}[command]
    refused(capsys, command, str(run), *args, match="best.pt")
    assert not (tmp_path / "m.obe").exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("this is [not toml", "is not valid TOML"),
        ("", "expected best.pt or last.pt"),  # an empty config: the defaults; then no checkpoint
        ("[config]\ngamma = nan\n", "bad value gamma=nan: expected a finite number"),
        ("[config]\nepochs = -3\n", "epochs must be >= 1"),
        ("[config]\nno_such_key = 1\n", "unknown key 'no_such_key'"),
        ("[config]\nepochs = 'six'\n", "expected int"),
    ],
)
def test_damaged_config_toml(capsys, tmp_path, text, match):
    run = _run_folder(tmp_path, text)
    refused(capsys, "eval", str(run), match=match)


def test_missing_config_toml(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    refused(capsys, "eval", str(tmp_path / "run"), match="is not a onebit run folder")


@pytest.mark.parametrize(
    "metrics, match",
    [
        ("epoch,train_accuracy\nabc,0.5\n", "could not convert string to float"),
        ("epoch,train_accuracy\n1,1,1,1\n", ""),
    ],
)
def test_damaged_metrics_csv(capsys, tmp_path, metrics, match):
    run = _run_folder(tmp_path)
    (run / "metrics.csv").write_text(metrics)
    code, out, err = run_cli(capsys, "plot", str(run))
    if code == 0:  # extra cells are read as None: drawn without them
        return
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and match in err, err


def test_plot_labels_name_the_compared_runs(capsys, tmp_path, monkeypatch):
    from onebit.training import plots

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = _run_folder(tmp_path / "a"), _run_folder(tmp_path / "b")
    for run in (a, b):
        (run / "metrics.csv").write_text("epoch,step,train_accuracy,test_accuracy\n1,10,0.5,0.6\n2,20,0.7,0.8\n")
    legends = {}
    original = plots._save

    def keep(plt, fig, path):
        legends[path.name] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        return original(plt, fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    out = tmp_path / "cmp.png"
    code, _, err = run_cli(capsys, "plot", str(a), str(b), "--label", "Bop", "--label", "Adam", "--out", str(out))
    assert code == 0 and legends["cmp.png"] == ["Bop", "Adam"], err


@pytest.mark.parametrize(
    "extra, match",
    [(["--label", "only one"], "1 --label for 2 runs"), (["--out", "cmp.svg"], "must be a .png file")],
)
def test_plot_refuses_bad_options(capsys, tmp_path, extra, match):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = _run_folder(tmp_path / "a"), _run_folder(tmp_path / "b")
    refused(capsys, "plot", str(a), str(b), *extra, match=match)


def test_plot_of_a_folder_without_metrics(capsys, tmp_path):
    refused(capsys, "plot", str(tmp_path), match="metrics.csv not found")


# ------------------------------------------------------------------ engine files (bench-engine)


@pytest.fixture(scope="module")
def engine_file(tmp_path_factory):
    from torch import nn

    from onebit import QuantLinear
    from onebit.engine import export

    path = tmp_path_factory.mktemp("engine") / "m.obe"
    export(nn.Sequential(QuantLinear(8, 4, input_quantizer="ste_sign", kernel_quantizer="ste_sign")), path, (1, 8))
    return path


@pytest.mark.parametrize(
    "how, match",
    [
        ("empty", "not an onebit engine file"),
        ("garbage", "not an onebit engine file"),
        ("truncated", "is truncated"),
        ("version 99", "format version 99; this onebit reads version 1"),
        ("folder", "is not a onebit run folder"),  # a folder is read as a run folder
    ],
)
def test_bench_engine_on_damaged_files(capsys, tmp_path, engine_file, how, match):
    from test_errors import _damage

    path = tmp_path / "bad.obe"
    if how == "folder":
        path.mkdir()
    else:
        blob = engine_file.read_bytes()
        data = {"empty": b"", "garbage": b"ONEBITE?" + blob[8:], "truncated": blob[:-8]}
        path.write_bytes(data[how] if how in data else _damage(blob, how))
    refused(capsys, "bench-engine", str(path), "--repeats", "1", "--backend", "numpy", match=match)


def test_export_a_zoo_model_at_its_own_input_size_also_as_onnx(capsys, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: --onnx not verified")
    onnx_file = tmp_path / "m.onnx"
    code, out, err = run_cli(capsys, "export", "small_cnn", str(tmp_path / "m.obe"), "--onnx", str(onnx_file))
    assert code == 0 and "input 1x1x28x28" in out, err  # the registry's MNIST size, not 3x32x32
    (x,) = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).get_inputs()
    assert x.shape[1:] == [1, 28, 28]


def test_bench_engine_says_how_it_measured(capsys):
    code, out, err = run_cli(
        capsys, "bench-engine", "small_cnn", "--batch", "3", "--repeats", "2", "--threads", "1", "--backend", "numpy"
    )
    assert code == 0, err
    assert "median of 2 timed runs" in out and "engine: numpy backend, 1 threads, in a process of its own" in out
    assert "fp32: 1 threads, popcount forward off" in out and "# CPU: " in out
    (row,) = [line for line in out.splitlines() if line.startswith("| 3 |")]
    assert row.split(" | ")[3].endswith(("faster", "slower"))
    same, diff = row.split(" | ")[4].rstrip(" |").split(", ")
    assert same == "3/3" and float(diff) < 1e-4  # the engine's answers are torch's


@pytest.mark.parametrize("torch_s, engine_s, text", [(2.0, 1.0, "2.00x faster"), (0.5e-3, 1.07e-3, "2.14x slower")])
def test_bench_engine_reports_the_engine_slower_when_it_is(torch_s, engine_s, text):
    from onebit.cli.deploy import _ratio

    assert _ratio(torch_s, engine_s) == text


def test_export_to_a_folder_that_does_not_exist(capsys, tmp_path):
    refused(
        capsys, "export", "small_cnn", str(tmp_path / "no" / "m.obe"), "--input-size", "1,28,28", match="No such file"
    )
    refused(capsys, "export", "small_cnn", str(tmp_path), "--input-size", "1,28,28", match="Is a directory")


# ------------------------------------------------------------------ model input sizes


@pytest.mark.parametrize(
    "args, match",
    [
        (["summary", "small_cnn", "--input-size", "1,8,8"], "--input-size 1,8,8: small_cnn image_size=8 is too small"),
        (["summary", "small_cnn", "--input-size", "1,28,32"], "small_cnn takes C,H,W with any C and H = W"),
        (["summary", "small_cnn", "--input-size", "28,28"], "--input-size '28,28': expected C,H,W"),
        (["summary", "small_cnn", "--input-size", "1,-28,28"], "expected C,H,W"),
        (
            ["summary", "quicknet", "--input-size", "3,4,4"],
            "quicknet does not run on input size 3,4,4 (Given input size",
        ),
        (["summary", "small_cnn", "--num-classes", "0"], "--num-classes 0: must be >= 1"),
        (["summary", "cifar10-binarynet-bop", "--input-size", "3,8,8"], "binarynet needs image_size >= 10"),
        (
            ["export", "small_cnn", "x.obe", "--input-size", "1,8,8"],
            "--input-size 1,8,8: small_cnn image_size=8 is too small",
        ),
        (
            ["bench-engine", "small_cnn", "--input-size", "3,4,4"],
            "--input-size 3,4,4: small_cnn image_size=4 is too small",
        ),
        (["bench-engine", "small_cnn", "--batch", "0"], "--batch 0: must be >= 1"),
        (["bench-engine", "small_cnn", "--threads", "-1"], "--threads -1: must be >= 1"),
        (["bench-engine", "small_cnn", "--repeats", "0"], "--repeats 0: must be >= 1"),
    ],
)
def test_wrong_input_sizes_say_what_the_model_takes(capsys, tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    refused(capsys, *args, match=match)
    assert not (tmp_path / "x.obe").exists()


def test_summary_builds_a_zoo_model_for_the_size_asked(capsys):
    """small_cnn takes any square size >= 10 (the builder's image_size): a CIFAR-sized summary works."""
    code, out, err = run_cli(capsys, "summary", "small_cnn", "--input-size", "3,32,32")
    assert code == 0 and "(-1, 32, 30, 30)" in out, err
