"""onebit.layers.popcount (switched by onebit.xnor / onebit.settings): the popcount forward gives
F.conv2d's / F.linear's exact outputs and bit-identical gradients, falls back where it cannot apply,
and keeps a model's loss curve."""

import csv

import pytest
import torch
import torch.nn.functional as F

import onebit as ob
from onebit import kernels, xnor
from onebit.layers import popcount

pytest.importorskip("numba")


def fast(y):
    """Whether ``y`` came out of the popcount forward."""
    return type(y.grad_fn).__name__ in ("_Conv2dBackward", "_LinearBackward")


def run(layer, x, mode):
    """Output, input grad, parameter grads and whether the fast path ran, with the switch at ``mode``."""
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    with xnor.use(mode):
        y = layer(x)
    g = torch.linspace(-1, 1, y.numel()).reshape(y.shape).to(memory_format=_format(y))
    y.backward(g)
    grads = [p.grad.clone() for p in layer.parameters()]
    return y.detach(), x.grad, grads, fast(y)


def record_fast_calls(monkeypatch, *names):
    """List that gets, per call of the named ``popcount`` functions, whether the popcount path ran."""
    calls = []
    for name in names:

        def counted(*args, _f=getattr(popcount, name)):  # noqa: B008  (bind this name's function)
            y = _f(*args)
            calls.append(y is not None)
            return y

        monkeypatch.setattr(popcount, name, counted)
    return calls


def _format(y):
    cl = y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def assert_same(layer, x, exact=True):
    y, gx, gp, used = run(layer, x, True)
    y0, gx0, gp0, used0 = run(layer, x, False)
    assert used and not used0
    assert y.shape == y0.shape and y.stride() == y0.stride()
    if exact:
        assert torch.equal(y, y0)
    else:  # a bias: d + b rounded once; F.conv2d may round differently outside channels_last
        torch.testing.assert_close(y, y0, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(gx, gx0, rtol=1e-6, atol=1e-6)
    for a, b in zip(gp, gp0):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    return y, gx, gp, gx0, gp0


CONV_CASES = [
    # c_in, c_out, h, w, kernel, stride, dilation, padding, pad_values
    (3, 4, 7, 6, 3, 1, 1, 1, 0.0),
    (64, 64, 8, 8, 3, 1, 1, 1, 1.0),
    (65, 33, 9, 11, 3, 2, 1, "same", 0.0),
    (100, 70, 9, 11, 3, 2, 1, "same", 1.0),
    (130, 20, 7, 7, 3, 1, 2, 2, 0.0),
    (17, 5, 10, 9, 2, 1, 1, "same", 0.0),  # even kernel: torch's "same" pads the odd pixel itself
    (17, 5, 10, 9, 4, 3, 1, "same", 1.0),
    (128, 128, 6, 6, 3, 1, 1, "same", 0.0),
    (9, 3, 5, 5, (1, 3), (2, 1), (1, 2), 0, 0.0),
    (1, 1, 5, 5, 3, 1, 1, 1, 0.0),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_conv2d_output_and_gradients_match_torch(case, channels_last, bias):
    c_in, c_out, h, w, k, stride, dilation, padding, pad_values = case
    torch.manual_seed(sum(map(hash, map(str, case))) % 1000)
    layer = ob.QuantConv2d(
        c_in,
        c_out,
        k,
        stride=stride,
        padding=padding,
        dilation=dilation,
        bias=bias,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        pad_values=pad_values,
    )
    if bias:
        torch.nn.init.normal_(layer.bias, std=3.0)
    x = torch.randn(3, c_in, h, w)
    x[0, 0, 0, :2] = 0.0  # sign(0) = +1
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y, gx, gp, gx0, gp0 = assert_same(layer, x, exact=not bias or channels_last)
    # the gradients are those of the very same torch ops: bit for bit
    assert torch.equal(gx, gx0) and all(torch.equal(a, b) for a, b in zip(gp, gp0))


@pytest.mark.parametrize("quant", [("approx_sign", "noop"), ("swish_sign", "approx_sign"), ("ste_sign", "swish_sign")])
def test_other_sign_quantizers_and_bop_kernels(quant):
    torch.manual_seed(1)
    layer = ob.QuantConv2d(20, 8, 3, padding=1, bias=False, input_quantizer=quant[0], kernel_quantizer=quant[1])
    with torch.no_grad():  # Bop's kernels: already +/-1, tagged by NoOp(precision=1)
        layer.weight.copy_(ob.quantizers.sign(layer.weight))
    assert_same(layer, torch.randn(2, 20, 7, 7))


@pytest.mark.parametrize("n, k, o", [(5, 7, 3), (4, 64, 10), (6, 200, 65), (3, 1000, 9)])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_linear_output_and_gradients_match_torch(n, k, o, bias):
    torch.manual_seed(k)
    layer = ob.QuantLinear(k, o, bias=bias, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    if bias:
        torch.nn.init.normal_(layer.bias, std=3.0)
    _, gx, gp, gx0, gp0 = assert_same(layer, torch.randn(n, k), exact=not bias)
    assert torch.equal(gx, gx0) and all(torch.equal(a, b) for a, b in zip(gp, gp0))


@pytest.mark.parametrize("grad_of", ["input", "weight"])
def test_only_the_gradients_asked_for(grad_of):
    torch.manual_seed(4)
    layer = ob.QuantConv2d(
        20, 8, 3, padding="same", stride=2, input_quantizer="ste_sign", kernel_quantizer="ste_sign", pad_values=1.0
    )
    layer.weight.requires_grad_(grad_of == "weight")
    x = torch.randn(2, 20, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_(grad_of == "input")
    grads = []
    for mode in (True, False):
        with xnor.use(mode):
            y = layer(x)
        assert fast(y) == mode
        (g,) = torch.autograd.grad(y.sum(), x if grad_of == "input" else layer.weight)
        grads.append(g)
    assert torch.equal(*grads)


def test_eval_and_no_grad():
    torch.manual_seed(2)
    layer = ob.QuantConv2d(
        70, 16, 3, padding="same", input_quantizer="ste_sign", kernel_quantizer="ste_sign", pad_values=1.0
    ).eval()
    x = torch.randn(4, 70, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = layer(x)
        with xnor.use(False):
            y0 = layer(x)
    assert y.grad_fn is None and torch.equal(y, y0)
    with torch.inference_mode():
        assert torch.equal(layer(x), y0)


def fallback_layers():
    q = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    return {
        "noop_real_kernel": (
            ob.QuantConv2d(8, 4, 3, input_quantizer="ste_sign", kernel_quantizer="noop"),
            (2, 8, 5, 5),
        ),
        "groups": (ob.QuantConv2d(8, 4, 3, groups=2, **q), (2, 8, 5, 5)),
        "depthwise": (ob.QuantDepthwiseConv2d(8, 3, **q), (2, 8, 5, 5)),
        "real_input": (ob.QuantConv2d(8, 4, 3, kernel_quantizer="ste_sign"), (2, 8, 5, 5)),
        "scaled_kernel": (
            ob.QuantConv2d(8, 4, 3, input_quantizer="ste_sign", kernel_quantizer="magnitude_aware_sign"),
            (2, 8, 5, 5),
        ),
        "pad_minus_one": (ob.QuantConv2d(8, 4, 3, padding=1, pad_values=-1.0, **q), (2, 8, 5, 5)),
        "reflect": (ob.QuantConv2d(8, 4, 3, padding=1, padding_mode="reflect", **q), (2, 8, 5, 5)),
        "unbatched": (ob.QuantConv2d(8, 4, 3, **q), (8, 5, 5)),
        "conv1d": (ob.QuantConv1d(8, 4, 3, **q), (2, 8, 5)),
        "float64": (ob.QuantConv2d(8, 4, 3, dtype=torch.float64, **q), (2, 8, 5, 5)),
        "linear_3d": (ob.QuantLinear(8, 4, **q), (2, 3, 8)),
        "ste_tern": (ob.QuantLinear(8, 4, input_quantizer="ste_sign", kernel_quantizer="ste_tern"), (2, 8)),
    }


@pytest.mark.parametrize("name", list(fallback_layers()))
def test_layers_the_kernel_cannot_run_fall_back_silently(name):
    torch.manual_seed(3)
    layer, shape = fallback_layers()[name]
    x = torch.randn(shape, dtype=layer.weight.dtype)
    with xnor.use("on"):
        y = layer(x)
    assert not fast(y)
    with xnor.use(False):
        assert torch.equal(y, layer(x))


def test_switch_and_auto_size_threshold(monkeypatch):
    layer = ob.QuantConv2d(8, 4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    x = torch.randn(2, 8, 5, 5)  # 2 * 3 * 3 * 4 * 72 MACs
    assert xnor.get_mode() == "auto" and xnor.available()
    assert not fast(layer(x))  # auto: too small to pay
    monkeypatch.setattr(popcount, "MIN_MACS", 2 * 3 * 3 * 4 * 72)
    assert fast(layer(x))
    previous = xnor.set_mode("off")
    try:
        assert previous == "auto" and xnor.get_mode() == "off" and not fast(layer(x))
    finally:
        xnor.set_mode(previous)
    monkeypatch.setattr(popcount, "MIN_MACS", 2**40)
    with xnor.use("on"):  # on: whatever the size
        assert fast(layer(x))
        with xnor.use(False):
            assert xnor.get_mode() == "off" and not fast(layer(x))
        assert xnor.get_mode() == "on"
    assert xnor.get_mode() == "auto"
    with pytest.raises(ValueError, match="popcount_forward='fast' is not one of 'auto', 'on', 'off'"):
        xnor.set_mode("fast")


def test_on_without_numba_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_jit", False)
    monkeypatch.setattr(popcount, "MIN_MACS", 0)
    assert not xnor.available()
    with pytest.raises(RuntimeError, match="needs numba.*onebit\\[jit\\].*'auto' or 'off'"):
        xnor.set_mode("on")
    layer = ob.QuantConv2d(8, 4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    assert not fast(layer(torch.randn(2, 8, 5, 5)))  # auto: torch's path, silently
    from onebit.training import train
    from onebit.training.config import ConfigError

    with pytest.raises(ConfigError, match="xnor_forward='on' needs numba.*allowed without it: auto, off"):
        train({"xnor_forward": "on", "out": str(tmp_path)}, verbose=False)


def test_training_keeps_the_loss_curve(tmp_path, monkeypatch):
    """Accuracy must not move: 300 Bop steps of the small CNN (two binary convs with
    the popcount forward, two binary dense layers) give the same losses and weights either way."""
    from onebit.recipes import load_recipe
    from onebit.training import train

    calls = record_fast_calls(monkeypatch, "conv2d")
    results = {}
    for mode in ("on", "off"):
        config = dict(load_recipe("mnist-bop").config)
        config.update(
            out=str(tmp_path / mode),
            plots=False,
            tensorboard=False,
            threads=2,
            batch_size=64,
            epochs=4,
            max_steps=75,
            log_every=25,
            bn_reestimate=512,
            xnor_forward=mode,
        )
        summary = train(config, recipe="mnist-bop", verbose=False)
        run_dir = next((tmp_path / mode / "mnist-bop").iterdir())
        with open(run_dir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        state = torch.load(run_dir / "last.pt", weights_only=False)["model"]
        results[mode] = ([(r["train_loss"], r["test_loss"], r["flips"]) for r in rows], summary["test_accuracy"], state)
    (on_rows, on_acc, on_state), (off_rows, off_acc, off_state) = results["on"], results["off"]
    assert len(on_rows) == 4 and on_rows == off_rows and on_acc == off_acc, (on_rows, off_rows)
    assert all(torch.equal(on_state[k], off_state[k]) for k in on_state)
    # "on": both binary convs took the popcount path from Bop's first step (+/-1 kernels) on
    assert sum(calls) > 500 and calls.count(False) <= 2
    assert xnor.get_mode() == "auto"  # train() restores the switch


def test_conv_saves_the_input_as_packed_bits():
    """For the kernel's gradient the popcount conv keeps its +/-1 input as 64-bit words (32x less
    memory than the float tensor torch's conv saves)."""
    layer = ob.QuantConv2d(130, 8, 3, padding=1, bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    x = torch.randn(2, 130, 9, 9).contiguous(memory_format=torch.channels_last)
    saved = []

    def keep(t):
        saved.append((t.dtype, t.numel()))
        return t

    for mode in ("on", "off"):
        saved.clear()
        with xnor.use(mode), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            layer(x.requires_grad_(False))
        floats = sum(n for dtype, n in saved if dtype == torch.float32)
        if mode == "on":
            assert (torch.int64, 2 * 9 * 9 * 3) in saved  # 130 channels -> 3 words per pixel
            assert floats == 0  # no float copy of the input (nor the kernel: x needs no grad)
        else:
            assert floats >= x.numel()


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_fused_sign_ste_equals_torch(channels_last, monkeypatch):
    """The one-pass sign + mask of the sign STE: same values, strides and gradients as torch's."""
    from onebit.quantizers import ste_sign

    x = torch.randn(4, 70, 64, 65)
    flat = x.view(-1)
    flat[::97], flat[::89], flat[::101], flat[::103], flat[::107] = 0.0, -0.0, 1.0, -1.0, float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert x.numel() >= xnor.MIN_ELEMENTS
    grad = torch.randn_like(x)
    results = {}
    for mode in ("on", "off"):
        xr = x.clone().requires_grad_(True)
        with xnor.use(mode):
            y = ste_sign(xr, 1.0)
        y.backward(grad)
        results[mode] = (y, xr.grad)
    (y, gx), (y0, gx0) = results["on"], results["off"]
    assert torch.equal(y, y0) and y.stride() == y0.stride()
    assert torch.equal(gx, gx0)
    assert xnor.sign_and_mask(x, 1.0) is not None
    monkeypatch.setattr(kernels, "_jit", None)  # "auto" before any popcount forward loaded numba
    assert xnor.sign_and_mask(x, 1.0) is None
    with xnor.use("off"):
        assert xnor.sign_and_mask(x, 1.0) is None
    assert xnor.sign_and_mask(x[:, :, :8], 1.0) is None  # small or strided: torch's ops


def _cifar_shaped_bnn():
    """A narrow BinaryNet: real-input first conv, binary convs (zero padding, max-pool), binary
    dense layers, batch norm everywhere; Bop's 1-bit NoOp kernels."""
    torch.manual_seed(0)
    b = dict(input_quantizer="ste_sign", kernel_quantizer="noop")
    bn = torch.nn.BatchNorm2d
    return torch.nn.Sequential(
        ob.QuantConv2d(3, 32, 3, padding=1, bias=False, kernel_quantizer="noop"),
        bn(32),
        ob.QuantConv2d(32, 64, 3, padding=1, bias=False, **b),
        torch.nn.MaxPool2d(2),
        bn(64),
        ob.QuantConv2d(64, 96, 3, padding=1, bias=False, **b),
        torch.nn.MaxPool2d(2),
        bn(96),
        torch.nn.Flatten(),
        ob.QuantLinear(96 * 8 * 8, 64, bias=False, **b),
        torch.nn.BatchNorm1d(64),
        ob.QuantLinear(64, 10, bias=False, **b),
        torch.nn.BatchNorm1d(10),
    ).to(memory_format=torch.channels_last)


def test_cifar_shaped_training_keeps_the_loss_curve(monkeypatch):
    """A CIFAR-10-shaped check: 40 Bop + Adam steps of a narrow BinaryNet on 32x32x3
    batches give the same loss at every step and the same weights with the popcount forward."""
    calls = record_fast_calls(monkeypatch, "conv2d", "linear")
    g = torch.Generator().manual_seed(1)
    data = [
        (
            (torch.rand(16, 3, 32, 32, generator=g) * 2 - 1).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 10, (16,), generator=g),
        )
        for _ in range(8)
    ]
    results = {}
    for mode in ("on", "off"):
        model = _cifar_shaped_bnn()
        opt = ob.optim.CaseOptimizer(
            ob.optim.Bop(ob.binary_parameters(model), gamma=1e-3, threshold=1e-6),
            torch.optim.Adam(ob.real_parameters(model), lr=1e-2),
        )
        with torch.no_grad():  # start from +/-1 kernels, as Bop keeps them
            for p in ob.binary_parameters(model):
                p.copy_(torch.where(p >= 0, 1.0, -1.0))
        losses = []
        with xnor.use(mode):
            for step in range(40):
                x, y = data[step % len(data)]
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        results[mode] = (losses, [p.detach().clone() for p in model.parameters()])
        if mode == "on":  # two binary convs and two binary dense layers per step, all popcount
            assert len(calls) == 4 * 40 and all(calls), calls.count(False)
    assert results["on"][0] == results["off"][0]
    assert all(torch.equal(a, b) for a, b in zip(results["on"][1], results["off"][1]))
    assert results["on"][0][-1] < results["on"][0][0]  # it learns the fixed batches


def test_config_key():
    from onebit.recipes import load_recipe
    from onebit.training.config import ConfigError, apply_overrides

    assert apply_overrides(load_recipe("mnist-bop").config, ["xnor_forward=off"])["xnor_forward"] == "off"
    with pytest.raises(ConfigError, match="bad value xnor_forward='fast'; allowed: auto, on, off"):
        apply_overrides(load_recipe("mnist-bop").config, ["xnor_forward=fast"])
