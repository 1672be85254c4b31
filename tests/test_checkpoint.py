"""Checkpoints (onebit.training.checkpoint): read with weights_only=True, so a file can be refused
but never runs code; RNG states stored as tensors and lists restore bit for bit; optimizer and
schedule states load safely; model weights written as safetensors."""

import pickle
import random

import numpy as np
import pytest
import torch

from onebit.recipes import load_recipe
from onebit.training.build import build_model, build_optimizer, build_schedulers
from onebit.training.checkpoint import (
    KEYS,
    CheckpointError,
    load,
    rng_state,
    save_atomic,
    save_weights,
    set_rng_state,
)
from onebit.training.config import ConfigError, apply_overrides


class Evil:
    """Unpickling this object opens (creates) ``marker``: code run by reading a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def valid_checkpoint() -> dict:
    """A dict with every key of a training checkpoint, each of the right type."""
    state = {key: 0 for key in KEYS}
    state.update(config={}, model={"w": torch.ones(2)}, optimizer={}, schedulers=[], history=[], rng=rng_state())
    return state


def draws():
    return (
        torch.rand(4),
        np.random.rand(4).tolist(),
        np.random.randn(3).tolist(),
        [random.random() for _ in range(3)],
        random.gauss(0.0, 1.0),
    )


def only_safe_types(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and only_safe_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(only_safe_types(v) for v in value)
    return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))


def test_rng_states_restore_bit_for_bit(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # odd count: numpy holds a cached gaussian
    random.gauss(0.0, 1.0)  # python holds gauss_next
    state = rng_state()
    assert only_safe_types(state)  # no numpy array, no tuple: loads with weights_only=True
    save_atomic({"rng": state}, tmp_path / "rng.pt")
    expected = draws()
    set_rng_state(load(tmp_path / "rng.pt", keys=())["rng"])
    got = draws()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


@pytest.mark.parametrize(
    "recipe, overrides",
    [("mnist-bop", []), ("mnist-latent", []), ("mnist-latent", ["real_optimizer=sgd", "momentum=0.9"])],
)
def test_optimizer_and_schedule_states_load_safely(tmp_path, recipe, overrides):
    """Bop + Adam (CaseOptimizer), Adam, SGD and their LambdaLR schedules, after a step."""
    config = apply_overrides(load_recipe(recipe).config, overrides)
    model = build_model(config, 10, (1, 28, 28))
    optimizer, bop = build_optimizer(config, model)
    schedulers = build_schedulers(config, optimizer, bop, 10, 100)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    for s in schedulers:
        s.step()
    save_atomic(
        {"optimizer": optimizer.state_dict(), "schedulers": [s.state_dict() for s in schedulers]}, tmp_path / "o.pt"
    )
    saved = torch.load(tmp_path / "o.pt", weights_only=True)
    fresh, fresh_bop = build_optimizer(config, model)  # restored as a resume does
    fresh_schedulers = build_schedulers(config, fresh, fresh_bop, 10, 100)
    fresh.load_state_dict(saved["optimizer"])
    for s, sd in zip(fresh_schedulers, saved["schedulers"]):
        s.load_state_dict(sd)
        assert s.last_epoch == 1
    assert fresh.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("how", ["pickle", "pickle 4", "torch.save", "torch.save inside"])
def test_a_malicious_file_is_refused_and_runs_nothing(tmp_path, how):
    marker, path = tmp_path / "pwned", tmp_path / "last.pt"
    if how.startswith("pickle"):
        path.write_bytes(pickle.dumps(Evil(marker), protocol=4 if how == "pickle 4" else 2))
    elif how == "torch.save":
        torch.save(Evil(marker), path)
    else:
        torch.save(dict(valid_checkpoint(), config=Evil(marker)), path)
    with pytest.raises(CheckpointError, match="last.pt is not a onebit checkpoint or is damaged") as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and "Weights only" not in message and "weights_only" not in message, message
    if how != "pickle 4":  # torch reads a bare pickle's protocol-4 frame as an unsupported operand
        assert "refers to io.open" in message, message  # builtins.open is io.open
    assert not marker.exists()
    assert isinstance(info.value, ConfigError)  # the CLI prints ConfigErrors as one line, exit status 2


def damage(path, kind):
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("[config]\nepochs = 3\n")
    elif kind == "a list":
        torch.save([torch.ones(2)], path)
    elif kind == "missing keys":
        torch.save({"model": {"w": torch.ones(2)}}, path)
    elif kind == "wrong type":
        torch.save(dict(valid_checkpoint(), model=[1, 2]), path)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "text", "a list", "missing keys", "wrong type"])
def test_a_damaged_file_is_one_line(tmp_path, kind):
    path = tmp_path / "best.pt"
    save_atomic(valid_checkpoint(), path)
    assert load(path)["model"]["w"].sum() == 2
    damage(path, kind)
    with pytest.raises(CheckpointError, match="best.pt is not a onebit checkpoint") as info:
        load(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400, str(info.value)


def test_a_checkpoint_with_numpy_inside_is_refused(tmp_path):
    """onebit 0.1.0 stored numpy's RNG state as it comes (a numpy array): refused, with a hint."""
    path = tmp_path / "last.pt"
    torch.save(dict(valid_checkpoint(), rng={"numpy": np.random.get_state()}), path)
    with pytest.raises(CheckpointError, match="refers to numpy.* 0.1.0 or earlier"):
        load(path)


def test_save_weights_writes_contiguous_tensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.copy_(torch.where(conv.weight < 0, -1.0, 1.0))
    assert not conv.weight.is_contiguous()
    save_weights(conv.state_dict(), tmp_path / "model.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    loaded = safetensors.load_file(tmp_path / "model.safetensors")
    assert loaded.keys() == conv.state_dict().keys()
    assert torch.equal(loaded["weight"], conv.weight) and set(loaded["weight"].unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(loaded["bias"], conv.bias)
