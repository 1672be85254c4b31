"""Quantized layers equal their torch parents on quantized inputs and kernels (larq/layers_test.py)."""

import inspect
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onebit as ob

SIGN = ob.quantizers.sign


def make(cls, **quant):
    """A quantized layer and the input shape it takes."""
    table = {
        ob.QuantLinear: (lambda: cls(7, 3, **quant), (2, 7)),
        ob.QuantConv1d: (lambda: cls(3, 4, 3, padding=1, **quant), (2, 3, 9)),
        ob.QuantConv2d: (lambda: cls(3, 4, 3, padding=1, **quant), (2, 3, 7, 6)),
        ob.QuantConv3d: (lambda: cls(3, 4, 3, padding=1, **quant), (2, 3, 5, 6, 4)),
        ob.QuantDepthwiseConv2d: (lambda: cls(3, 3, padding=1, depth_multiplier=2, **quant), (2, 3, 7, 6)),
        ob.QuantConvTranspose2d: (lambda: cls(3, 4, 3, stride=2, **quant), (2, 3, 5, 4)),
    }
    build, shape = table[cls]
    return build(), shape


ALL_LAYERS = [
    ob.QuantLinear,
    ob.QuantConv1d,
    ob.QuantConv2d,
    ob.QuantConv3d,
    ob.QuantDepthwiseConv2d,
    ob.QuantConvTranspose2d,
]
PARENTS = {
    ob.QuantLinear: nn.Linear,
    ob.QuantConv1d: nn.Conv1d,
    ob.QuantConv2d: nn.Conv2d,
    ob.QuantConv3d: nn.Conv3d,
    ob.QuantDepthwiseConv2d: nn.Conv2d,
    ob.QuantConvTranspose2d: nn.ConvTranspose2d,
}


def plain_forward(layer, x):
    """The torch parent's forward on given input and weight (no quantization)."""
    return PARENTS[type(layer)].forward(layer, x)


@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_binarized_layer_equals_parent_on_signed_input_and_kernel(cls):
    torch.manual_seed(0)
    layer, shape = make(cls, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    x = torch.randn(shape)
    out = layer(x)
    with torch.no_grad():
        layer.weight.copy_(SIGN(layer.weight))
    expected = plain_forward(layer, SIGN(x))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_without_quantizers_layer_is_its_parent(cls):
    torch.manual_seed(0)
    layer, shape = make(cls)
    x = torch.randn(shape)
    assert torch.equal(layer(x), plain_forward(layer, x))


@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_gradients_flow_through_pseudo_gradient(cls):
    torch.manual_seed(0)
    layer, shape = make(cls, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    x = (torch.rand(shape) * 4 - 2).requires_grad_(True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert torch.equal(x.grad[x.detach().abs() > 1], torch.zeros_like(x.grad[x.detach().abs() > 1]))


@pytest.mark.parametrize("cls", ALL_LAYERS)
def test_signature_extends_the_torch_parent(cls):
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(PARENTS[cls].__init__).parameters
    extra = {"input_quantizer", "kernel_quantizer", "kernel_constraint", "pad_values", "depth_multiplier"}
    if cls is ob.QuantDepthwiseConv2d:
        theirs = {k: v for k, v in theirs.items() if k not in ("out_channels", "groups")}
    ours_plain = [k for k in ours if k not in extra]
    assert ours_plain == list(theirs)
    for k in ours_plain:
        assert ours[k].default == theirs[k].default, k


@pytest.mark.parametrize("cls", [ob.QuantConv1d, ob.QuantConv2d, ob.QuantConv3d])
@pytest.mark.parametrize("padding", [1, 2, "same"])
def test_pad_values_pads_with_the_constant(cls, padding):
    torch.manual_seed(0)
    dims = {ob.QuantConv1d: 1, ob.QuantConv2d: 2, ob.QuantConv3d: 3}[cls]
    layer = cls(
        2, 3, 3, padding=padding, bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign", pad_values=1.0
    )
    x = torch.randn((2, 2) + (5,) * dims)
    p = 1 if padding == "same" else padding
    padded = F.pad(SIGN(x), [p] * (2 * dims), value=1.0)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    expected = conv(padded, SIGN(layer.weight))
    torch.testing.assert_close(layer(x), expected)
    zero_pad = cls(2, 3, 3, padding=padding, bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    zero_pad.load_state_dict(layer.state_dict())
    assert zero_pad(x).shape == layer(x).shape
    assert not torch.equal(zero_pad(x), layer(x))


@pytest.mark.parametrize("cls", [ob.QuantConv1d, ob.QuantConv2d, ob.QuantConv3d])
def test_valid_padding_ignores_pad_values(cls):
    dims = {ob.QuantConv1d: 1, ob.QuantConv2d: 2, ob.QuantConv3d: 3}[cls]
    layer = cls(
        2, 3, 3, padding="valid", bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign", pad_values=1.0
    )
    x = torch.randn((2, 2) + (6,) * dims)
    assert layer.explicit_padding((6,) * dims) is None
    assert layer.padding_for((6,) * dims) == [(0, 0)] * dims
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    torch.testing.assert_close(layer(x), conv(SIGN(x), SIGN(layer.weight)))


@pytest.mark.parametrize(
    "size, stride, kernel, expected",
    [
        (7, 2, 3, (1, 1)),  # total = 3*2 + 3 - 7 = 2
        (8, 2, 3, (0, 1)),  # total = 3*2 + 3 - 8 = 1: the odd pixel goes at the end (TF)
        (6, 3, 3, (0, 0)),
        (5, 1, 4, (1, 2)),
    ],
)
def test_same_padding_follows_tensorflow(size, stride, kernel, expected):
    from onebit.layers import same_padding

    assert same_padding(size, kernel, stride, 1) == expected


@pytest.mark.parametrize("pad_values", [0.0, 1.0])
def test_same_padding_with_stride(pad_values):
    torch.manual_seed(0)
    layer = ob.QuantConv2d(2, 3, 3, stride=2, padding="same", bias=False, pad_values=pad_values)
    x = torch.randn(1, 2, 8, 7)
    out = layer(x)
    assert out.shape == (1, 3, 4, 4)
    # H: total 1 -> (0, 1); W: total 2 -> (1, 1).
    expected = F.conv2d(F.pad(x, [1, 1, 0, 1], value=pad_values), layer.weight, stride=2)
    torch.testing.assert_close(out, expected)
    assert layer.padding_for((8, 7)) == [(0, 1), (1, 1)]


def test_stride_one_same_zero_padding_uses_torch():
    layer = ob.QuantConv2d(2, 3, 3, padding="same")
    assert layer.explicit_padding((5, 5)) is None
    assert layer.padding_for((5, 5)) == [(1, 1), (1, 1)]


def test_pad_values_needs_zeros_padding_mode():
    with pytest.raises(ValueError, match="pad_values=1.0.*'reflect'"):
        ob.QuantConv2d(2, 3, 3, padding=1, padding_mode="reflect", pad_values=1.0)


def test_groups_supported():
    layer = ob.QuantConv2d(4, 6, 3, groups=2, kernel_quantizer="ste_sign")
    assert layer(torch.randn(1, 4, 5, 5)).shape == (1, 6, 3, 3)


def test_weight_clip_applied_after_every_optimizer_step():
    torch.manual_seed(0)
    layer = ob.QuantLinear(4, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    other = ob.QuantLinear(4, 3, kernel_quantizer="ste_sign")
    opt = torch.optim.SGD(list(layer.parameters()) + list(other.parameters()), lr=100.0)
    x = torch.randn(8, 4)
    (layer(x).sum() + other(x).sum()).backward()
    opt.step()
    assert layer.weight.abs().max() <= 1.0
    assert other.weight.abs().max() > 1.0, "a layer without constraint is left alone"


def test_constraint_survives_deepcopy():
    import copy

    layer = ob.QuantLinear(4, 3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    twin = copy.deepcopy(layer)
    opt = torch.optim.SGD(twin.parameters(), lr=100.0)
    twin(torch.randn(8, 4)).sum().backward()
    opt.step()
    assert twin.weight.abs().max() <= 1.0


def test_apply_constraints_by_hand():
    model = nn.Sequential(ob.QuantLinear(4, 3, kernel_constraint="weight_clip"))
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ob.apply_constraints(model)
    assert torch.equal(model[0].weight, torch.ones(3, 4))


def test_binary_and_real_parameters_are_disjoint_and_cover_the_model():
    model = nn.Sequential(
        ob.QuantConv2d(3, 8, 3, kernel_quantizer="ste_sign"),  # binary kernel + real bias
        nn.BatchNorm2d(8),
        ob.QuantConv2d(8, 8, 3, kernel_quantizer="noop"),  # Bop-style tag
        ob.QuantConv2d(8, 8, 3, kernel_quantizer="ste_tern"),  # 2-bit: not binary
        ob.QuantConv2d(8, 8, 3),  # real
    )
    binary = list(ob.binary_parameters(model))
    real = list(ob.real_parameters(model))
    assert [id(p) for p in binary] == [id(model[0].weight), id(model[2].weight)]
    ids = {id(p) for p in binary} | {id(p) for p in real}
    assert len(binary) + len(real) == len(ids) == len(list(model.parameters()))


def test_shared_layer_counted_once():
    shared = ob.QuantLinear(4, 4, kernel_quantizer="ste_sign")
    model = nn.Sequential(shared, shared)
    assert len(list(ob.binary_parameters(model))) == 1


def test_bad_quantizer_and_constraint_names():
    with pytest.raises(ValueError, match="unknown quantizer 'sgn'.*ste_sign"):
        ob.QuantLinear(2, 2, kernel_quantizer="sgn")
    with pytest.raises(ValueError, match="unknown constraint 'clip'.*weight_clip"):
        ob.QuantLinear(2, 2, kernel_constraint="clip")


def test_repr_names_quantizers_and_padding():
    text = repr(
        ob.QuantConv2d(2, 2, 3, padding=1, input_quantizer="ste_sign", pad_values=1.0, kernel_constraint="weight_clip")
    )
    assert "SteSign" in text and "pad_values=1.0" in text and "WeightClip" in text


def test_is_binary_for_layers_and_their_parameters():
    import copy

    binary = ob.QuantConv2d(2, 4, 3, kernel_quantizer="ste_sign", bias=True)
    ternary = ob.QuantLinear(4, 4, kernel_quantizer="ste_tern")
    plain = ob.QuantLinear(4, 4)
    model = nn.Sequential(binary, nn.BatchNorm2d(4), nn.Flatten(), ternary, plain)
    assert [ob.is_binary(m) for m in model] == [True, False, False, False, False]
    flags = {name: ob.is_binary(p) for name, p in model.named_parameters()}
    assert [n for n, f in flags.items() if f] == ["0.weight"]
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # copies keep the mark
        assert [n for n, p in clone.named_parameters() if ob.is_binary(p)] == ["0.weight"]
        assert clone[0].weight.__dict__["_onebit_quant_layer"] is clone[0]
    case = ob.optim.CaseOptimizer(
        (ob.is_binary, lambda ps: ob.optim.Bop(ps)), default=lambda ps: torch.optim.Adam(ps), params=model.parameters()
    )
    assert case.optimizers[0].param_groups[0]["params"] == [binary.weight]
    binary.kernel_quantizer = None  # follows the layer's quantizer as it is now
    assert not ob.is_binary(binary.weight) and not ob.is_binary(torch.ones(2))
