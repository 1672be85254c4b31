"""Larq / Keras models loaded with ``from_larq`` (and Larq Zoo weights on onebit's zoo) through
onebit's three exporters: the packed engine, ONNX (in onnxruntime) and Larq Compute Engine (in
LCE's own interpreter), each against torch's outputs; and one-line refusals naming the layer for
what an exporter cannot run. The Keras files are written here with h5py (Keras 2 layout, the one
Larq's ``model.save("m.h5")`` writes); no TensorFlow is needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import onebit as ob
import onebit.engine as engine
from onebit.engine import EngineError
from onebit.engine.exporter import build
from onebit.models import from_larq

h5py = pytest.importorskip("h5py", reason="reading Keras files needs h5py (the 'larq' extra)")

FIXTURES = Path(__file__).parent / "fixtures"
BINARY = {"input_quantizer": "ste_sign", "kernel_quantizer": "ste_sign", "use_bias": False}


def _layer(cls, name, sources, **config):
    return {
        "class_name": cls,
        "name": name,
        "config": {"name": name, **config},
        "inbound_nodes": [[[s, 0, 0, {}] for s in sources]],
    }


def _write(path: Path, shape, layers: list, weights: dict, outputs=None) -> Path:
    """A Keras 2 functional model file: Input ``shape`` (H, W, C) named "in", then ``layers``."""
    config = {
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": [{"class_name": "InputLayer", "name": "in", "config": {"batch_input_shape": [None, *shape]}}]
            + layers,
            "input_layers": [["in", 0, 0]],
            "output_layers": [[n, 0, 0] for n in (outputs or [layers[-1]["name"]])],
        },
    }
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [b"in"] + [layer["name"].encode() for layer in layers]
        for name in ["in"] + [layer["name"] for layer in layers]:
            g = group.create_group(name)
            tensors = weights.get(name, {})
            g.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in tensors]
            for k, v in tensors.items():
                g[f"{name}/{k}:0"] = np.asarray(v, np.float32)
    return path


class _Weights(dict):
    """Random Keras-layout tensors, by layer name."""

    def __init__(self, seed):
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def conv(self, name, k, cin, cout, bias=False):
        self[name] = {"kernel": self.rng.normal(size=(k, k, cin, cout))}
        if bias:
            self[name]["bias"] = self.rng.normal(size=cout)

    def dense(self, name, cin, cout, bias=False):
        self[name] = {"kernel": self.rng.normal(size=(cin, cout))}
        if bias:
            self[name]["bias"] = self.rng.normal(size=cout)

    def bn(self, name, c):  # some negative scales: thresholds turn around
        r = self.rng
        stats = {"moving_mean": r.normal(0, 2, c), "moving_variance": r.uniform(0.5, 4, c)}
        self[name] = {"gamma": r.uniform(0.5, 1.5, c) * r.choice([-1, 1], c), "beta": r.normal(0, 1, c), **stats}


def _mixed(path):
    """Float stem, batch norm, PReLU (alpha shared over space), zero padding, binary convs, a
    residual Add, max-pool, Concatenate, Keras' channels-last Flatten into a binary dense, a
    dense layer with bias: (N, 8, 8, 3) -> 10."""
    w = _Weights(0)
    w.conv("stem", 3, 3, 8, bias=True)
    w.bn("bn0", 8)
    w["prelu"] = {"alpha": w.rng.uniform(0, 0.5, (1, 1, 8))}
    w.conv("bconv", 3, 8, 8)
    w.bn("bn1", 8)
    w.conv("bconv2", 3, 8, 8)
    w.bn("bn2", 8)
    w.dense("bdense", 4 * 4 * 16, 12)
    w.bn("bn3", 12)
    w.dense("fc", 12, 10, bias=True)
    layers = [
        _layer("Conv2D", "stem", ["in"], filters=8, kernel_size=[3, 3], padding="same", use_bias=True),
        _layer("BatchNormalization", "bn0", ["stem"], epsilon=1e-3),
        _layer("PReLU", "prelu", ["bn0"], shared_axes=[1, 2]),
        _layer("ZeroPadding2D", "pad", ["prelu"], padding=[[1, 1], [1, 1]]),
        _layer("QuantConv2D", "bconv", ["pad"], filters=8, kernel_size=[3, 3], padding="valid", **BINARY),
        _layer("BatchNormalization", "bn1", ["bconv"]),
        _layer("Add", "add", ["bn1", "prelu"]),
        _layer("MaxPooling2D", "pool", ["add"], pool_size=[2, 2]),
        _layer(
            "QuantConv2D", "bconv2", ["pool"], filters=8, kernel_size=[3, 3], padding="same", pad_values=1.0, **BINARY
        ),
        _layer("BatchNormalization", "bn2", ["bconv2"]),
        _layer("Concatenate", "cat", ["bn2", "pool"]),
        _layer("Flatten", "flat", ["cat"]),
        _layer("QuantDense", "bdense", ["flat"], units=12, **BINARY),
        _layer("BatchNormalization", "bn3", ["bdense"]),
        _layer("Dense", "fc", ["bn3"], units=10, use_bias=True),
    ]
    return _write(path, (8, 8, 3), layers, w)


def _bits(path):
    """Binary layers whose packed sign bits flow through batch norm, max-pool and Keras' Flatten
    into a binary dense layer (the engine's and LCE's bit paths): (N, 6, 6, 4) -> 5."""
    w = _Weights(1)
    w.conv("bconv", 3, 4, 16)
    w.bn("bn1", 16)
    w.dense("bdense", 3 * 3 * 16, 8)
    w.bn("bn2", 8)
    w.dense("out", 8, 5)
    layers = [
        _layer(
            "QuantConv2D", "bconv", ["in"], filters=16, kernel_size=[3, 3], padding="same", pad_values=1.0, **BINARY
        ),
        _layer("BatchNormalization", "bn1", ["bconv"]),
        _layer("MaxPooling2D", "pool", ["bn1"], pool_size=[2, 2]),
        _layer("Flatten", "flat", ["pool"]),
        _layer("QuantDense", "bdense", ["flat"], units=8, **BINARY),
        _layer("BatchNormalization", "bn2", ["bdense"]),
        _layer("QuantDense", "out", ["bn2"], units=5, **BINARY),
    ]
    return _write(path, (6, 6, 4), layers, w)


MODELS = {"mixed": (_mixed, (1, 3, 8, 8)), "bits": (_bits, (1, 4, 6, 6))}


def _load(tmp_path, case):
    make, size = MODELS[case]
    return from_larq(make(tmp_path / f"{case}.h5")), size


def _inputs(size, n=4):
    return torch.randn((n,) + tuple(size[1:]), generator=torch.Generator().manual_seed(2))


def _close(out, ref):
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("case", list(MODELS))
def test_engine_runs_larq_models_with_torchs_answers(tmp_path, case):
    model, size = _load(tmp_path, case)
    x = _inputs(size)
    engine.export(model, tmp_path / "m.obe", x.shape)
    with torch.no_grad():
        ref = model(x).numpy()
    _close(engine.load(tmp_path / "m.obe")(x.numpy()), ref)


def test_flatten_into_a_binary_dense_stays_packed(tmp_path):
    """Keras' channels-last flatten costs nothing: the dense layer's columns are reordered, the
    bits flow from the convolution into the dense layer packed."""
    model, size = _load(tmp_path, "bits")
    graph, _ = build(model, size)
    assert [op["op"] for op in graph["ops"]] == [
        "pack",
        "bconv2d",
        "maxpool2d_bits",
        "flatten_bits",
        "bdense",
        "bdense",
    ]


@pytest.mark.parametrize("case", list(MODELS))
def test_onnx_runs_larq_models_with_torchs_answers(tmp_path, case):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: ONNX export not verified")
    model, size = _load(tmp_path, case)
    x = _inputs(size)
    ob.export_onnx(model, tmp_path / "m.onnx", size)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    _close(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], ref)


@pytest.mark.parametrize("case", list(MODELS))
def test_lce_runs_larq_models_with_torchs_answers(tmp_path, case):
    pytest.importorskip("tflite", reason="the tflite schema package is not installed: LCE export not verified")
    from test_lce_export import LCE_PYTHON, check_against_lce

    if LCE_PYTHON is None:
        pytest.skip("LCE verification did NOT run: no Python with larq-compute-engine and numpy<2 (make .venv-lce)")
    model, size = _load(tmp_path, case)
    check_against_lce(model, size, tmp_path, samples=4)


def test_lce_runs_a_larq_made_model_with_larqs_logits(tmp_path):
    pytest.importorskip("tflite", reason="the tflite schema package is not installed: LCE export not verified")
    from test_lce_export import LCE_PYTHON, run_lce

    if LCE_PYTHON is None:
        pytest.skip("LCE verification did NOT run: no Python with larq-compute-engine and numpy<2 (make .venv-lce)")
    model, x, logits = _larq_deploy()
    engine.export_lce(model, tmp_path / "m.tflite", (1,) + tuple(x.shape[1:]))
    for out in run_lce(tmp_path / "m.tflite", x.numpy(), tmp_path).values():  # LCE's float multiplier rounds
        np.testing.assert_allclose(out, logits, rtol=0, atol=2e-6 * np.abs(logits).max())


def _larq_deploy():
    """Larq's own file (tests/fixtures/larq_deploy.h5), its softmax replaced: (model, input NCHW,
    Larq's logits)."""
    expected = np.load(FIXTURES / "larq_deploy.npz")
    model = from_larq(FIXTURES / "larq_deploy.h5")
    model.layers["activation_1"] = nn.Identity()
    return model, torch.from_numpy(expected["x"]).permute(0, 3, 1, 2).contiguous(), expected["logits"]


def test_a_larq_made_model_exports_with_larqs_logits(tmp_path):
    """A file Larq wrote, through the engine and ONNX; torch itself within 1e-6 of Larq's scale."""
    model, x, logits = _larq_deploy()
    tol = 1e-6 * np.abs(logits).max()
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), logits, rtol=0, atol=tol)
    engine.export(model, tmp_path / "m.obe", x.shape)
    np.testing.assert_allclose(engine.load(tmp_path / "m.obe")(x.numpy()), logits, rtol=0, atol=tol)
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: ONNX export not verified")
    ob.export_onnx(model, tmp_path / "m.onnx", (1,) + tuple(x.shape[1:]))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], logits, rtol=0, atol=tol)


def test_zoo_model_with_larq_zoo_weights_exports(tmp_path):
    """``create_model(name, weights=...)`` is onebit's zoo module for module: it exports as built."""
    from test_keras_import import _randomized, _write_weights

    path = _write_weights(_randomized(ob.create_model("small_cnn"), 3), tmp_path / "w.h5")
    model = ob.create_model("small_cnn", weights=path)
    x = _inputs((1, 1, 28, 28))
    engine.export(model, tmp_path / "m.obe", x.shape)
    with torch.no_grad():
        _close(engine.load(tmp_path / "m.obe")(x.numpy()), model(x).numpy())


def _with_tail(path, *tail, weights=None):
    """A binary conv on (N, 4, 4, 2), then ``tail`` (layer class, config) one after another,
    named t0, t1, ... (``weights``: their tensors by name)."""
    layers = [_layer("QuantConv2D", "c", ["in"], filters=4, kernel_size=[3, 3], padding="same", **BINARY)]
    for i, (cls, config) in enumerate(tail):
        layers.append(_layer(cls, f"t{i}", [layers[-1]["name"]], **config))
    return from_larq(_write(path, (4, 4, 2), layers, {"c": {"kernel": np.ones((3, 3, 2, 4))}, **(weights or {})}))


@pytest.mark.parametrize(
    "tail,match",
    [
        ([("Reshape", {"target_shape": [2, 32]})], r"in layer 'layers.t0'"),
        ([("Flatten", {}), ("Activation", {"activation": "relu"})], r"layer 'layers.t1': reads .*channels-last"),
        ([("Flatten", {})], r"output.*channels-last"),
        ([("GlobalMaxPooling2D", {})], r"op 'amax' \(amax\) in layer 'layers.t0'"),
    ],
    ids=["reshape", "flatten-into-relu", "flatten-as-output", "global-max-pool"],
)
def test_what_the_engine_cannot_run_is_named(tmp_path, tail, match):
    model = _with_tail(tmp_path / "m.h5", *tail)
    with pytest.raises(EngineError, match=match) as err:
        build(model, (1, 2, 4, 4))
    assert "\n" not in str(err.value)


def test_larq_made_file_refusal_names_its_keras_layer():
    """Larq's own file (tests/fixtures): its Keras Reshape to (4, 12) has no engine op."""
    model = from_larq(FIXTURES / "larq_cnn.h5")
    with pytest.raises(EngineError, match=r"in layer 'layers.reshape': reshape \(1, 2, 2, 12\) -> \(1, 4, 12\)"):
        build(model, (1, 3, 12, 12))


def test_prelu_shared_over_space_is_torchs_prelu(tmp_path):
    """Keras' PReLU with alpha shared over the spatial axes is ``nn.PReLU`` (what the exporters
    run), with Keras' values; an alpha per pixel keeps Keras' shape."""
    rng = np.random.default_rng(0)
    shared = rng.uniform(0, 0.5, (1, 1, 4)).astype(np.float32)
    model = _with_tail(tmp_path / "s.h5", ("PReLU", {"shared_axes": [1, 2]}), weights={"t0": {"alpha": shared}})
    prelu = model.layers["t0"]
    assert isinstance(prelu, nn.PReLU) and np.array_equal(prelu.weight.detach().numpy(), shared.reshape(4))
    x = torch.randn(2, 4, 4, 4)
    expected = torch.where(x >= 0, x, x * torch.from_numpy(shared.reshape(1, 4, 1, 1)))
    assert torch.equal(prelu(x), expected)
    per_pixel = rng.uniform(0, 0.5, (4, 4, 4)).astype(np.float32)
    model = _with_tail(tmp_path / "p.h5", ("PReLU", {}), weights={"t0": {"alpha": per_pixel}})
    assert tuple(model.layers["t0"].weight.shape) == (4, 4, 4)
    expected = torch.where(x >= 0, x, x * torch.from_numpy(per_pixel).permute(2, 0, 1))
    assert torch.allclose(model.layers["t0"](x), expected)


def test_a_final_softmax_exports(tmp_path):
    """A Larq Zoo file ends in a softmax over the channels: the engine, ONNX and LCE run it."""
    model = _with_tail(tmp_path / "m.h5", ("GlobalAveragePooling2D", {}), ("Activation", {"activation": "softmax"}))
    x = _inputs((1, 2, 4, 4))
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.allclose(ref.sum(1), 1.0)
    engine.export(model, tmp_path / "m.obe", x.shape)
    _close(engine.load(tmp_path / "m.obe")(x.numpy()), ref)
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: ONNX export not verified")
    ob.export_onnx(model, tmp_path / "m.onnx", (1, 2, 4, 4))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    _close(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], ref)
    pytest.importorskip("tflite", reason="the tflite schema package is not installed: LCE export not verified")
    from test_lce_export import LCE_PYTHON, check_against_lce

    if LCE_PYTHON is None:
        pytest.skip("LCE verification did NOT run: no Python with larq-compute-engine and numpy<2 (make .venv-lce)")
    check_against_lce(model, (1, 2, 4, 4), tmp_path, samples=4)


def test_a_larq_made_file_with_its_softmax_gives_larqs_probabilities(tmp_path):
    """Larq's own file as saved, softmax included, in the engine: softmax of Larq's logits."""
    expected = np.load(FIXTURES / "larq_deploy.npz")
    model = from_larq(FIXTURES / "larq_deploy.h5")
    x = torch.from_numpy(expected["x"]).permute(0, 3, 1, 2).contiguous()
    probabilities = torch.softmax(torch.from_numpy(expected["logits"]), 1).numpy()
    engine.export(model, tmp_path / "m.obe", x.shape)
    np.testing.assert_allclose(engine.load(tmp_path / "m.obe")(x.numpy()), probabilities, rtol=0, atol=1e-6)
