"""The packed inference engine: kernels, export/load round trips against torch, refusals, no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import onebit
from onebit import QuantConv2d, QuantLinear
from onebit.data import mnist5k_path
from onebit.engine import EngineError, export, load
from onebit.kernels import out_size
from onebit.kernels import reference as kernels_numpy
from onebit.kernels.bits import pack_planes, pack_sign, popcount, unpack_sign

BACKENDS = onebit.engine.available_backends()
needs_numba = pytest.mark.skipif("numba" not in BACKENDS, reason="numba not installed")


def randomize_bn(model, seed=0, negative=False):
    """Non-trivial batch-norm statistics (and, with ``negative``, some negative scales)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 6 - 3)
            m.running_var.copy_(torch.rand(n, generator=g) * 4 + 0.25)
            if m.bias is not None:
                m.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)
            if m.weight is not None:
                w = torch.rand(n, generator=g) + 0.2
                if negative:
                    w = w * torch.where(torch.rand(n, generator=g) < 0.3, -1.0, 1.0)
                m.weight.data.copy_(w)
    return model.eval()


def roundtrip(model, input_size, tmp_path, backend, x=None, seed=0):
    path = tmp_path / "model.obe"
    report = export(model, path, input_size)
    if x is None:
        x = torch.randn(input_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    out = load(path, backend=backend)(x.numpy())
    return out, ref, report


# ------------------------------------------------------------------------------ bits and kernels


def test_pack_sign_convention_and_roundtrip():
    x = np.array([[-1.0, 0.0, -0.0, 2.0, -1e-30] + [1.0] * 64 + [-3.0]], np.float32)
    words = pack_sign(x)
    assert words.shape == (1, 2) and words.dtype == np.uint64
    assert int(words[0, 0]) & 0b11111 == 0b10001  # 0 and -0.0 are +1 (bit 0)
    assert np.array_equal(unpack_sign(words, x.shape[1]), np.where(x >= 0, 1.0, -1.0))
    assert int(words[0, 1]) == 1 << 5  # the unused bits of the last word are 0


def _random_conv_case(rng, n, h, w, c, o, k):
    x = pack_sign(rng.standard_normal((n, h, w, c)))
    wt = pack_sign(rng.standard_normal((o, k, k, c)))
    return x, wt


@needs_numba
@pytest.mark.parametrize(
    "c,o,k,stride,dil,pads,pad_value",
    [
        (70, 67, 3, 1, 1, ((1, 1), (1, 1)), 0),
        (70, 67, 3, 2, 1, ((0, 1), (1, 0)), 1),
        (130, 5, 2, 1, 1, ((0, 0), (0, 0)), 0),
        (3, 130, 5, 2, 1, ((2, 2), (2, 2)), 0),
        (64, 64, 3, 1, 2, ((2, 2), (2, 2)), 0),
    ],
)
def test_numba_kernels_equal_numpy(c, o, k, stride, dil, pads, pad_value):
    from onebit.kernels import jit as kb

    rng = np.random.default_rng(c + o)
    x, wt = _random_conv_case(rng, 2, 7, 9, c, o, k)
    wpc = popcount(wt).sum(-1).reshape(o, k * k)
    mul = rng.standard_normal(o).astype(np.float32)
    add = rng.standard_normal(o).astype(np.float32)
    sgn = rng.choice([-1, 1], o)
    thr = rng.integers(-20, 20, o)
    args = (x, wt, c, (stride, stride), (dil, dil), pads, pad_value)
    np.testing.assert_allclose(
        kernels_numpy.bconv2d(*args, "float", mul, add),
        kb.bconv2d(*args, "float", mul, add, wpc=wpc),
        rtol=1e-6,
        atol=1e-4,
    )
    assert np.array_equal(
        kernels_numpy.bconv2d(*args, "bits", sgn=sgn, thr=thr), kb.bconv2d(*args, "bits", sgn=sgn, thr=thr, wpc=wpc)
    )
    xd, wd = pack_sign(rng.standard_normal((3, c * 5))), pack_sign(rng.standard_normal((o, c * 5)))
    assert np.array_equal(
        kernels_numpy.bdense(xd, wd, c * 5, "bits", sgn=sgn, thr=thr),
        kb.bdense(xd, wd, c * 5, "bits", sgn=sgn, thr=thr),
    )
    mask = pack_sign(rng.standard_normal((1, c)))[0]
    for pool in [((2, 2), (2, 2), ((0, 0), (0, 0)), False), ((3, 3), (2, 2), ((1, 1), (0, 1)), True)]:
        assert np.array_equal(kernels_numpy.maxpool2d_bits(x, *pool, mask), kb.maxpool2d_bits(x, *pool, mask))


# ------------------------------------------------------------------------ single binary layers


def _binary_conv(c, o, k, stride, padding, pad_values):
    conv = QuantConv2d(
        c,
        o,
        k,
        stride,
        padding=padding,
        bias=False,
        pad_values=pad_values,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
    )
    nn.init.normal_(conv.weight)
    return conv


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "c,o,k,stride,padding,pad_values,hw",
    [
        (3, 5, 3, 1, 1, 0.0, (7, 9)),
        (70, 67, 3, 2, "same", 0.0, (9, 7)),
        (70, 67, 3, 2, "same", 1.0, (9, 7)),
        (65, 130, 5, 1, 2, 1.0, (6, 5)),
        (128, 64, 2, 2, 0, 0.0, (8, 8)),
        (64, 33, 1, 1, 0, 0.0, (5, 5)),
    ],
)
def test_binary_conv_is_exact(tmp_path, backend, c, o, k, stride, padding, pad_values, hw):
    """Float output of a lone binary conv: the integer dots equal torch's float conv exactly."""
    model = nn.Sequential(_binary_conv(c, o, k, stride, padding, pad_values))
    out, ref, _ = roundtrip(model, (2, c) + hw, tmp_path, backend)
    assert out.shape == ref.shape
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pool_first", [True, False])
@pytest.mark.parametrize("pad_values", [0.0, 1.0])
def test_thresholds_and_packed_pool_are_exact(tmp_path, backend, pool_first, pad_values):
    """conv -> [pool] -> BN (negative scales too) -> sign -> conv: the folded thresholds and the
    max-pool on packed bits give torch's signs exactly, so the last conv's dots are equal."""
    bn = nn.BatchNorm2d(67)
    pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
    mid = [pool, bn] if pool_first else [bn, pool]
    model = nn.Sequential(
        _binary_conv(70, 67, 3, 1, "same", pad_values),
        *mid,
        _binary_conv(67, 40, 3, 2, "same", pad_values),
    )
    randomize_bn(model, negative=True)
    with torch.no_grad():  # integer-valued shifts put some dots exactly on the threshold
        bn.running_mean.copy_(torch.randint(-6, 6, (67,)).float())
        bn.bias.data.zero_()
    out, ref, _ = roundtrip(model, (3, 70, 11, 9), tmp_path, backend)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_dense_after_flatten_is_exact(tmp_path, backend):
    model = nn.Sequential(
        _binary_conv(3, 70, 3, 1, 0, 0.0),
        nn.BatchNorm2d(70),
        nn.Flatten(),
        QuantLinear(70 * 5 * 3, 33, bias=True, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
        nn.BatchNorm1d(33),
        QuantLinear(33, 7, bias=False, input_quantizer="approx_sign", kernel_quantizer="ste_sign"),
    )
    randomize_bn(model, negative=True)
    out, ref, _ = roundtrip(model, (4, 3, 7, 5), tmp_path, backend)
    assert np.array_equal(out, ref)


binary_conv_cases = st.fixed_dictionaries(
    dict(
        c=st.integers(1, 130),
        o=st.integers(1, 70),
        k=st.integers(1, 4),
        stride=st.integers(1, 3),
        dilation=st.integers(1, 2),
        padding=st.sampled_from([0, 1, 2, "same"]),
        pad_values=st.sampled_from([0.0, 1.0]),
        bias=st.booleans(),
        hw=st.tuples(st.integers(1, 8), st.integers(1, 8)),
        seed=st.integers(0, 2**31 - 1),
    )
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=12, deadline=None)
@given(case=binary_conv_cases)
def test_lone_binary_conv_is_exact_on_random_shapes(tmp_path_factory, backend, case):
    """Exported binary conv (any channel count, stride, dilation, padding, pad value, bias): its
    output is torch's integer dots (+ bias, one float rounding), inputs with exact zeros included."""
    c, o, k, stride, dilation, padding = (case[key] for key in ("c", "o", "k", "stride", "dilation", "padding"))
    if padding != "same":
        assume(all(out_size(s, k, stride, dilation, padding, padding) > 0 for s in case["hw"]))
    torch.manual_seed(case["seed"])
    conv = QuantConv2d(
        c,
        o,
        k,
        stride,
        padding=padding,
        dilation=dilation,
        bias=case["bias"],
        pad_values=case["pad_values"],
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
    )
    nn.init.normal_(conv.weight)
    x = torch.randn((2, c) + case["hw"])
    x[torch.rand(x.shape) < 0.1] = 0.0
    model = nn.Sequential(conv)
    out, ref, _ = roundtrip(model, tuple(x.shape), tmp_path_factory.mktemp("conv"), backend, x=x)
    assert out.shape == ref.shape
    if conv.bias is None:
        assert np.array_equal(out, ref)
        return
    # torch's conv adds the bias into its float sum (its rounding depends on the order); the engine
    # adds it to the exact integer dot: one rounding. Both within an ulp or two.
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-5)
    bias, conv.bias = conv.bias.detach(), None
    with torch.no_grad():
        dots = model(x)
    assert np.array_equal(out, (dots + bias[:, None, None]).numpy())


# ----------------------------------------------------------------------------- the zoo, end to end


def _mnist_images(n):
    """Real digits: the first ``n`` of the bundled MNIST subset (in its file order)."""
    with np.load(mnist5k_path(), allow_pickle=False) as archive:
        x = archive["images"][:n]
    x = torch.from_numpy(x.astype(np.float32) / 255.0).reshape(n, 1, 28, 28)
    return (x - 0.1307) / 0.3081


# Every zoo model, as small as its builder allows (keyword arguments, input size; the ResNet-like
# models run on 16x16 inputs, where their binary layers see 4x4, 2x2 and 1x1 maps).
ZOO = {
    "small_cnn": ({}, (2, 1, 28, 28)),
    "binarynet": ({"filters": 32, "dense_units": 96}, (2, 3, 32, 32)),
    "binary_alexnet": ({"image_size": 64}, (2, 3, 64, 64)),
    "xnornet": ({"image_size": 64}, (2, 3, 64, 64)),
    "dorefanet": ({"image_size": 48}, (2, 3, 48, 48)),
    "birealnet18": ({"filters": 16}, (2, 3, 16, 16)),
    "binary_resnet_e18": ({"initial_filters": 16}, (2, 3, 16, 16)),
    "binary_densenet28": ({"initial_filters": 16, "growth_rate": 16}, (2, 3, 32, 32)),
    "meliusnet22": ({}, (2, 3, 16, 16)),
    "quicknet_small": ({}, (2, 3, 32, 32)),
    "quicknet": ({}, (2, 3, 32, 32)),
    "quicknet_large": ({}, (2, 3, 32, 32)),
    "real_to_binary_net": ({}, (2, 3, 16, 16)),
}


def test_the_zoo_list_is_complete():
    assert set(ZOO) == set(onebit.list_models())


class _Fixed(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return self.value


class _Levels(nn.Module):
    """DoReFa's integer level round(clip(x, 0, 1) n) instead of its value level / n."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x):
        return torch.round(torch.clamp(x, 0.0, 1.0) * self.n)


def _levels_of(layer):
    iq = layer.input_quantizer
    return 2**iq.k_bit - 1 if isinstance(iq, onebit.quantizers.DoReFa) else 1


def _scale_after_sum(layer, args, out):
    """Forward hook: the layer's output as alpha / levels * (integer dot) + bias, i.e. the scale of a
    +/-alpha kernel (and 1 / levels of DoReFa inputs) applied once to the exact integer sum."""
    w = layer.quantized_weight().detach()
    alpha = w.abs().flatten(1).amax(1)
    n = _levels_of(layer)
    saved = layer.kernel_quantizer, layer.input_quantizer, layer.bias
    layer.kernel_quantizer = _Fixed(torch.where(w < 0, -1.0, 1.0))
    if n > 1:
        layer.input_quantizer = _Levels(n)
    layer.bias = None
    try:
        d = layer.forward(args[0])
    finally:
        layer.kernel_quantizer, layer.input_quantizer, layer.bias = saved
    shape = (1, -1) + (1,) * (d.dim() - 2)
    y = d * (alpha / n).view(shape)
    return y if layer.bias is None else y + layer.bias.detach().view(shape)


def _is_scaled_binary(m):
    if not isinstance(m, onebit.layers.QuantLayer) or m.kernel_precision != 1 or m.input_quantizer is None:
        return False
    with torch.no_grad():
        alpha = m.quantized_weight().abs().flatten(1).amax(1)
    return _levels_of(m) > 1 or not bool((alpha == 1).all())


def exact_reference(model, x):
    """torch's output of ``model`` with every scaled binary layer summing exactly (see
    ``_scale_after_sum``): the engine's rule. torch's fp32 conv with a +/-alpha kernel rounds its
    partial sums, so where the exact dot is 0 it returns +/-1e-7 whose sign depends on the memory
    layout and thread count; a model without scaled layers is run as it is."""
    handles = [m.register_forward_hook(_scale_after_sum) for m in model.modules() if _is_scaled_binary(m)]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


def _reference_and_binary_inputs(model, x):
    """``exact_reference`` and {layer name: its quantized input as the engine packs it} for every
    binary-kernel layer, from one forward pass."""
    seen = {}

    def hook(name, layer):
        def record(m, args):
            v = args[0].detach()
            v = v.permute(0, 2, 3, 1) if v.dim() == 4 else v
            n = _levels_of(m)
            if n > 1:
                q = torch.round(torch.clamp(v, 0.0, 1.0) * n).numpy().astype(np.int64)
                seen[name] = pack_planes(q, m.input_quantizer.k_bit)
            else:
                seen[name] = pack_sign(m.input_quantizer(v).numpy(), getattr(m, "groups", 1))

        return layer.register_forward_pre_hook(record)

    layers = {n: m for n, m in model.named_modules() if isinstance(m, onebit.layers.QuantLayer)}
    handles = [hook(n, m) for n, m in layers.items() if m.kernel_precision == 1 and m.input_quantizer is not None]
    try:
        ref = exact_reference(model, x)
    finally:
        for h in handles:
            h.remove()
    return ref.numpy(), seen


# QuickNet and QuickNet Large repeat QuickNet Small's blocks at full width (no width argument):
# one state each keeps the suite fast.
ZOO_CASES = [(name, state) for name in sorted(ZOO) for state in ("fresh", "trained_bn")]
ZOO_CASES = [c for c in ZOO_CASES if c not in {("quicknet", "fresh"), ("quicknet_large", "fresh")}]


@pytest.mark.parametrize("name,state", ZOO_CASES)
def test_every_zoo_model_runs_with_torchs_answers(tmp_path, name, state):
    """Export + load of every zoo model, fresh (batch norm at its initial statistics: many exact
    ties) and with random batch-norm statistics and scales: each binary layer's packed input equals
    torch's bit for bit, the logits agree within float rounding, the argmax is the same."""
    kwargs, size = ZOO[name]
    torch.manual_seed(5)
    model = onebit.create_model(name, num_classes=10, **kwargs).eval()
    if state == "trained_bn":
        randomize_bn(model, seed=6, negative=True)
    x = _mnist_images(size[0]) if name == "small_cnn" else torch.randn(size)
    path = tmp_path / "m.obe"
    export(model, path, size)
    ref, want_bits = _reference_and_binary_inputs(model, x)
    assert want_bits, "every zoo model has binary layers"
    if state == "trained_bn":  # no exact ties: plain torch agrees as well
        with torch.no_grad():
            plain = model(x).numpy()
        np.testing.assert_allclose(plain, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    for backend in BACKENDS:
        rt = load(path, backend=backend)
        out = rt(x.numpy())
        np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max(), rtol=0, err_msg=backend)
        assert np.array_equal(out.argmax(1), ref.argmax(1))
        if backend == "numba":  # fused steps compute exactly what their ops compute one by one
            assert np.array_equal(out, load(path, backend=backend, fuse=False)(x.numpy()))
        inputs = rt.op_inputs(x.numpy())
        got = {op["name"]: (op, inputs[i][0]) for i, op in enumerate(rt.ops) if op["op"] in _BINARY_LAYER_OPS}
        assert set(got) == set(want_bits)
        for layer, signs in want_bits.items():
            op, bits = got[layer]
            assert np.array_equal(bits, _engine_layout(signs, op)), f"{backend}: input bits of {layer!r}"


_BINARY_LAYER_OPS = ("bconv2d", "bdense", "bconv2d_planes", "bdense_planes")


@needs_numba
@pytest.mark.parametrize(
    "name,fused",
    [
        ("birealnet18", ["bconv2d", "add", "pack"]),
        ("quicknet_small", ["bconv2d", "relu", "scale_shift", "add", "pack"]),
        ("real_to_binary_net", ["conv2d", "scale_shift", "prelu"]),
    ],
)
def test_residual_blocks_run_as_one_step(tmp_path, name, fused):
    """With numba a residual block's binary conv, batch norm, activation, shortcut add and the next
    block's sign packing run as one step (the float sum kept only where the next shortcut reads it)."""
    kwargs, size = ZOO[name]
    export(onebit.create_model(name, num_classes=10, **kwargs).eval(), tmp_path / "m.obe", size)
    rt = load(tmp_path / "m.obe", backend="numba")
    kinds = [[rt.ops[i]["op"] for i in step] for step in rt.steps]
    assert fused in kinds
    assert sum(len(s) for s in rt.steps) == len(rt.ops) and len(rt.steps) < len(rt.ops)
    assert load(tmp_path / "m.obe", backend="numba", fuse=False).steps == [(i,) for i in range(len(rt.ops))]


def _engine_layout(signs, op):
    """torch's packed input of a dense layer in the engine's layout: a flattened map's bits stay
    packed per position (positions x channel words), torch's order is channels x positions."""
    p = op.get("positions", 1)
    if p == 1:
        return signs
    return pack_sign(unpack_sign(signs, op["in_features"]).reshape(len(signs), -1, p).transpose(0, 2, 1)).reshape(
        len(signs), -1
    )


def test_fresh_xnornet_ties_are_torchs_own_rounding():
    """Why the reference above sums scaled layers exactly: on a fresh XNOR-Net torch's own logits
    move with its memory layout, so no engine could match 'torch' there bit for bit."""
    torch.manual_seed(0)
    model = onebit.create_model("xnornet", num_classes=10, image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        nchw = model(x)
        nhwc = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert (nchw - nhwc).abs().max() > 1e-2


def test_binarynet_file_costs_one_bit_per_weight(tmp_path):
    report = export(onebit.create_model("binarynet"), tmp_path / "m.obe", (1, 3, 32, 32))
    assert report["binary_weight_bits"] == 10_352_000
    if "size_ratio" in report:
        assert 0.95 < report["size_ratio"] < 1.05


class _Residual(nn.Module):
    """A small residual net written with functional ops (fx must trace torch.flatten, +, mean)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv1 = QuantConv2d(
            16, 16, 3, padding="same", bias=False, input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign"
        )
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = QuantConv2d(
            16,
            24,
            3,
            stride=2,
            padding="same",
            pad_values=1.0,
            input_quantizer="approx_sign",
            kernel_quantizer="ste_sign",
        )
        self.short = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), nn.Conv2d(16, 24, 1))
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = self.bn1(self.conv1(x)) + x
        x = self.conv2(x) + self.short(x)
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_model_roundtrip(tmp_path, backend):
    torch.manual_seed(3)
    model = randomize_bn(_Residual())
    out, ref, _ = roundtrip(model, (3, 3, 9, 7), tmp_path, backend)
    np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


class _Transpose(nn.Module):
    """Swaps height and width: a permute the engine refuses."""

    def forward(self, x):
        return x.permute(0, 1, 3, 2)


class _ChannelsLast(nn.Module):
    """A map flattened in (H, W, C) order (as Keras' Flatten) into dense layers, by ``permute``
    or ``movedim``; ``then``: a module applied to the flattened features before the dense layer."""

    def __init__(self, how, binary, then=None):
        super().__init__()
        self.how, self.then = how, then or nn.Identity()
        self.conv = QuantConv2d(3, 8, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign", bias=False)
        self.bn = nn.BatchNorm2d(8)
        quantizers = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign") if binary else {}
        self.fc = QuantLinear(8 * 3 * 4, 5, **quantizers)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = x.permute(0, 2, 3, 1) if self.how == "permute" else torch.movedim(x, 1, -1)
        return self.fc(self.then(x.reshape(x.shape[0], -1)))


@pytest.mark.parametrize("how", ["permute", "movedim"])
@pytest.mark.parametrize("binary", [False, True], ids=["float-dense", "binary-dense"])
def test_channels_last_flatten_into_dense_layers(tmp_path, how, binary):
    torch.manual_seed(0)
    model = randomize_bn(_ChannelsLast(how, binary), negative=True)
    out, ref, _ = roundtrip(model, (3, 3, 5, 6), tmp_path, "numpy")
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize(
    "model,match",
    [
        (_ChannelsLast("permute", True, then=nn.ReLU()), r"layer 'then': reads .*flattened channels-last"),
        (nn.Sequential(_Transpose()), r"op 'permute' \(permute\) in layer '0': dims to \(0, 1, 3, 2\)"),
    ],
    ids=["flattened-into-relu", "transpose"],
)
def test_channels_last_refusals(tmp_path, model, match):
    with pytest.raises(EngineError, match=match):
        export(model.eval(), tmp_path / "m.obe", (1, 3, 5, 6))


# --------------------------------------------------------------------------------------- refusals


class _Cat(nn.Module):
    """Concatenation along ``dim`` (only channels run in the engine), or indexing."""

    def __init__(self, dim, index=False):
        super().__init__()
        self.dim, self.index = dim, index

    def forward(self, x):
        return x[:, :2] if self.index else torch.cat([x, x], dim=self.dim)


@pytest.mark.parametrize(
    "layer,match",
    [
        (QuantConv2d(4, 4, 3, input_quantizer="ste_tern", kernel_quantizer="ste_sign"), "'0'.*SteTern.*DoReFa"),
        (QuantConv2d(4, 4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_tern"), "'0'.*2 bits"),
        (
            QuantConv2d(4, 4, 3, padding=1, pad_values=1.0, input_quantizer="dorefa", kernel_quantizer="ste_sign"),
            "'0'.*pad_values=1.0 on 2-bit",
        ),
        (nn.Conv1d(4, 4, 3), "'0'.*Conv1d"),
        (_Cat(3), r"op 'cat' \(cat\): concatenation along dim 3"),
        (_Cat(1, index=True), r"op 'getitem' \(getitem\)"),
        (
            QuantConv2d(4, 4, 3, padding=1, pad_values=0.5, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
            "'0'.*pad_values=0.5",
        ),
        (nn.Sequential(nn.Conv2d(4, 4, 1), nn.Upsample(scale_factor=2)), "'0.1'.*Upsample"),
        (nn.Sequential(nn.Conv2d(4, 4, 1), nn.Softmax(dim=2)), r"layer '0.1' \(Softmax\): softmax over dim 2"),
    ],
)
def test_refusals_name_the_layer(tmp_path, layer, match):
    model = nn.Sequential(layer)
    size = (1, 4, 8) if isinstance(layer, nn.Conv1d) else (1, 4, 8, 8)
    with pytest.raises(EngineError, match=match) as info:
        export(model, tmp_path / "m.obe", size)
    assert "\n" not in str(info.value)


def test_noop_kernel_must_be_binary(tmp_path):
    conv = QuantConv2d(4, 4, 3, input_quantizer="ste_sign", kernel_quantizer="noop")
    with pytest.raises(EngineError, match="'0'.*not \\+/-alpha"):
        export(nn.Sequential(conv), tmp_path / "m.obe", (1, 4, 8, 8))
    with torch.no_grad():
        conv.weight.copy_(torch.where(conv.weight >= 0, 1.0, -1.0))  # Bop-trained kernels are +/-1
    out, ref, _ = roundtrip(nn.Sequential(conv), (1, 4, 8, 8), tmp_path, "numpy")
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_bad_files_and_inputs(tmp_path):
    model = randomize_bn(onebit.create_model("small_cnn"))
    path = tmp_path / "m.obe"
    export(model, path, (1, 1, 28, 28))
    rt = load(path, backend="numpy")
    assert rt(np.zeros((5, 1, 28, 28), np.float32)).shape == (5, 10)  # any batch size
    with pytest.raises(EngineError, match=r"input shape \(1, 1, 27, 28\)"):
        rt(np.zeros((1, 1, 27, 28), np.float32))
    (tmp_path / "junk.obe").write_bytes(b"not a model")
    with pytest.raises(EngineError, match="not an onebit engine file"):
        load(tmp_path / "junk.obe")
    with pytest.raises(EngineError, match="backend='gpu'"):
        load(path, backend="gpu")


# ------------------------------------------------------------------------------------ no torch


def test_runtime_runs_without_torch(tmp_path):
    """A deployment without torch: import onebit.engine and run a file with torch unimportable."""
    model = randomize_bn(onebit.create_model("binarynet"))
    path = tmp_path / "m.obe"
    export(model, path, (2, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import sys, json
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch' (blocked)", name="torch")
        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        import onebit.engine as engine
        out = {{}}
        for backend in engine.available_backends():
            y = engine.load({str(path)!r}, backend=backend)(np.load({str(tmp_path / "x.npy")!r}))
            out[backend] = y.tolist()
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print(json.dumps(out))
    """)
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert res.returncode == 0, res.stderr
    outs = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(outs) == set(BACKENDS)
    for y in outs.values():
        np.testing.assert_allclose(np.array(y, np.float32), ref, atol=1e-4 * np.abs(ref).max())


# ------------------------------------------------------------------------------------------- CLI


def test_cli_export_and_bench(tmp_path, capsys):
    from onebit.cli.deploy import cmd_bench_engine, cmd_export

    path = tmp_path / "m.obe"
    assert cmd_export(["small_cnn", str(path), "--input-size", "1,28,28"]) == 0
    assert "1 bit" not in capsys.readouterr().err
    assert load(path)(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)
    assert cmd_bench_engine([str(path), "--batch", "2", "--repeats", "1"]) == 0
    assert "| 2 |" in capsys.readouterr().out
    assert cmd_export(["no_such_model", str(path)]) == 2
    assert "neither a run folder nor a zoo model" in capsys.readouterr().err
