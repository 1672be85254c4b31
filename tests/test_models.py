"""The zoo: every registered model builds, runs forward and backward, reports its summary, trains
with Bop on its binary kernels, and has Larq Zoo's counts."""

import pytest
import torch

import onebit as ob
from onebit.optim import Bop, CaseOptimizer

# name -> (count input size, small training input size, extra kwargs of the small model)
SETUP = {
    "small_cnn": ((1, 1, 28, 28), (2, 1, 28, 28), {}),
    "binarynet": ((1, 3, 32, 32), (2, 3, 32, 32), {}),
    "binary_alexnet": ((1, 3, 224, 224), (2, 3, 64, 64), {"image_size": 64}),
    "xnornet": ((1, 3, 224, 224), (2, 3, 64, 64), {"image_size": 64}),
    "dorefanet": ((1, 3, 224, 224), (2, 3, 64, 64), {"image_size": 64}),
    "birealnet18": ((1, 3, 224, 224), (2, 3, 64, 64), {}),
    "binary_resnet_e18": ((1, 3, 224, 224), (2, 3, 64, 64), {}),
    "binary_densenet28": ((1, 3, 224, 224), (2, 3, 64, 64), {}),
    "meliusnet22": ((1, 3, 224, 224), (2, 3, 64, 64), {}),
    "real_to_binary_net": ((1, 3, 224, 224), (2, 3, 64, 64), {}),
    "quicknet_small": ((1, 3, 224, 224), (2, 3, 64, 64), {}),
    "quicknet": ((1, 3, 224, 224), (2, 3, 64, 64), {}),
    "quicknet_large": ((1, 3, 224, 224), (2, 3, 64, 64), {}),
}

# Counts at the count input size (ImageNet models: 224x224, 1000 classes).
# "params": onebit/Larq summary total (batch norm = 2 values per channel);
# "keras": Keras' count_params() (= torch parameters + batch-norm running statistics), the
# number Larq Zoo's docstrings report for most models. Larq Zoo's figure is marked in comments.
COUNTS = {
    "binarynet": dict(binary=10_352_000, binary_macs=510_961_664, params=10_359_700),
    "small_cnn": dict(binary=93_088, binary_macs=2_599_552, params=93_556),  # the study code's layout
    "binary_alexnet": dict(binary=61_827_776, binary_macs=768_512_000, keras=61_859_192),  # zoo
    "xnornet": dict(binary=58_236_928, binary_macs=1_025_744_896, keras=62_396_768),  # zoo
    "dorefanet": dict(binary=58_236_928, binary_macs=0, keras=62_403_912),  # zoo
    "birealnet18": dict(binary=10_985_472, binary_macs=1_676_279_808, keras=11_699_112),  # zoo
    "binary_resnet_e18": dict(binary=10_985_472, binary_macs=1_676_279_808, keras=11_699_368),  # zoo
    "binary_densenet28": dict(binary=4_202_496, binary_macs=3_587_383_296, keras=5_150_504),  # zoo
    "meliusnet22": dict(binary=6_119_424, binary_macs=4_624_220_160, params=6_944_584),  # zoo
    "real_to_binary_net": dict(binary=10_985_472, binary_macs=1_676_279_808, keras=11_995_624),  # zoo
    "quicknet_small": dict(binary=11_980_800, binary_macs=1_156_055_040, params=12_655_688),  # zoo
    "quicknet": dict(binary=12_533_760, binary_macs=1_849_688_064, params=13_234_088),  # zoo
    "quicknet_large": dict(binary=22_634_496, binary_macs=3_699_376_128, params=23_342_248),  # zoo
}


def keras_param_count(model) -> int:
    stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in model.parameters()) + stats


def test_registry_lists_every_model():
    assert ob.list_models() == sorted(SETUP)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*birealnet18"):
        ob.create_model("resnet9000")
    with pytest.raises(ValueError, match=r"unknown model 'birealnet' \(did you mean 'birealnet18'\?\)"):
        ob.create_model("birealnet")


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("quick*", ["quicknet", "quicknet_large", "quicknet_small"]),
        ("*resnet*", ["binary_resnet_e18"]),
        ("binary?alexnet", ["binary_alexnet"]),
        ("nothing*", []),
        ("*", sorted(SETUP)),
    ],
)
def test_list_models_takes_a_pattern(pattern, expected):
    assert ob.list_models(pattern) == expected


def test_pretrained_is_answered_in_one_line():
    with pytest.raises(ValueError, match="ships no pretrained weights.*weights=") as info:
        ob.create_model("quicknet", pretrained=True)
    assert "\n" not in str(info.value)
    assert ob.create_model("small_cnn", pretrained=False).name == "small_cnn"


@pytest.mark.parametrize("kwargs, size", [({}, (1, 28, 28)), ({"in_channels": 3, "image_size": 32}, (3, 32, 32))])
def test_models_know_their_input_size(kwargs, size):
    model = ob.create_model("small_cnn", **kwargs)
    assert model.default_input_size == size
    assert ob.summary(model, print_fn=None).total_macs == ob.summary(model, (1, *size), print_fn=None).total_macs


@pytest.mark.parametrize("name", sorted(SETUP))
def test_model_counts_and_summary(name):
    """Counts agree with Larq Zoo's architectures; the summary reports them."""
    count_size, _, _ = SETUP[name]
    model = ob.create_model(name)
    s = ob.summary(model, count_size, verbose=False)
    expected = COUNTS[name]
    assert s.binary_params == expected["binary"]
    assert s.binary_macs == expected["binary_macs"]
    assert s.binary_params == sum(p.numel() for p in ob.binary_parameters(model))
    if "params" in expected:
        assert s.total_params == expected["params"]
    if "keras" in expected:
        assert keras_param_count(model) == expected["keras"]
    assert str(s).startswith(f"{name} summary\n") and "Total params" in str(s)
    doc = ob.models.model_info(name).builder.__doc__
    assert doc and "%" in doc, f"{name} needs a docstring with its accuracy"


@pytest.mark.parametrize("name", sorted(SETUP))
def test_model_forward_backward_and_bop(name):
    """Forward and backward on a small batch; a Bop + Adam step sets the binary kernels to
    exactly +/-1 (Bop binarises real-valued weights on its first step) and the loss stays finite."""
    torch.manual_seed(0)
    _, small_size, kwargs = SETUP[name]
    model = ob.create_model(name, num_classes=10, **kwargs)
    binary = list(ob.binary_parameters(model))
    assert binary, f"{name} has no binary kernels"
    optimizer = CaseOptimizer(
        Bop(binary, gamma=1e-3, threshold=1e-8, fused=False),  # eager: no compile per model
        torch.optim.Adam(ob.real_parameters(model), lr=1e-3),
    )
    x = torch.randn(small_size)
    y = torch.randint(0, 10, (small_size[0],))
    model.train()
    logits = model(x)
    assert logits.shape == (small_size[0], 10)
    loss = torch.nn.functional.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in binary)
    optimizer.step()
    for p in binary:
        assert torch.all(p.abs() == 1), f"{name}: a binary kernel is not +/-1 after Bop's step"
    with torch.no_grad():
        assert torch.isfinite(torch.nn.functional.cross_entropy(model(x), y))


@pytest.mark.parametrize("name, smallest", [("binary_alexnet", 57), ("xnornet", 57), ("dorefanet", 44)])
def test_too_small_image_size_is_refused(name, smallest):
    ob.create_model(name, num_classes=2, image_size=smallest)
    with pytest.raises(ValueError, match=f"image_size >= {smallest}.*got {smallest - 1}"):
        ob.create_model(name, image_size=smallest - 1)


@pytest.mark.parametrize("size", [5, 6, 7, 8])
def test_same_pooling_matches_tensorflow(size):
    """TF "same": ceil(n / stride) outputs, the odd padded pixel at the end, max pads with -inf,
    average ignores the padding."""
    from onebit.models.common import Pool2dSame

    x = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size) - 10.0
    out = -(-size // 2)
    mx = Pool2dSame("max", 3, 2)(x)
    av = Pool2dSame("avg", 2, 2)(x)
    assert mx.shape[-2:] == av.shape[-2:] == (out, out)
    total = max((out - 1) * 2 + 3 - size, 0)
    before = total // 2
    # top-left window of the max pool covers rows/cols [-before, 3 - before)
    assert mx[0, 0, 0, 0] == x[0, 0, : 3 - before, : 3 - before].max()
    if size % 2:  # the last average window holds one real pixel
        assert av[0, 0, -1, -1] == x[0, 0, -1, -1]
    assert av[0, 0, 0, 0] == x[0, 0, :2, :2].mean()


def test_bad_initialiser_and_batch_norm_arguments():
    from onebit.models.common import Pool2dSame, batch_norm, init_kernel

    with pytest.raises(ValueError, match="unknown initialiser 'lecun'"):
        init_kernel(torch.nn.Linear(2, 2), "lecun")
    with pytest.raises(ValueError, match="center=False"):
        batch_norm(4, center=False)
    with pytest.raises(ValueError, match="'sum'"):
        Pool2dSame("sum", 2, 2)


@pytest.mark.parametrize("name", sorted(SETUP))
def test_model_info_gives_the_builders_defaults(name):
    """The registry's metadata: the default model takes inputs of ``input_size`` and gives
    ``num_classes`` logits; a keyword the builder does not take is one clear error."""
    info = ob.models.model_info(name)
    assert info.name == name and info.dataset in ("mnist", "cifar10", "imagenet") and info.description
    assert info.accepts("num_classes") and not info.accepts("no_such_keyword")
    with pytest.raises(
        ValueError, match=f"model '{name}' takes no argument 'no_such_keyword'; it takes: .*num_classes"
    ):
        ob.create_model(name, no_such_keyword=1)
    if info.dataset == "imagenet":
        return  # building 224x224 ImageNet models is covered by the count test above
    model = ob.create_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *info.input_size)).shape == (2, info.num_classes)


def test_model_info_of_an_unknown_model_lists_the_zoo():
    with pytest.raises(ValueError, match="unknown model 'resnet50'; available: .*binarynet"):
        ob.models.model_info("resnet50")


def test_meliusnet22_batch_norm_is_larq_zoos():
    """Larq Zoo's MeliusNet normalises with Keras momentum 0.9 and epsilon 1e-5 (not Keras' 1e-3
    default): with 1e-3 Larq Zoo's weights give other logits."""
    norms = [m for m in ob.create_model("meliusnet22").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 41  # stem 3, two per block (17 blocks), transitions 3, head 1
    assert all(m.eps == 1e-5 and m.momentum == pytest.approx(0.1) for m in norms)
