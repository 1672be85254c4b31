"""Run folders (onebit.training.runs) shared between researchers: a checkpoint in one is read
safely (a malicious, truncated or foreign file is refused with one line by `onebit eval`,
`onebit export`, `onebit train --resume` and `onebit.load_run`, and runs nothing);
model.safetensors holds the trained weights for anyone to load."""

import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import onebit
from onebit.cli import main
from onebit.layers import binary_parameters
from onebit.recipes import load_recipe
from onebit.training import RunFolder, train
from onebit.training.checkpoint import CheckpointError, load

TINY = dict(epochs=1, max_steps=2, batch_size=32, threads=1, plots=False, tensorboard=False, bn_reestimate=0)


class Evil:
    """Unpickling this object creates ``marker``: code run by reading a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny mnist-bop run (channels_last, as the recipe): its folder, copied by ``run``."""
    out = tmp_path_factory.mktemp("runs")
    config = dict(load_recipe("mnist-bop").config, out=str(out), **TINY)
    assert config["channels_last"]
    return RunFolder(train(config, recipe="mnist-bop", verbose=False)["run_dir"])


@pytest.fixture
def run(trained, tmp_path):
    return RunFolder(shutil.copytree(trained.path, tmp_path / "run"))


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_checkpoints_load_with_weights_only(trained):
    for path in (trained.best, trained.last):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["epoch"] == 1 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def test_model_safetensors_gives_the_runs_logits(trained):
    safetensors = pytest.importorskip("safetensors.torch")
    assert trained.weights.name == "model.safetensors" and trained.weights.is_file()
    weights = safetensors.load_file(trained.weights)
    best = load(trained.best)["model"]
    assert weights.keys() == best.keys() and all(torch.equal(weights[k], best[k]) for k in best)
    # as docs/training.md says: the run's keyword arguments (config.toml, the data set's shape)
    model = onebit.create_model(
        "small_cnn",
        num_classes=10,
        in_channels=1,
        image_size=28,
        input_quantizer="ste_sign",
        kernel_quantizer="noop",
        kernel_constraint=None,
    )
    model.load_state_dict(weights)
    model.eval()
    kernels = list(binary_parameters(model))
    assert kernels and all(set(k.unique().tolist()) == {-1.0, 1.0} for k in kernels)
    reference, config = onebit.load_run(trained.path)
    assert not reference.training and config["model"] == "small_cnn"
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_import_onebit_does_not_import_training():
    code = "import sys, onebit; assert callable(onebit.load_run); print('onebit.training' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


def refused(code, err, path):
    assert code == 2, err
    assert err.startswith("onebit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and ("not a onebit checkpoint" in err or "does not fit" in err), err


COMMANDS = {
    "eval": lambda run, which, out: ["eval", run.path, "--checkpoint", which],
    "export": lambda run, which, out: ["export", run.path, out / "m.obe", "--which", which],
    "resume": lambda run, which, out: ["train", "--resume", run.path, "epochs=2"],
}


@pytest.mark.parametrize(
    "command, which",
    [(c, w) for c in ("eval", "export", "load_run") for w in ("best", "last")] + [("resume", "last")],
)
def test_a_malicious_checkpoint_runs_nothing(capsys, tmp_path, run, command, which):
    marker = tmp_path / "pwned"
    path = run.best if which == "best" else run.last
    torch.save(dict(load(path), config=Evil(marker)), path)  # a valid checkpoint, but for one entry
    if command == "load_run":
        with pytest.raises(CheckpointError, match=f"{path} is not a onebit checkpoint or is damaged"):
            onebit.load_run(run.path, which=which)
    else:
        code, _, err = run_cli(capsys, *COMMANDS[command](run, which, tmp_path))
        refused(code, err, path)
    assert not marker.exists()
    assert not (tmp_path / "m.obe").exists()


@pytest.mark.parametrize("kind", ["raw pickle", "truncated", "garbage", "another model"])
def test_a_damaged_checkpoint_is_one_line(capsys, tmp_path, run, kind):
    marker = tmp_path / "pwned"
    if kind == "raw pickle":
        run.best.write_bytes(pickle.dumps(Evil(marker)))
    elif kind == "truncated":
        run.best.write_bytes(run.best.read_bytes()[:1000])
    elif kind == "garbage":
        run.best.write_bytes(bytes(range(256)) * 8)
    else:  # a valid checkpoint of another model
        state = load(run.best)
        state["model"] = {k: v for k, v in state["model"].items() if "bias" not in k}
        state["model"]["extra.weight"] = torch.ones(1)
        torch.save(state, run.best)
    code, _, err = run_cli(capsys, "eval", run.path)
    refused(code, err, run.best)
    with pytest.raises(CheckpointError):
        onebit.load_run(run.path)
    assert not marker.exists()


def test_the_console_refuses_a_malicious_checkpoint(tmp_path, run):
    marker = tmp_path / "pwned"
    run.last.write_bytes(pickle.dumps(Evil(marker)))
    p = subprocess.run(
        [sys.executable, "-m", "onebit", "train", "--resume", str(run.path)], capture_output=True, text=True
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{run.last} is not a onebit checkpoint" in p.stderr and not marker.exists()


def test_resume_with_weights_of_another_model_is_one_line(capsys, run):
    """A last.pt whose model weights do not fit the run's model: one line naming the file."""
    state = load(run.last)
    state["model"] = {k: v for k, v in state["model"].items() if "bias" not in k}
    state["model"]["extra.weight"] = torch.ones(1)
    torch.save(state, run.last)
    code, _, err = run_cli(capsys, "train", "--resume", run.path, "epochs=2")
    refused(code, err, run.last)
    assert "does not fit the run's model" in err
