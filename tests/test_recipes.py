"""Recipes: every bundled recipe loads, documents its source, and runs a step at tiny sizes on
data written by the test; sweeps and the reproduction study's experiments run end to end."""

import json

import pytest
import torch

from onebit.models import list_models
from onebit.recipes import KINDS, list_recipes, load_recipe
from onebit.training import train
from onebit.training.checkpoint import load
from onebit.training.config import ConfigError
from onebit.training.experiments import approximation_viewpoint, run_sweep
from test_data import write_cifar, write_imagefolder

TINY = ["plots=false", "tensorboard=false", "threads=1", "epochs=1", "max_steps=1", "log_every=1"]
TRAIN_RECIPES = [n for n in list_recipes() if load_recipe(n).kind == "train"]


def data_overrides(recipe, tmp_path) -> list[str]:
    dataset = recipe.config["dataset"]
    if dataset == "cifar10":
        write_cifar(tmp_path / "data", n_per_batch=4, n_test=4)
        return [f"data_dir={tmp_path / 'data'}", "batch_size=4"]
    if dataset == "imagefolder":
        pytest.importorskip("PIL")
        write_imagefolder(tmp_path / "data", per_class=2, size=(72, 68))
        return [f"data_dir={tmp_path / 'data'}", "batch_size=2", "image_size=64"]
    return ["batch_size=16"]


def test_every_recipe_is_documented():
    names = list_recipes()
    for required in (
        "mnist-bop",
        "mnist-latent",
        "cifar10-binarynet-bop",
        "cifar10-binarynet-bop-re",
        "cifar10-bop-sweep",
        "imagenet-binary-alexnet-bop",
        "imagenet-xnornet-bop",
        "imagenet-birealnet-bop",
        "approximation-viewpoint",
        "lr-invariance",
    ):
        assert required in names
    for name in names:
        r = load_recipe(name)
        assert r.description and r.source and r.kind in KINDS and r.notes, name
        assert r.config["model"] in list_models(), name


def test_paper_hyperparameters():
    sec52 = load_recipe("cifar10-binarynet-bop").config
    assert (sec52["batch_size"], sec52["epochs"], sec52["threshold"], sec52["gamma"], sec52["lr"]) == (
        50,
        500,
        1e-8,
        1e-4,
        1e-2,
    )
    assert (sec52["gamma_decay"], sec52["gamma_decay_epochs"], sec52["gamma_decay_rate"]) == ("step", 100.0, 0.1)
    re = load_recipe("cifar10-binarynet-bop-re").config
    assert (re["gamma"], re["threshold"]) == (1e-3, 1e-7)
    sweep = load_recipe("cifar10-bop-sweep")
    points = {(c["gamma"], c["threshold"]) for _, c in sweep.run_configs()}
    assert points == {(1e-2, 1e-6), (1e-3, 1e-6), (1e-4, 1e-6), (1e-3, 0.0), (1e-3, 1e-5)}
    birealnet = load_recipe("imagenet-birealnet-bop").config
    assert (birealnet["batch_size"], birealnet["gamma_end"], birealnet["lr_end"]) == (1024, 1e-6, 5e-6)


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="available: .*mnist-bop"):
        load_recipe("mnist-nope")


def test_recipe_that_is_not_toml(tmp_path, monkeypatch):
    import onebit.recipes as recipes

    (tmp_path / "broken.toml").write_text("[config\nepochs = ")
    monkeypatch.setattr(recipes, "_files", lambda: {"broken": tmp_path / "broken.toml"})
    with pytest.raises(ConfigError, match=r"^recipe 'broken' is not valid TOML: "):
        load_recipe("broken")


@pytest.mark.parametrize("name", TRAIN_RECIPES)
def test_train_recipe_runs_a_step(tmp_path, name):
    recipe = load_recipe(name)
    recipe = recipe.with_overrides(TINY + data_overrides(recipe, tmp_path) + [f"out={tmp_path / 'runs'}"])
    summary = train(recipe.config, recipe=name, verbose=False)
    assert summary["steps"] == 1 and 0 <= summary["test_accuracy"] <= 1
    model = load(f"{summary['run_dir']}/last.pt")["model"]
    assert all(torch.isfinite(v.float()).all() for v in model.values())


def test_bop_sweep_runs_all_and_plots(tmp_path):
    recipe = load_recipe("cifar10-bop-sweep")
    recipe = recipe.with_overrides(TINY + data_overrides(recipe, tmp_path) + [f"out={tmp_path / 'runs'}"])
    summary = run_sweep(recipe, verbose=False)
    assert len(summary["runs"]) == 5
    root = tmp_path / "runs" / "cifar10-bop-sweep"
    (sweep_dir,) = list(root.iterdir())
    assert (sweep_dir / "compare.png").is_file() and json.loads((sweep_dir / "summary.json").read_text())["epochs"] == 1
    assert len([d for d in sweep_dir.iterdir() if (d / "metrics.csv").is_file()]) == 5


def test_lr_invariance_scaled_runs_match(tmp_path):
    """Scaling init, clip and latent lr together gives the same binary network, step for step."""
    recipe = load_recipe("lr-invariance").with_overrides(
        TINY[:-2] + ["max_steps=6", "batch_size=16", f"out={tmp_path}"]
    )
    runs = recipe.run_configs()
    states = []
    for _, config in runs[:2] + runs[3:4]:
        s = train(config, recipe="lr", verbose=False)
        states.append(load(f"{s['run_dir']}/last.pt")["model"])
    ref, scaled, lr_only = states
    kernels = [k for k in ref if k.endswith("weight") and ref[k].dim() > 1]
    for k in ref:
        if k in kernels:
            assert torch.equal(ref[k] >= 0, scaled[k] >= 0), k
            torch.testing.assert_close(scaled[k], 10 * ref[k], rtol=1e-4, atol=1e-5)
        else:
            assert torch.equal(ref[k], scaled[k]), k
    assert any(not torch.equal(ref[k] >= 0, lr_only[k] >= 0) for k in kernels)


def test_lr_invariance_sweep_runs(tmp_path):
    recipe = load_recipe("lr-invariance").with_overrides(TINY + ["batch_size=16", f"out={tmp_path}"])
    summary = run_sweep(recipe, verbose=False)
    assert len(summary["runs"]) == 5 and summary["plot"].endswith("compare.png")


def test_approximation_viewpoint(tmp_path):
    recipe = load_recipe("approximation-viewpoint").with_overrides(
        TINY[:-2] + ["max_steps=10", "batch_size=32", f"out={tmp_path}"]
    )
    summary = approximation_viewpoint(recipe, verbose=False)
    for key in ("accuracy_binary_weights", "accuracy_latent_weights", "accuracy_latent_weights_bn_reestimated"):
        assert 0 <= summary[key] <= 1
    saved = json.loads((tmp_path / "approximation-viewpoint").glob("*/approximation.json").__next__().read_text())
    assert saved["binary_weights"] == summary["accuracy_binary_weights"]
