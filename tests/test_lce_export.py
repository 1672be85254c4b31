"""Export to Larq Compute Engine: the file's structure (parsed with the TFLite schema package), the
bit packing and thresholds LCE reads, refusals, and, where LCE is installed, its own interpreter's
outputs against torch and onebit's engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import onebit.engine as engine
from onebit import QuantConv2d, QuantDepthwiseConv2d, QuantLinear
from onebit.engine import EngineError, export_lce
from onebit.engine.lce_export import build_lce, pack_int32
from onebit.layers import Pool2dSame
from onebit.models import create_model
from test_engine import randomize_bn

tflite = pytest.importorskip("tflite", reason="the tflite schema package is not installed: pip install 'onebit[lce]'")
from flatbuffers import flexbuffers  # noqa: E402  (flatbuffers comes with tflite)

BIN = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", bias=False)
ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("lce_worker.py")
_BUILTIN_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


def parse(data: bytes):
    """(ops as (name, inputs, outputs, custom options), tensors as (shape, type, data), model)."""
    assert tflite.Model.ModelBufferHasIdentifier(data, 0)
    model = tflite.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        names.append(
            code.CustomCode().decode() if builtin == tflite.BuiltinOperator.CUSTOM else _BUILTIN_NAMES[builtin]
        )
    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        raw = model.Buffers(t.Buffer()).DataAsNumpy()
        dtype = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT32: np.int32}[t.Type()]
        shape = tuple(int(v) for v in t.ShapeAsNumpy())
        data_ = None if isinstance(raw, int) else np.frombuffer(raw.tobytes(), dtype).reshape(shape)
        tensors.append((shape, dtype, data_))
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        custom = op.CustomOptionsAsNumpy()
        options = flexbuffers.Loads(custom.tobytes()) if not isinstance(custom, int) and custom.size else {}
        ops.append((names[op.OpcodeIndex()], list(op.InputsAsNumpy()), list(op.OutputsAsNumpy()), options))
    inputs, outputs = list(graph.InputsAsNumpy()), list(graph.OutputsAsNumpy())
    return ops, tensors, (inputs, outputs)


def unpack_int32(words: np.ndarray, n: int) -> np.ndarray:
    """LCE's packed words back to booleans (bit i of word j = element 32j+i)."""
    u = words.astype(np.int64) & 0xFFFFFFFF
    bits = (u[..., :, None] >> np.arange(32)) & 1
    return bits.reshape(words.shape[:-1] + (-1,))[..., :n].astype(bool)


# ------------------------------------------------------------------------------ without LCE


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 100), st.integers(0, 2**32 - 1))
def test_pack_int32_is_lces_layout(rows, channels, seed):
    bits = np.random.default_rng(seed).random((rows, channels)) < 0.5
    words = pack_int32(bits)
    assert words.dtype == np.int32 and words.shape == (rows, -(-channels // 32))
    for i in range(channels):  # bit i % 32 of word i // 32, 1 = negative
        assert np.array_equal((words[:, i // 32].astype(np.int64) >> (i % 32)) & 1, bits[:, i])
    assert np.array_equal(
        unpack_int32(words, words.shape[1] * 32)[:, channels:], np.zeros_like(words, bool).repeat(32, 1)[:, channels:]
    )


def test_small_cnn_file_structure(tmp_path):
    model = create_model("small_cnn")
    report = export_lce(model, tmp_path / "m.tflite", (1, 1, 28, 28))
    data = (tmp_path / "m.tflite").read_bytes()
    assert report["file_bytes"] == len(data)
    ops, tensors, (inputs, outputs) = parse(data)
    assert [o[0] for o in ops] == [
        "CONV_2D", "MAX_POOL_2D", "MUL", "ADD", "LceQuantize",      # real first layer, then the sign
        "LceBconv2d", "LceBMaxPool2d",                             # bits out through thresholds
        "LceBconv2d", "LceBconv2d",                                # conv 3, dense over the 3x3 map
        "LceBconv2d", "RESHAPE",                                   # last dense: float out
    ]  # fmt: skip
    assert tensors[inputs[0]][:2] == ((1, 28, 28, 1), np.float32)
    assert tensors[outputs[0]][:2] == ((1, 10), np.float32)
    bconvs = [o for o in ops if o[0] == "LceBconv2d"]
    filters = [tensors[o[1][1]][0] for o in bconvs]
    assert filters == [(64, 3, 3, 1), (64, 3, 3, 2), (64, 3, 3, 2), (10, 1, 1, 2)]
    for _, ins, outs, _ in bconvs[:3]:  # thresholds, packed int32 output
        assert ins[2] == ins[3] == -1 and tensors[ins[4]][:2] == ((64,), np.int32)
        assert tensors[outs[0]][1] == np.int32 and tensors[outs[0]][0][-1] == 2
    last = bconvs[3]
    assert last[1][4] == -1 and tensors[last[1][2]][:2] == ((10,), np.float32)
    assert bconvs[0][3] == {
        "channels_in": 32,
        "dilation_height_factor": 1,
        "dilation_width_factor": 1,
        "fused_activation_function": 0,
        "pad_values": 0,
        "padding": tflite.Padding.VALID,
        "stride_height": 1,
        "stride_width": 1,
    }
    assert ops[6][3] == {
        "filter_height": 2,
        "filter_width": 2,
        "padding": tflite.Padding.VALID,
        "stride_height": 2,
        "stride_width": 2,
    }


def _first_bconv(model, size):
    ops, tensors, _ = parse(build_lce(model, size)[0])
    op = next(o for o in ops if o[0] == "LceBconv2d")
    return op, tensors


def test_filter_bits_are_the_kernel_signs():
    conv = QuantConv2d(40, 5, 3, **BIN)
    op, tensors = _first_bconv(nn.Sequential(conv), (1, 40, 6, 6))
    words = tensors[op[1][1]][2]
    assert words.shape == (5, 3, 3, 2)
    expected = (conv.weight.detach() < 0).numpy().transpose(0, 2, 3, 1)
    assert np.array_equal(unpack_int32(words, 40), expected)
    assert not unpack_int32(words, 64)[..., 40:].any()  # unused bits are 0


def test_binary_dense_reads_the_flattened_map_in_torch_order():
    dense = QuantLinear(3 * 2 * 2, 4, **BIN)
    model = nn.Sequential(nn.Flatten(), dense)
    op, tensors = _first_bconv(model, (1, 3, 2, 2))
    assert op[3]["channels_in"] == 3 and op[3]["padding"] == tflite.Padding.VALID
    expected = (dense.weight.detach() < 0).numpy().reshape(4, 3, 2, 2).transpose(0, 2, 3, 1)
    assert np.array_equal(unpack_int32(tensors[op[1][1]][2], 3), expected)


@pytest.mark.parametrize("negative", [False, True])
def test_thresholds_give_torchs_signs(negative):
    """For every popcount a LCE can see, (popcount > threshold) is torch's sign bit of the batch
    norm of the dot, through the file's filter (negated where the batch norm's scale is negative)."""
    torch.manual_seed(0)
    conv = QuantConv2d(8, 16, 3, input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign", bias=False)
    bn = nn.BatchNorm2d(16)
    model = randomize_bn(nn.Sequential(conv, bn, QuantConv2d(16, 4, 1, **BIN)), negative=negative)
    op, tensors = _first_bconv(model, (1, 8, 5, 5))
    k = 8 * 9
    thresholds = tensors[op[1][4]][2]
    flipped = (unpack_int32(tensors[op[1][1]][2], 8) != (conv.weight.detach() < 0).numpy().transpose(0, 2, 3, 1)).all(
        axis=(1, 2, 3)
    )
    assert flipped.any() == negative
    popcount = np.arange(k + 1)[:, None]
    dot = (k - 2 * popcount) * np.where(flipped, -1, 1)  # the dot of the original kernel
    alpha = conv.quantized_weight().detach().abs().amax(dim=(1, 2, 3))
    with torch.no_grad():
        torch_bits = (bn(torch.from_numpy(dot).float()[:, :, None, None] * alpha[:, None, None]) < 0).numpy()[
            :, :, 0, 0
        ]
    assert np.array_equal(popcount > thresholds, torch_bits)


def test_quicknet_blocks_fold_relu_and_batch_norm_into_the_binary_conv():
    ops, _, _ = parse(build_lce(create_model("quicknet_small", num_classes=10), (1, 3, 32, 32))[0])
    bconvs = [o for o in ops if o[0] == "LceBconv2d"]
    assert len(bconvs) == 16
    for _, _, outs, options in bconvs:  # x + bn(relu(conv(x))): the conv's output goes to the ADD
        assert options["fused_activation_function"] == tflite.ActivationFunctionType.RELU
        assert options["pad_values"] == 1 and options["padding"] == tflite.Padding.SAME
        assert [o[0] for o in ops if outs[0] in o[1]] == ["ADD"]


def test_binary_dense_stays_one_bit(tmp_path):
    model = create_model("binarynet", num_classes=10)
    report = export_lce(model, tmp_path / "b.tflite", (1, 3, 32, 32))
    binary = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear)) and m.input_quantizer is not None]
    weights = sum(m.weight.numel() for m in binary)
    assert report["binary_weight_bits"] == weights  # channels are multiples of 32: no unused bits
    assert report["file_bytes"] < 1.1 * weights / 8 + 200_000  # 1 bit per binary weight, dense layers too


class _Cat(nn.Module):
    """Concatenates a feature map with its relu along ``dim``."""

    def __init__(self, dim=1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.cat([x, torch.relu(x)], dim=self.dim)


class _MeliusLike(nn.Module):
    """A binary conv's output concatenated to its input, and zero channels padded onto a shortcut
    (shape arithmetic in F.pad), as MeliusNet and Binary DenseNet do."""

    def __init__(self):
        super().__init__()
        self.conv = QuantConv2d(8, 4, 3, padding="same", **BIN)
        self.bn = nn.BatchNorm2d(12)
        self.improve = QuantConv2d(12, 4, 3, padding="same", **BIN)

    def forward(self, x):
        y = self.bn(torch.cat([x, self.conv(x)], dim=1))
        w = self.improve(y)
        return y + torch.nn.functional.pad(w, (0, 0, 0, 0, y.shape[1] - w.shape[1], 0))


class _Gated(nn.Module):
    """A binary conv scaled per channel by sigmoid(dense(mean of its input)), as Real-to-Binary Net."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = QuantConv2d(cin, cout, 3, padding="same", **BIN)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cout), nn.Sigmoid())

    def forward(self, x):
        return self.conv(x) * self.scale(x)[:, :, None, None]


@pytest.mark.parametrize(
    "model,size,match",
    [
        (nn.Sequential(QuantConv2d(8, 8, 3, 2, padding=1, **BIN)), (1, 8, 8, 8), r"layer '0': zero padding .* 'same'"),
        (
            nn.Sequential(nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)),
            (1, 4, 8, 8),
            r"layer '0': average pooling",
        ),
        (nn.Sequential(QuantConv2d(4, 4, 3), nn.GELU()), (1, 4, 8, 8), r"layer '1' \(GELU\)"),
        (
            nn.Sequential(QuantDepthwiseConv2d(4, 3, input_quantizer="ste_sign")),
            (1, 4, 8, 8),
            r"layer '0' \(QuantDepthwiseConv2d\): binary input on a grouped/depthwise",
        ),
        (_Cat(2), (1, 4, 8, 8), r"op 'cat' \(cat\): concatenation along dim 2"),
        (nn.Sequential(nn.Conv2d(4, 4, 3), nn.Tanh()), (1, 4, 8, 8), r"layer '1': operation 'tanh' cannot be exported"),
    ],
    ids=[
        "binary-zero-padding-not-same",
        "avgpool-uncounted-padding",
        "gelu",
        "binary-depthwise",
        "concat-not-channels",
        "tanh-traced-by-the-engine",
    ],
)
def test_refusals_name_the_layer(model, size, match):
    with pytest.raises(EngineError, match=match) as err:
        build_lce(model.eval(), size)
    assert "\n" not in str(err.value)


def test_bad_input_size_is_one_line():
    with pytest.raises(EngineError, match=r"input_size=\(1, 3, 32\) must be"):
        build_lce(nn.Sequential(nn.ReLU()), (1, 3, 32))


def test_missing_schema_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite", None)
    with pytest.raises(EngineError, match=r"pip install 'onebit\[lce\]'"):
        build_lce(create_model("small_cnn"), (1, 1, 28, 28))


def test_cli_export_chooses_tflite_by_suffix(tmp_path, capsys):
    from onebit.cli.deploy import cmd_export

    path = tmp_path / "m.tflite"
    assert cmd_export(["small_cnn", str(path), "--input-size", "1,28,28"]) == 0
    assert "Larq Compute Engine" in capsys.readouterr().out
    ops, _, _ = parse(path.read_bytes())
    assert sum(o[0] == "LceBconv2d" for o in ops) == 4


# ------------------------------------------------------------------------------ LCE's interpreter


def _lce_python():
    """A Python that has larq-compute-engine and numpy < 2 (LCE's interpreter module is built
    against numpy 1): $ONEBIT_LCE_PYTHON, else the .venv-lce that ``make test`` sets up."""
    candidates = [os.environ.get("ONEBIT_LCE_PYTHON"), str(ROOT / ".venv-lce" / "bin" / "python")]
    probe = "import importlib.util, numpy; assert importlib.util.find_spec('larq_compute_engine'); assert numpy.__version__ < '2'"
    for python in filter(None, candidates):
        if os.path.exists(python) and subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
            return python
    return None


LCE_PYTHON = _lce_python()
needs_lce = pytest.mark.skipif(
    LCE_PYTHON is None,
    reason="LCE verification did NOT run: no Python with larq-compute-engine and numpy<2 "
    "(`make test` sets up .venv-lce; or point ONEBIT_LCE_PYTHON at one)",
)


def run_lce(path, x: np.ndarray, tmp_path) -> dict[str, np.ndarray]:
    """LCE's interpreter on the NCHW batch ``x`` (one sample at a time, NHWC), in LCE's Python:
    the outputs of each of its binary convolution kernels."""
    np.savez(tmp_path / "in.npz", x=x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)
    subprocess.run(
        [LCE_PYTHON, str(WORKER), str(path), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], check=True
    )
    with np.load(tmp_path / "out.npz") as outputs:
        return dict(outputs)


def check_against_lce(model, size, tmp_path, samples=3):
    """LCE's outputs equal torch's and onebit's engine's up to float rounding (binary layers are
    exact; the float multiplier / bias of LCE round differently from torch)."""
    path = tmp_path / "m.tflite"
    export_lce(model, path, size)
    x = torch.randn((samples,) + tuple(size[1:]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    outputs = run_lce(path, x.numpy(), tmp_path)
    try:  # onebit's engine too, where it runs the model (no depthwise, grouped, concat or F.pad)
        engine.export(model, tmp_path / "m.obe", (samples,) + tuple(size[1:]))
        ours = engine.load(tmp_path / "m.obe")(x.numpy())
    except EngineError:
        ours = ref
    if ref.ndim == 4:
        ref, ours = ref.transpose(0, 2, 3, 1), ours.transpose(0, 2, 3, 1)
    scale = max(1.0, float(np.abs(ref).max()))
    assert sorted(outputs) == ["bgemm", "indirect_bgemm", "reference"]
    for out in outputs.values():
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * scale)
        np.testing.assert_allclose(out, ours, rtol=0, atol=2e-5 * scale)


ZOO = [
    ("small_cnn", {}, (1, 1, 28, 28)),
    ("binarynet", {"num_classes": 10}, (1, 3, 32, 32)),
    ("birealnet18", {"num_classes": 10}, (1, 3, 32, 32)),
    ("binary_resnet_e18", {"num_classes": 10}, (1, 3, 32, 32)),
    ("quicknet_small", {"num_classes": 10}, (1, 3, 32, 32)),
    ("meliusnet22", {"num_classes": 10}, (1, 3, 32, 32)),
    ("binary_densenet28", {"num_classes": 10}, (1, 3, 32, 32)),
    ("real_to_binary_net", {"num_classes": 10}, (1, 3, 32, 32)),
]


@needs_lce
@pytest.mark.parametrize("name,kwargs,size", ZOO, ids=[z[0] for z in ZOO])
def test_lce_runs_zoo_models_with_torchs_answers(name, kwargs, size, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name, **kwargs), negative=True)
    check_against_lce(model, size, tmp_path)


def _sign_net(*layers):
    return nn.Sequential(*layers)


LAYER_CASES = {
    # a max-pool before a batch norm with negative scales: no AND of threshold bits says it
    "maxpool-before-negative-bn": (
        lambda: _sign_net(
            QuantConv2d(3, 16, 3, **BIN), nn.MaxPool2d(2), nn.BatchNorm2d(16), QuantConv2d(16, 8, 3, **BIN)
        ),
        (1, 3, 10, 10),
    ),
    # torch-style padding with +1 values: PAD on the packed bits, then a VALID convolution
    "pad-ones-explicit": (
        lambda: _sign_net(
            QuantConv2d(3, 40, 3, 2, padding=1, pad_values=1.0, **BIN),
            nn.BatchNorm2d(40),
            QuantConv2d(40, 8, 3, 2, padding=1, pad_values=1.0, **BIN),
        ),
        (1, 3, 8, 8),
    ),
    # zero 'same' padding on maps smaller than the kernel
    "zero-padding-small-maps": (
        lambda: _sign_net(
            QuantConv2d(40, 36, 3, 2, padding="same", **BIN),
            nn.BatchNorm2d(36),
            QuantConv2d(36, 8, 5, padding="same", **BIN),
        ),
        (1, 40, 3, 3),
    ),
    # max-pool with padding and ceil mode on packed bits, then flatten into a binary dense
    "bits-maxpool-padding-flatten": (
        lambda: _sign_net(
            QuantConv2d(3, 33, 3, **BIN),
            nn.BatchNorm2d(33),
            nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
            nn.Flatten(),
            QuantLinear(33 * 16, 10, **BIN),
            nn.BatchNorm1d(10),
        ),
        (1, 3, 9, 9),
    ),  # fmt: skip
    # float layers: relu, hardtanh, same-pooling, average pooling counting zeros, real dense on a map
    "float-layers": (
        lambda: _sign_net(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            Pool2dSame("avg", 2, 2),
            nn.Hardtanh(),
            nn.AvgPool2d(3, 1, padding=1),
            nn.Hardtanh(-0.5, 2.0),
            Pool2dSame("max", 3, 2),
            nn.Flatten(),
            nn.Linear(8 * 9, 5),
        ),
        (1, 3, 11, 11),
    ),  # fmt: skip
    # real depthwise (with a depth multiplier) and grouped convolutions, a QuickNet-style stem
    "depthwise-grouped": (
        lambda: _sign_net(
            nn.Conv2d(3, 8, 3, 2, padding=1),
            nn.ReLU(),
            QuantDepthwiseConv2d(8, 3, 2, padding="same", depth_multiplier=2),
            nn.BatchNorm2d(16),
            nn.Conv2d(16, 12, 3, padding=1, groups=4),
            QuantConv2d(12, 8, 3, padding="same", pad_values=1.0, **BIN),
        ),
        (1, 3, 16, 16),
    ),  # fmt: skip
    # data-dependent gating and PReLU (Real-to-Binary Net's blocks)
    "gating-prelu": (
        lambda: _sign_net(nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8, init=0.1), _Gated(8, 16), nn.PReLU()),
        (1, 3, 6, 6),
    ),
    # relu and batch norm after a scaled binary conv: LCE's fused activation clamps the dot
    "conv-relu-bn": (
        lambda: _sign_net(
            QuantConv2d(
                3,
                8,
                3,
                padding="same",
                pad_values=1.0,
                input_quantizer="ste_sign",
                kernel_quantizer="magnitude_aware_sign",
            ),
            nn.ReLU(),
            nn.BatchNorm2d(8),
        ),
        (1, 3, 5, 5),
    ),  # fmt: skip
    # concatenation and channel padding (MeliusNet / Binary DenseNet blocks)
    "concat-pad": (_MeliusLike, (1, 8, 6, 6)),
    # a 2-D input: binary dense layers only
    "mlp": (
        lambda: _sign_net(QuantLinear(20, 64, **BIN), nn.BatchNorm1d(64), QuantLinear(64, 3, **BIN)),
        (1, 20),
    ),
}


@needs_lce
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_lce_runs_each_lowering_with_torchs_answers(case, tmp_path):
    build, size = LAYER_CASES[case]
    torch.manual_seed(0)
    check_against_lce(randomize_bn(build(), negative=True), size, tmp_path, samples=4)
