"""Recipes: every bundled recipe loads, documents its source, and runs a step at tiny sizes on
data written by the test; sweeps and the reproduction study's experiments run end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from onebit.models import create_model, list_models
from onebit.recipes import KINDS, list_recipes, load_recipe
from onebit.training import train
from onebit.training.checkpoint import load
from onebit.training.config import ConfigError
from onebit.training.experiments import approximation_viewpoint, run_seeds, run_sweep, seed_statistics
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
        "mnist-bop-sweep",
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


@pytest.mark.parametrize("name, n_runs", [("cifar10-bop-sweep", 5), ("mnist-bop-sweep", 7)])
def test_bop_sweep_runs_all_and_plots(tmp_path, name, n_runs):
    recipe = load_recipe(name)
    recipe = recipe.with_overrides(TINY + data_overrides(recipe, tmp_path) + [f"out={tmp_path / 'runs'}"])
    summary = run_sweep(recipe, verbose=False)
    assert len(summary["runs"]) == n_runs
    root = tmp_path / "runs" / name
    (sweep_dir,) = list(root.iterdir())
    assert (sweep_dir / "compare.png").is_file() and (sweep_dir / "compare.pdf").is_file()
    assert json.loads((sweep_dir / "summary.json").read_text())["epochs"] == 1
    assert len([d for d in sweep_dir.iterdir() if (d / "metrics.csv").is_file()]) == n_runs
    # one column per swept hyperparameter: the gamma study and the threshold study
    assert {g for run in summary["runs"] for g in run["group"]} == {g for run in recipe.runs for g in run["group"]}


def test_lr_invariance_is_the_studys_five_configurations():
    """Figure 1 of the reproduction study: latent weights, batch 64, 100 epochs, one optimizer."""
    recipe = load_recipe("lr-invariance")
    seen = set()
    for _, c in recipe.run_configs():
        assert (c["optimizer"], c["kernel_quantizer"], c["kernel_constraint"]) == ("latent", "ste_sign", "weight_clip")
        assert (c["batch_size"], c["epochs"], c["latent_lr"], c["init_scale"]) == (64, 100, 0.0, 1.0)
        assert c["real_optimizer"] == "adam" or c["momentum"] == 0.0  # Keras SGD: no momentum
        seen.add((c["real_optimizer"], c["lr"], c["kernel_init"], c["init_scale_all"]))
    assert seen == {
        ("sgd", 0.01, "glorot_uniform", 1.0),
        ("sgd", 1.0, "glorot_uniform", 1.0),
        ("sgd", 0.01, "glorot_uniform", 0.01),
        ("sgd", 0.01, "random_uniform", 1.0),
        ("adam", 0.01, "random_uniform", 1.0),
    }
    assert load_recipe("lr-invariance").with_overrides(["epochs=5"]).run_configs()[0][1]["epochs"] == 5


def test_lr_invariance_initialisations():
    """random_uniform draws kernels in +/-0.05; init_scale_all scales kernels and batch-norm
    statistics (moving variance 1 -> 0.01), as the study's code scales every layer weight."""
    from onebit.layers import QuantLayer
    from onebit.training.build import build_model

    def model(**keys):
        torch.manual_seed(0)
        config = dict(load_recipe("lr-invariance").config, **keys)
        return build_model(config, 10, (1, 28, 28))

    glorot, uniform, scaled = model(), model(kernel_init="random_uniform"), model(init_scale_all=0.01)
    for g, u, s in zip(glorot.modules(), uniform.modules(), scaled.modules()):
        if isinstance(g, QuantLayer):
            assert u.weight.abs().max() <= 0.05 and u.weight.abs().max() > 0.04
            fan_in, fan_out = g.weight[0].numel(), g.weight.shape[0] * g.weight[0, 0].numel()
            assert g.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
            torch.testing.assert_close(s.weight, 0.01 * g.weight)
        if isinstance(g, torch.nn.modules.batchnorm._BatchNorm):
            assert torch.equal(s.running_var, torch.full_like(g.running_var, 0.01))
            assert torch.equal(s.bias, g.bias) and not s.bias.any()


def test_lr_invariance_sweep_runs(tmp_path):
    recipe = load_recipe("lr-invariance").with_overrides(TINY + ["batch_size=16", f"out={tmp_path}"])
    summary = run_sweep(recipe, verbose=False)
    assert len(summary["runs"]) == 5 and summary["plot"].endswith("compare.png")


def test_approximation_viewpoint(tmp_path):
    recipe = load_recipe("approximation-viewpoint").with_overrides(
        TINY[:-2] + ["max_steps=10", "batch_size=32", "seeds=1", f"out={tmp_path}"]
    )
    summary = approximation_viewpoint(recipe, verbose=False)
    rows = ("binary_weights", "latent_weights", "latent_weights_bn_retrained", "binary_weights_bn_retrained")
    for key in (*rows, "latent_weights_bn_reestimated"):
        assert 0 <= summary[f"accuracy_{key}"] <= 1
    saved = json.loads((tmp_path / "approximation-viewpoint").glob("*/approximation.json").__next__().read_text())
    assert saved["binary_weights"] == summary["accuracy_binary_weights"] and set(rows) <= set(saved)


def test_latent_view_keeps_the_first_layer_binary():
    from onebit.layers import QuantLayer
    from onebit.quantizers import SteSign
    from onebit.training.experiments import latent_view

    model = create_model("small_cnn")
    layers = [m for m in latent_view(model).modules() if isinstance(m, QuantLayer)]
    assert len(layers) == 5 and isinstance(layers[0].kernel_quantizer, SteSign)
    assert all(m.kernel_quantizer is None for m in layers[1:])
    assert all(m.input_quantizer is not None for m in layers[1:]) and layers[0].input_quantizer is None
    originals = [m for m in model.modules() if isinstance(m, QuantLayer)]
    assert all(isinstance(m.kernel_quantizer, SteSign) for m in originals)  # the model is not changed


def test_batchnorm_retraining_changes_only_batch_norm():
    """Kernels bit-identical; betas and running statistics change."""
    from onebit.data import Loader
    from onebit.training.experiments import latent_view, retrain_batchnorm

    torch.manual_seed(0)
    model = latent_view(create_model("small_cnn"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(64, 1, 28, 28) * 2 - 1
    loader = Loader(_Data(x), 16, train=True)
    config = dict(load_recipe("approximation-viewpoint").config, epochs=2)
    retrain_batchnorm(model, loader, config, torch.device("cpu"))
    after = model.state_dict()
    for k, v in before.items():
        if k.endswith("weight") and v.dim() > 1:
            assert torch.equal(v, after[k]), k
        elif k.endswith(("bias", "running_mean", "running_var")):
            assert not torch.equal(v, after[k]), k
    assert all(p.requires_grad for p in model.parameters())


class _Data:
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def get(self, indices, train=False, generator=None):
        return self.x[indices], indices % 10


def test_seed_statistics():
    rows = [{"a": 0.5, "b": 1.0}, {"a": 0.7, "b": 1.0}, {"a": 0.9, "b": 1.0}]
    stats = seed_statistics(rows)
    assert stats["a"]["mean"] == pytest.approx(0.7) and stats["a"]["n"] == 3
    assert stats["a"]["std"] == pytest.approx(float(np.std([0.5, 0.7, 0.9])))
    assert stats["b"] == {"mean": 1.0, "std": 0.0, "n": 3}


def test_seeds_runs_each_seed_and_summarises(tmp_path):
    recipe = load_recipe("approximation-viewpoint").with_overrides(
        TINY[:-2] + ["max_steps=2", "batch_size=32", "seeds=2", "seed=3", f"out={tmp_path}"]
    )
    summary = run_seeds(recipe, verbose=False)
    assert [r["seed"] for r in summary["runs"]] == [3, 4]
    root = Path(summary["run_dir"])
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["seed-3", "seed-4"]
    for seed in (3, 4):
        assert json.loads((root / f"seed-{seed}" / "summary.json").read_text())["run_dir"].endswith(f"seed-{seed}")
    key = "accuracy_latent_weights_bn_retrained"
    values = [r[key] for r in summary["runs"]]
    assert summary["mean_std"][key]["mean"] == pytest.approx(np.mean(values))
    assert summary["mean_std"][key]["std"] == pytest.approx(np.std(values))
    assert json.loads((root / "seeds.json").read_text())["mean_std"] == summary["mean_std"]
    lines = (root / "seeds.csv").read_text().splitlines()
    assert lines[0].startswith("seed,") and [line.split(",")[0] for line in lines[1:]] == ["3", "4", "mean", "std"]


def test_seeds_refused_for_sweeps(tmp_path):
    with pytest.raises(ConfigError, match="seeds > 1"):
        run_seeds(load_recipe("lr-invariance").with_overrides(["seeds=2", f"out={tmp_path}"]), verbose=False)


def test_seeds_option_of_onebit_train():
    from onebit.cli.train import _parse

    _, positional, overrides = _parse(["approximation-viewpoint", "--seeds", "3"], None)
    assert positional == ["approximation-viewpoint"] and "seeds=3" in overrides
    assert load_recipe("approximation-viewpoint").config["seeds"] == 10  # the study's Table 1
