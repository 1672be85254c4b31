"""Larq / Keras files in onebit: ``from_larq`` (onebit.models.keras_import, keras_layers,
keras_file) and Larq Zoo weights on onebit's zoo (``create_model(name, weights=...)``,
onebit.models.larq_zoo_weights).

The fixtures in tests/fixtures (small Larq models with Larq's outputs) were written by
tests/fixtures/make_larq_fixtures.py with TensorFlow and Larq; these tests need only h5py. The
full-size Larq Zoo comparison runs Larq itself and is skipped unless ONEBIT_LARQ_PYTHON names a
Python with tensorflow, tf-keras, larq and larq-zoo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import onebit as ob
from onebit.models import KerasImportError, from_larq, load_larq_weights

h5py = pytest.importorskip("h5py", reason="reading Keras files needs h5py (the 'larq' extra)")

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = np.load(FIXTURES / "larq_expected.npz")


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


# ------------------------------------------------------------------ Larq models (from_larq)


def test_functional_larq_cnn_gives_larqs_outputs():
    model = from_larq(FIXTURES / "larq_cnn.h5")
    assert model.input_sizes == [(3, 12, 12)] and not model.training
    with torch.no_grad():
        logits, binary = model(_nchw(EXPECTED["cnn_x"]))
    np.testing.assert_allclose(logits.numpy(), EXPECTED["cnn_logits"], rtol=1e-5, atol=1e-5)
    # a binary convolution of +/-1 inputs and kernels: integers, bit for bit
    assert np.array_equal(binary.permute(0, 2, 3, 1).numpy(), EXPECTED["cnn_binary"])


def test_functional_larq_cnn_maps_onto_onebits_layers():
    model = from_larq(FIXTURES / "larq_cnn.h5")
    conv = model.layers["binary_conv"]
    assert isinstance(conv, ob.QuantConv2d) and conv.pad_values == 1.0 and conv.padding == "same"
    assert isinstance(conv.input_quantizer, ob.quantizers.SteSign) and conv.input_quantizer.clip_value == 1.25
    assert conv.kernel_constraint.clip_value == 1.25
    assert len(list(ob.binary_parameters(model))) == 5  # four convolutions and the dense layer
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert sorted((bn.eps, bn.momentum) for bn in bns)[0] == pytest.approx((1e-5, 0.1))


def test_sequential_keras_archive_gives_larqs_outputs():
    model = from_larq(FIXTURES / "larq_mlp.keras")
    with torch.no_grad():
        out = model(_nchw(EXPECTED["mlp_x"]))
    np.testing.assert_allclose(out.numpy(), EXPECTED["mlp_out"], rtol=1e-5, atol=1e-6)
    kinds = {
        type(q).__name__
        for m in model.modules()
        if isinstance(m, ob.QuantLinear)
        for q in (m.input_quantizer, m.kernel_quantizer)
    }
    assert {"SteSign", "SwishSign", "SteTern", "SteHeaviside", "DoReFa"} <= kinds


def test_imported_model_trains():
    model = from_larq(FIXTURES / "larq_cnn.h5").train()
    logits, _ = model(_nchw(EXPECTED["cnn_x"]))
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_weights_only_file_is_refused_by_from_larq():
    with pytest.raises(KerasImportError, match="weights only.*create_model"):
        from_larq(FIXTURES / "larq_cnn_weights.h5")


# ------------------------------------------------------------------ hand-written files: errors


def _layer(cls, name, config, sources=()):
    return {
        "class_name": cls,
        "name": name,
        "config": {"name": name, **config},
        "inbound_nodes": [[[s, 0, 0, {}] for s in sources]] if sources else [],
    }


def _model_file(path: Path, layers: list, weights: dict) -> Path:
    """A Keras 2 whole-model .h5: Input (None, 4, 4, 2) -> ``layers`` (a chain)."""
    chain = [_layer("InputLayer", "in", {"batch_input_shape": [None, 4, 4, 2]})]
    for layer in layers:
        chain.append({**layer, "inbound_nodes": [[[chain[-1]["name"], 0, 0, {}]]]})
    config = {
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": chain,
            "input_layers": [["in", 0, 0]],
            "output_layers": [[chain[-1]["name"], 0, 0]],
        },
    }
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [layer["name"].encode() for layer in chain]
        for layer in chain:
            g = group.create_group(layer["name"])
            tensors = weights.get(layer["name"], {})
            g.attrs["weight_names"] = [f"{layer['name']}/{k}:0".encode() for k in tensors]
            for k, v in tensors.items():
                g[f"{layer['name']}/{k}:0"] = v
    return path


CONV = {"filters": 3, "kernel_size": [3, 3], "padding": "same", "use_bias": False}
KERNEL = {"kernel": np.ones((3, 3, 2, 3), np.float32)}


@pytest.mark.parametrize(
    "layer, weights, message",
    [
        (_layer("Lambda", "lam", {"function": "gASV..."}), {}, r"'lam' is a Lambda layer .*never runs code"),
        (_layer("TFOpLambda", "op", {"function": "math.sin"}), {}, r"'op' is a TFOpLambda layer calling tf.math.sin"),
        (_layer("Conv3D", "c3", {}), {}, r"'c3': Conv3D has no onebit equivalent; onebit maps: .*QuantConv2D"),
        (
            _layer("QuantConv2D", "q", {**CONV, "kernel_quantizer": "my_sign"}),
            {"q": KERNEL},
            r"'q': kernel_quantizer 'my_sign' has no onebit equivalent; onebit has: .*ste_sign",
        ),
        (
            _layer("QuantConv2D", "q", {**CONV, "input_quantizer": {"class_name": "larq>Fancy", "config": {}}}),
            {"q": KERNEL},
            r"input_quantizer 'Fancy' has no onebit equivalent",
        ),
        (
            _layer("QuantConv2D", "q", {**CONV, "kernel_constraint": {"class_name": "MaxNorm", "config": {}}}),
            {"q": KERNEL},
            r"constraint 'MaxNorm' has no onebit equivalent; onebit has: weight_clip",
        ),
        (_layer("Conv2D", "c", {**CONV, "activation": "mish"}), {"c": KERNEL}, r"activation 'mish' has no onebit"),
        (
            _layer("Conv2D", "c", {**CONV, "filters": 5}),
            {"c": KERNEL},
            r"'c': kernel has shape \(3, 3, 2, 3\), the config needs \(3, 3, '\?', 5\)",
        ),
        (
            _layer("Conv2D", "c", {**CONV, "use_bias": True}),
            {"c": {**KERNEL, "bias": np.zeros(4, np.float32)}},
            r"tensor 'c/bias:0' has shape \(4,\), the layer needs \(3,\)",
        ),
        (
            _layer("Conv2D", "c", CONV),
            {"c": {**KERNEL, "extra": np.zeros(2, np.float32)}},
            r"tensors the layer does not use: 'c/extra:0'",
        ),
        (_layer("Conv2D", "c", CONV), {}, r"'c': no 'kernel' tensor in the file"),
        (_layer("Conv2D", "c", {**CONV, "data_format": "channels_first"}), {"c": KERNEL}, r"only channels_last"),
        (_layer("Conv2D", "c", {**CONV, "padding": "causal"}), {"c": KERNEL}, r"padding='causal'"),
        (
            _layer(
                "QuantDepthwiseConv2D",
                "d",
                {"kernel_size": [3, 3], "use_bias": False, "depthwise_quantizer": "magnitude_aware_sign"},
            ),
            {"d": {"depthwise_kernel": np.ones((3, 3, 2, 1), np.float32)}},
            r"'d': magnitude_aware_sign on a depthwise",
        ),
        (_layer("Sequential", "inner", {}), {}, r"'inner' is a nested Sequential model"),
    ],
)
def test_unmappable_layers_are_named(tmp_path, layer, weights, message):
    path = _model_file(tmp_path / "m.h5", [layer], weights)
    with pytest.raises(KerasImportError, match=message):
        from_larq(path)


def test_a_hand_written_model_runs_with_keras_semantics(tmp_path):
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 3)).astype(np.float32)
    layers = [_layer("Conv2D", "c", {**CONV, "strides": [2, 2]}), _layer("Flatten", "f", {})]
    model = from_larq(_model_file(tmp_path / "m.h5", layers, {"c": {"kernel": kernel}}))
    x = torch.randn(1, 2, 4, 4)
    # TF SAME with stride 2 on 4 pixels pads 0 before and 1 after
    conv = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (0, 1, 0, 1)), torch.from_numpy(kernel).permute(3, 2, 0, 1), stride=2
    )
    assert torch.allclose(model(x), conv.permute(0, 2, 3, 1).flatten(1), atol=1e-6)


def test_larq_zoos_function_quantizers_and_model_subclasses_map(tmp_path):
    """Larq Zoo serialises its own quantizers as bare function names (no code is stored), and
    models such as BinaryDenseNet under their subclass name with a functional config."""
    xnor = {"class_name": "function", "config": "xnor_weight_scale", "module": "builtins"}
    clip = {"class_name": "function", "config": "clip_by_value_activation", "module": "builtins"}
    layers = [
        _layer("QuantConv2D", "q", {**CONV, "kernel_quantizer": xnor, "input_quantizer": "ste_sign"}),
        _layer("Activation", "a", {"activation": clip}),
    ]
    path = _model_file(tmp_path / "m.h5", layers, {"q": KERNEL})
    with h5py.File(path, "a") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps({**config, "class_name": "BinaryDenseNet"})
    model = from_larq(path)
    assert type(model.layers["q"].kernel_quantizer).__name__ == "XnorWeightScale"
    out = model(torch.randn(2, 2, 4, 4))
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a model", r"neither HDF5 \(.h5\) nor a .keras archive"),
        (None, r"no such file"),
    ],
)
def test_unreadable_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "m.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KerasImportError, match=message):
        from_larq(path)


def test_archive_without_weights_and_h5_without_layers_are_refused(tmp_path):
    archive = tmp_path / "m.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(KerasImportError, match="needs model.weights.h5"):
        from_larq(archive)
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(KerasImportError, match="no 'layer_names' attribute"):
        from_larq(tmp_path / "empty.h5")


# ------------------------------------------------------------------ zoo weights (create_model)


def _keras_tensors(module: nn.Module, channels_before: int | None) -> dict:
    """The Keras-layout tensors of one onebit module (the inverse of the loader's layouts)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out = {
            "gamma": module.weight,
            "beta": module.bias,
            "moving_mean": module.running_mean,
            "moving_variance": module.running_var,
        }
        return {k: v.detach().numpy() for k, v in out.items() if v is not None}
    if isinstance(module, nn.Linear):
        kernel = module.weight.detach().numpy().T  # (in, out), rows in (C, H, W) order
        if channels_before and kernel.shape[0] != channels_before:
            kernel = kernel.reshape(channels_before, -1, kernel.shape[1]).transpose(1, 0, 2).reshape(kernel.shape)
        out = {"kernel": kernel}
    else:
        out = {"kernel": module.weight.detach().numpy().transpose(2, 3, 1, 0)}
    if module.bias is not None:
        out["bias"] = module.bias.detach().numpy()
    return out


def _write_weights(model: nn.Module, path: Path) -> Path:
    """A Keras weights file (save_weights layout) of a small onebit model, in module order."""
    channels, names = None, []
    with h5py.File(path, "w") as f:
        for i, module in enumerate(
            m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d))
        ):
            name = f"layer_{i}"
            tensors = _keras_tensors(module, channels)
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in tensors]
            for k, v in tensors.items():
                g[f"{name}/{k}:0"] = v
            names.append(name.encode())
            channels = getattr(module, "num_features", getattr(module, "out_channels", channels))
        f.attrs["layer_names"] = names
    return path


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(model.parameters()) + [b for n, b in model.named_buffers() if "running" in n]:
            p.copy_(torch.rand(p.shape, generator=g) + 0.5 if p.dim() == 1 else torch.randn(p.shape, generator=g))
    return model.eval()


def test_zoo_weights_round_trip_through_a_keras_weights_file(tmp_path):
    source = _randomized(ob.create_model("small_cnn"), 0)  # flatten of 64 x 3 x 3 before a dense layer
    path = _write_weights(source, tmp_path / "small_cnn.h5")
    loaded = ob.create_model("small_cnn", weights=path)
    assert not loaded.training
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_zoo_weights_for_another_architecture_name_the_tensor(tmp_path):
    path = _write_weights(_randomized(ob.create_model("small_cnn"), 0), tmp_path / "small_cnn.h5")
    with pytest.raises(
        KerasImportError,
        match=r"does not fit binarynet: tensor 'layer_0/kernel' of shape \(3, 3, 1, 32\); onebit's '.*' needs \(3, 3, 3, 128\)",
    ):
        ob.create_model("binarynet", weights=path)
    with pytest.raises(
        KerasImportError,
        match=r"does not fit small_cnn: tensor 'layer_\d+/kernel' of shape \(\d+, 10\); onebit's .* needs \(\d+, 7\)",
    ):
        ob.create_model("small_cnn", num_classes=7, weights=path)


def test_zoo_weights_file_that_ends_early_names_the_missing_module(tmp_path):
    model = _randomized(ob.create_model("small_cnn"), 0)
    path = _write_weights(model, tmp_path / "w.h5")
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = f.attrs["layer_names"][:-1]
    with pytest.raises(KerasImportError, match=r"the file ends before onebit's '.*'"):
        load_larq_weights(ob.create_model("small_cnn"), path)


def test_grouped_convolution_written_per_group_is_joined(tmp_path):
    """MeliusNet's stem: Keras writes a grouped convolution as one convolution per group."""
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False))
    kernels = [np.random.default_rng(i).normal(size=(3, 3, 2, 3)).astype(np.float32) for i in range(2)]
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.attrs["layer_names"] = [b"conv0", b"conv1"]
        for i, k in enumerate(kernels):
            f.create_group(f"conv{i}").attrs["weight_names"] = [f"conv{i}/kernel:0".encode()]
            f[f"conv{i}"][f"conv{i}/kernel:0"] = k
    load_larq_weights(model, tmp_path / "g.h5")
    x = torch.randn(1, 4, 5, 5)
    halves = [
        torch.nn.functional.conv2d(x[:, 2 * i : 2 * i + 2], torch.from_numpy(k).permute(3, 2, 0, 1), padding=1)
        for i, k in enumerate(kernels)
    ]
    assert torch.allclose(model(x), torch.cat(halves, dim=1), atol=1e-5)


# ------------------------------------------------------------------ Larq Zoo against Larq itself

LARQ_PYTHON = os.environ.get("ONEBIT_LARQ_PYTHON")
LARQ_ZOO = [
    "quicknet_small",
    "quicknet",
    "quicknet_large",
    "birealnet18",
    "binary_resnet_e18",
    "binary_densenet28",
    "meliusnet22",
    "xnornet",
    "binary_alexnet",
    "dorefanet",
    "real_to_binary_net",
]


@pytest.mark.skipif(
    not LARQ_PYTHON,
    reason="Larq Zoo architectures not compared with Larq: set ONEBIT_LARQ_PYTHON to a Python with tensorflow, "
    "tf-keras, larq and larq-zoo",
)
@pytest.mark.parametrize("name", LARQ_ZOO)
def test_larq_zoo_weights_give_larqs_logits(tmp_path, name):
    """Larq's logits from onebit, per image to 1e-4 of the largest logit. Random weights and
    batch-norm statistics leave some pre-sign values within float rounding of 0, where TensorFlow
    and PyTorch may take different signs and the flip spreads through the layers after it; so at
    least three of the four images must agree, and the argmax of every agreeing one."""
    script = FIXTURES / "make_larq_fixtures.py"
    subprocess.run([LARQ_PYTHON, str(script), "zoo", str(tmp_path), name], check=True, capture_output=True)
    reference = np.load(tmp_path / f"{name}.npz")
    model = ob.create_model(name, weights=tmp_path / f"{name}.h5")
    with torch.no_grad():
        logits = model(_nchw(reference["x"])).numpy()
    expected = reference["logits"]
    scale = np.abs(expected).max(axis=1)
    agree = np.abs(logits - expected).max(axis=1) <= 1e-4 * scale
    assert agree.sum() >= 3, f"{name}: images agreeing {agree.tolist()}"
    assert (logits.argmax(1) == expected.argmax(1))[agree].all()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
