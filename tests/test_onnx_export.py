"""ONNX export: every zoo model in onnxruntime against torch (fresh, random batch-norm statistics,
briefly trained), ties at exactly zero, the threshold form, pad values, input sizes, dynamo."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import onebit
from onebit import QuantConv2d, QuantLinear
from onebit.engine import EngineError
from onebit.layers import QuantLayer
from onebit.layers.quantized import QuantConvTranspose2d
from onebit.models import list_models, model_info
from onebit.quantizers import DoReFa
from test_engine import ZOO, _binary_conv, _Residual, exact_reference, randomize_bn

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: ONNX export not verified")
onnx = pytest.importorskip("onnx", reason="onnx not installed: ONNX export not verified")

# small inputs where the architecture allows (a builder with image_size is built for it)
SIDES = {"small_cnn": 20, "binarynet": 16, "binary_alexnet": 64, "xnornet": 64, "dorefanet": 48}
SIDES.update(dict.fromkeys(["binary_resnet_e18", "birealnet18", "meliusnet22", "real_to_binary_net"], 16))


@functools.lru_cache(maxsize=1)  # the zoo test runs a model's states in a row: built once
def _fresh(name: str):
    info = model_info(name)
    side = SIDES.get(name, 32)
    kw = dict(ZOO[name][0])  # the packed engine's test widths (narrow where the builder allows)
    if info.accepts("image_size"):
        kw["image_size"] = side
    torch.manual_seed(0)
    return onebit.create_model(name, num_classes=10, **kw).eval(), (info.input_size[0], side, side)


def zoo(name: str):
    """A fresh zoo model, as small as its builder allows, and its input size (no batch axis)."""
    model, size = _fresh(name)
    return copy.deepcopy(model), size


def briefly_train(model, size, lr=1e-2):
    """What a first Adam step on random data does to a model: running statistics of real inputs
    (a training-mode forward) and every parameter moved by +/-lr (Adam's first step is lr * g / |g|;
    the signs are drawn at random here, which saves the backward pass of a large model)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.train()(torch.randn((2,) + size, generator=g))
        for p in model.parameters():
            p.add_(torch.where(torch.rand(p.shape, generator=g) < 0.5, -lr, lr))
    return model.eval()


def torch_reference(model, x):
    """torch's answer as the export defines it (``onebit.engine.onnx_export``'s docstring), the
    packed engine's rule: every quantized layer with integer input levels and a +/-alpha kernel
    sums its integer dot exactly, times alpha / n. torch's own float32 convolution adds
    +/-alpha (XNOR-Net, Bi-Real Net) or DoReFa's levels k/3 times +/-alpha in an order of its
    own, so at a tie it gives +/-1e-7 rather than 0, and a DoReFa value within ~1e-7 of a
    rounding boundary rounds to either level depending on its thread count."""
    return exact_reference(model, x).numpy()


def run_onnx(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("name,state", [(n, s) for n in list_models() for s in ("fresh", "random_bn", "trained")])
def test_zoo_model_in_onnxruntime_matches_torch(tmp_path, name, state):
    model, size = zoo(name)
    if state == "random_bn":
        randomize_bn(model, negative=True)
    elif state == "trained":
        briefly_train(model, size)
    path = tmp_path / "m.onnx"
    onebit.export_onnx(model, path, (1,) + size)
    x = torch.randn((3,) + size, generator=torch.Generator().manual_seed(1))
    out, ref = run_onnx(path, x), torch_reference(model, x)
    np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, np.abs(ref).max()), rtol=0)
    assert np.array_equal(out.argmax(1), ref.argmax(1))


def _tie_model(c, o, k, pad_values, mean_step, negative):
    """binary conv -> batch norm whose output is exactly 0 at integer dots -> sign -> binary dense:
    the output is an integer dot, so onnxruntime and torch must agree exactly."""
    bn = nn.BatchNorm2d(o)
    with torch.no_grad():
        bn.running_mean.copy_(torch.arange(o).float() % 3 * mean_step)  # ties at d = mean
        if negative:
            bn.weight.copy_(torch.where(torch.arange(o) % 2 == 0, 1.0, -0.5))
    return nn.Sequential(
        _binary_conv(c, o, k, 1, "same", pad_values),
        bn,
        nn.Flatten(),
        QuantLinear(o * 16, 3, bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
    ).eval()


@settings(max_examples=8, deadline=None)
@given(
    c=st.integers(1, 70),
    o=st.integers(1, 9),
    k=st.sampled_from([1, 2, 3]),
    pad_values=st.sampled_from([0.0, 1.0]),
    mean_step=st.sampled_from([0.0, 1.0, 2.0]),
    negative=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_ties_at_zero_fall_as_in_torch(tmp_path_factory, c, o, k, pad_values, mean_step, negative, seed):
    torch.manual_seed(seed)
    model = _tie_model(c, o, k, pad_values, mean_step, negative)
    path = tmp_path_factory.mktemp("tie") / "m.onnx"
    onebit.export_onnx(model, path, (1, c, 4, 4))
    x = torch.randn((4, c, 4, 4))
    x[0] = 0.0  # every dot of the first image is a sum of +1s: ties wherever k c is even
    with torch.no_grad():
        assert np.array_equal(run_onnx(path, x), model(x).numpy())


def _level_tie_model(c, o, bits, weight, mean, pool):
    """DoReFa conv (+/-1 kernel) -> batch norm -> [max pool] -> DoReFa dense. With ``weight``
    0.5 or 1.5 and ``mean`` a multiple of 1/3 the value before the dense layer's quantizer, times
    n, is exactly k + 1/2 at many integer dots in float32: ties that round half to even."""
    quant = dict(input_quantizer=DoReFa(bits, "activations"), kernel_quantizer="ste_sign", bias=False)
    bn = nn.BatchNorm2d(o, eps=0.0)
    with torch.no_grad():
        bn.weight.copy_(torch.where(torch.arange(o) % 3 == 2, -weight, weight))
        bn.running_mean.copy_(torch.arange(o).float() % 2 * mean)
    side = 2 if pool else 4
    return nn.Sequential(
        QuantConv2d(c, o, 3, padding="same", **quant),
        bn,
        *([nn.MaxPool2d(2)] if pool else []),
        nn.Flatten(),
        QuantLinear(o * side * side, 3, **quant),
    ).eval()


def _rounding_ties(model, x, levels):
    """How many values reach the dense layer's quantizer exactly half-way between two levels."""
    seen = []
    handle = model[-1].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    torch_reference(model, x)
    handle.remove()
    scaled = torch.clamp(seen[0], 0.0, 1.0) * levels
    return int((scaled - torch.floor(scaled) == 0.5).sum())


def _levels_model_matches_torch(tmp_path, c, o, bits, weight, mean, pool, seed) -> int:
    """Export ``_level_tie_model``, check onnxruntime against torch on 6 images; the tie count."""
    torch.manual_seed(seed)
    model = _level_tie_model(c, o, bits, weight, mean, pool)
    path = tmp_path / "m.onnx"
    onebit.export_onnx(model, path, (1, c, 4, 4))
    x = torch.rand((6, c, 4, 4)) * 1.4 - 0.2  # every level of the first layer's input, and clipping
    # the output is an integer dot times 1 / n in float32 on both sides: equal bit for bit
    assert np.array_equal(run_onnx(path, x), torch_reference(model, x))
    return _rounding_ties(model, x, 2**bits - 1)


@settings(max_examples=8, deadline=None)
@given(
    c=st.integers(1, 40),
    o=st.integers(1, 6),
    bits=st.sampled_from([1, 2, 3]),
    weight=st.sampled_from([0.5, 1.5]),
    mean=st.sampled_from([0.0, 1.0 / 3.0, 1.0]),
    pool=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dorefa_levels_fall_as_in_torch(tmp_path_factory, c, o, bits, weight, mean, pool, seed):
    _levels_model_matches_torch(tmp_path_factory.mktemp("levels"), c, o, bits, weight, mean, pool, seed)


@pytest.mark.parametrize("bits, weight, pool", [(1, 0.5, False), (2, 0.5, True), (2, 1.5, False), (3, 0.5, False)])
def test_dorefa_rounding_ties_fall_as_in_torch(tmp_path, bits, weight, pool):
    assert _levels_model_matches_torch(tmp_path, 24, 4, bits, weight, 0.0, pool, 0) > 0


def test_signs_after_binary_layers_are_integer_thresholds(tmp_path):
    model, size = zoo("binarynet")
    path = tmp_path / "m.onnx"
    onebit.export_onnx(randomize_bn(model, negative=True), path, (1,) + size)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    dots = sum(isinstance(m, QuantLayer) and m.input_quantizer is not None for m in model.modules())
    # each binary layer is an integer dot (Round), each sign after one but the last a comparison
    # (Less); the second layer's input, after the real-input first layer, takes where(x >= 0, 1, -1)
    assert dots == 8 and ops.count("Round") == dots and ops.count("Less") == dots - 1
    assert "BatchNormalization" not in ops and ops.count("GreaterOrEqual") >= 1


def test_a_model_written_with_functional_ops(tmp_path):
    torch.manual_seed(4)
    model = randomize_bn(_Residual(), negative=True)
    path = tmp_path / "m.onnx"
    onebit.export_onnx(model, path, (1, 3, 9, 7))
    x = torch.randn(3, 3, 9, 7)
    x[0, :, 0, 0] = 0.0  # sign(0) = +1
    out, ref = run_onnx(path, x), torch_reference(model, x)
    np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_a_transposed_conv_with_a_scaled_kernel_stays_a_float_layer(tmp_path):
    """Its kernel's scale runs along the input channels (weight axis 0), not the outputs: no
    integer dot times a per-output scale computes it."""
    torch.manual_seed(0)
    layer = QuantConvTranspose2d(3, 5, 3, 2, input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign")
    model = nn.Sequential(layer).eval()
    path = tmp_path / "m.onnx"
    onebit.export_onnx(model, path, (1, 3, 5, 5))
    assert "Round" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(path, x), model(x).numpy(), atol=1e-5)


def test_pad_values_become_constant_pads(tmp_path):
    model = nn.Sequential(_binary_conv(5, 4, 3, 2, "same", 1.0)).eval()
    path = tmp_path / "m.onnx"
    onebit.export_onnx(model, path, (1, 5, 7, 7))
    assert "Pad" in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = torch.randn(2, 5, 7, 7)
    with torch.no_grad():
        assert np.array_equal(run_onnx(path, x), model(x).numpy())


@pytest.mark.parametrize(
    "input_size, match",
    [
        (None, "export_onnx needs input_size"),
        ((1, 0, 28, 28), "must be a shape with a batch axis"),
        ((1, 28), r"input_size=\(1, 28\): Sequential does not run on it \(Expected 3D"),
        ((1, 3, 32, 32), r"input_size=\(1, 3, 32, 32\): Sequential does not run on it"),
    ],
)
def test_input_size_is_required_and_checked(tmp_path, input_size, match):
    model, _ = zoo("small_cnn")  # MNIST: 1 channel
    with pytest.raises(EngineError, match=match):
        onebit.export_onnx(model, tmp_path / "m.onnx", input_size)
    assert not (tmp_path / "m.onnx").exists()


def test_unsupported_quantizer_is_named(tmp_path):
    model = nn.Sequential(QuantConv2d(2, 2, 1, input_quantizer="ste_tern", kernel_quantizer="ste_sign")).eval()
    with pytest.raises(EngineError, match=r"layer '0': quantizer SteTern is not supported by the ONNX export"):
        onebit.export_onnx(model, tmp_path / "m.onnx", (1, 2, 3, 3))


def test_dynamo_exporter(tmp_path):
    pytest.importorskip("onnxscript", reason="onnxscript not installed: the dynamo exporter not verified")
    model, size = zoo("small_cnn")
    randomize_bn(model, negative=True)
    path = tmp_path / "m.onnx"
    onebit.export_onnx(model, path, (1,) + size, dynamo=True)
    assert onnx.load(str(path)).opset_import[0].version == 18
    x = torch.randn((2,) + size)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_dynamo_exporter_keeps_dorefa_levels_exact(tmp_path):
    pytest.importorskip("onnxscript", reason="onnxscript not installed: the dynamo exporter not verified")
    torch.manual_seed(0)
    model = _level_tie_model(24, 4, 2, 0.5, 0.0, True)
    path = tmp_path / "m.onnx"
    onebit.export_onnx(model, path, (1, 24, 4, 4), dynamo=True)
    x = torch.rand((6, 24, 4, 4)) * 1.4 - 0.2
    assert _rounding_ties(model, x, 3) > 0
    assert np.array_equal(run_onnx(path, x), torch_reference(model, x))


class _Branchy(nn.Module):
    """Control flow on a tensor value: torch.fx cannot trace it, TorchScript tracing can."""

    def __init__(self):
        super().__init__()
        self.conv = QuantConv2d(2, 3, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign")

    def forward(self, x):
        if x.sum() > -1e9:
            x = self.conv(x)
        return x


def test_a_model_fx_cannot_trace_is_exported_with_float_signs_and_a_warning(tmp_path):
    model = _Branchy().eval()
    path = tmp_path / "m.onnx"
    with pytest.warns(UserWarning, match="torch.fx cannot trace _Branchy"):
        onebit.export_onnx(model, path, (1, 2, 5, 5))
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(path, x), model(x).numpy(), atol=1e-5)
