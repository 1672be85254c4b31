"""onebit.summary: Larq's counting rules (larq/models_test.py) and a pinned text snapshot."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import onebit as ob
from onebit.model_summary import ModelSummary, memory_as_readable_str, number_as_readable_str
from onebit.models.common import batch_norm


def larq_profile_model() -> nn.Sequential:
    """Larq's summary test model in PyTorch (input 1x64x64). Larq's QuantSeparableConv2D is a
    depthwise + pointwise pair here: the rows split, the totals are Larq's."""
    dense = nn.Linear(3872, 10)
    dense.requires_grad_(False)  # Larq: Dense(10, trainable=False)
    return nn.Sequential(
        OrderedDict(
            quant_conv2d=ob.QuantConv2d(1, 32, 3, padding="same", kernel_quantizer="ste_sign"),
            max_pooling2d=nn.MaxPool2d(2),
            quant_depthwise_conv2d=ob.QuantDepthwiseConv2d(
                32,
                3,
                stride=3,
                padding="same",
                bias=False,
                pad_values=1.0,
                input_quantizer="ste_tern",
                kernel_quantizer="ste_tern",
            ),
            batch_normalization=batch_norm(32, scale=False),
            separable_depthwise=ob.QuantDepthwiseConv2d(
                32,
                3,
                padding="same",
                bias=False,
                input_quantizer="ste_sign",
                kernel_quantizer="ste_sign",
            ),
            separable_pointwise=ob.QuantConv2d(32, 32, 1, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
            flatten=nn.Flatten(),
            dense=dense,
        )
    )


SNAPSHOT = """\
sequential summary
+------------------------+----------------------+-------------------+------------------+-------------+-------------+--------------+-------------+------------+------------+-------------+
| Layer                  | Type                 | Input prec. (bit) | Outputs          | # 1-bit x 1 | # 2-bit x 1 | # 32-bit x 1 | Memory (kB) | 1-bit MACs | 2-bit MACs | 32-bit MACs |
+------------------------+----------------------+-------------------+------------------+-------------+-------------+--------------+-------------+------------+------------+-------------+
| quant_conv2d           | QuantConv2d          | -                 | (-1, 32, 64, 64) |         288 |           0 |           32 |        0.16 |          0 |          0 |   1,179,648 |
| max_pooling2d          | MaxPool2d            | -                 | (-1, 32, 32, 32) |           0 |           0 |            0 |        0.00 |          0 |          0 |           0 |
| quant_depthwise_conv2d | QuantDepthwiseConv2d | 2                 | (-1, 32, 11, 11) |           0 |         288 |            0 |        0.07 |          0 |     34,848 |           0 |
| batch_normalization    | BatchNorm2d          | -                 | (-1, 32, 11, 11) |           0 |           0 |           64 |        0.25 |          0 |          0 |           0 |
| separable_depthwise    | QuantDepthwiseConv2d | 1                 | (-1, 32, 11, 11) |         288 |           0 |            0 |        0.04 |     34,848 |          0 |           0 |
| separable_pointwise    | QuantConv2d          | 1                 | (-1, 32, 11, 11) |       1,024 |           0 |           32 |        0.25 |    123,904 |          0 |           0 |
| flatten                | Flatten              | -                 | (-1, 3872)       |           0 |           0 |            0 |        0.00 |          0 |          0 |           0 |
| dense                  | Linear               | -                 | (-1, 10)         |           0 |           0 |       38,730 |      151.29 |          0 |          0 |      38,720 |
+------------------------+----------------------+-------------------+------------------+-------------+-------------+--------------+-------------+------------+------------+-------------+
| Total                  |                      |                   |                  |       1,600 |         288 |       38,858 |      152.05 |    158,752 |     34,848 |   1,218,368 |
+------------------------+----------------------+-------------------+------------------+-------------+-------------+--------------+-------------+------------+------------+-------------+
sequential stats
+-----------------------------------+------------+
| Statistic                         |      Value |
+-----------------------------------+------------+
| Total params                      |     40.7 k |
| Trainable params                  |     1.95 k |
| Non-trainable params              |     38.8 k |
| Model size                        | 152.05 KiB |
| Model size (8-bit FP weights)     |  38.21 KiB |
| Float-32 Equivalent               | 159.16 KiB |
| Compression Ratio of Memory       |       0.96 |
| Number of MACs                    |     1.41 M |
| Ratio of MACs that are binarized  |     0.1124 |
| Ratio of MACs that are ternarized |     0.0247 |
+-----------------------------------+------------+"""


@pytest.fixture
def profile():
    return ob.summary(larq_profile_model(), (1, 1, 64, 64), verbose=False, name="sequential")


def test_summary_snapshot(profile):
    assert str(profile) == SNAPSHOT


def test_totals_equal_larq_snapshot(profile):
    """The numbers of Larq's `test_summary 1` snapshot."""
    assert profile.params_by_precision == {1: 1600, 2: 288, 32: 38858}
    assert profile.macs_by_precision == {1: 158752, 2: 34848, 32: 1218368}
    assert profile.total_params == 40746
    assert profile.trainable_params == 1952
    assert profile.non_trainable_params == 38794
    assert profile.memory_bits == 1600 + 2 * 288 + 32 * 38858
    assert memory_as_readable_str(profile.memory_bits) == "152.05 KiB"
    assert memory_as_readable_str(profile.int8_memory_bits) == "38.21 KiB"
    assert memory_as_readable_str(profile.float32_memory_bits) == "159.16 KiB"
    assert round(profile.compression_ratio, 2) == 0.96
    assert profile.total_macs == 1411968
    assert round(profile.binary_mac_ratio, 4) == 0.1124
    assert round(profile.ternary_mac_ratio, 4) == 0.0247


def test_layer_profile(profile):
    """Larq's test_layer_profile, per layer (the separable conv is two rows here)."""
    layers = profile.layers
    assert [layer.input_precision for layer in layers] == [None, None, 2, None, 1, 1, None, None]
    assert [layer.output_shape for layer in layers] == [
        (-1, 32, 64, 64),
        (-1, 32, 32, 32),
        (-1, 32, 11, 11),
        (-1, 32, 11, 11),
        (-1, 32, 11, 11),
        (-1, 32, 11, 11),
        (-1, 3872),
        (-1, 10),
    ]
    assert [layer.params for layer in layers] == [320, 0, 288, 64, 288, 1056, 0, 38730]
    assert [sorted(layer.params_by_precision) for layer in layers] == [
        [1, 32],
        [],
        [2],
        [32],
        [1],
        [1, 32],
        [],
        [32],
    ]
    assert [sorted(layer.macs_by_precision) for layer in layers] == [
        [32],
        [],
        [2],
        [],
        [1],
        [1],
        [],
        [32],
    ]
    conv = layers[0]
    assert conv.memory_bits == 1 * 288 + 32 * 32
    assert conv.int8_memory_bits == 1 * 288 + 8 * 32
    assert conv.macs == 288 * 64 * 64
    assert layers[-1].macs == 38720
    # 1-bit MACs only where the kernel is 1-bit and the input is 1-bit.
    assert sum(layer.macs_by_precision.get(1, 0) for layer in layers) == (288 + 1024) * 121


def test_layer_profile_1d():
    """Larq's test_layer_profile_1d: QuantConv1D(32, 3) on (64, 6) -> pool -> separable -> dense."""
    model = nn.Sequential(
        ob.QuantConv1d(6, 32, 3, padding="same", kernel_quantizer="ste_sign"),
        nn.MaxPool1d(2),
        ob.QuantConv1d(
            32, 32, 3, padding="same", groups=32, bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign"
        ),
        ob.QuantConv1d(32, 16, 1, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
        nn.Flatten(),
        nn.Linear(16 * 32, 10),
    )
    s = ob.summary(model, (1, 6, 64), verbose=False)
    assert [layer.output_shape for layer in s.layers][:4] == [
        (-1, 32, 64),
        (-1, 32, 32),
        (-1, 32, 32),
        (-1, 16, 32),
    ]
    assert s.layers[0].macs_by_precision == {32: 6 * 3 * 32 * 64}
    assert s.layers[2].macs_by_precision == {1: 32 * 3 * 32}
    assert s.layers[3].macs_by_precision == {1: 32 * 16 * 32}
    assert s.layers[5].macs_by_precision == {32: 512 * 10}


def test_batch_norm_counts_moving_statistics_only():
    """BN: 2 values per channel (moving mean/variance, non-trainable); beta/gamma fold away."""
    for bn in (nn.BatchNorm2d(8), batch_norm(8, scale=False), batch_norm(8, scale=False, center=False)):
        s = ob.summary(nn.Sequential(bn), (2, 8, 4, 4), verbose=False)
        assert s.params_by_precision == {32: 16}
        assert s.trainable_params == 0
    s = ob.summary(nn.Sequential(nn.BatchNorm2d(8, track_running_stats=False)), (2, 8, 4, 4), verbose=False)
    assert s.params_by_precision == {32: 16} and s.trainable_params == 16


def test_containers_are_not_double_counted():
    flat = larq_profile_model()
    nested = nn.Sequential(flat[0], flat[1], nn.Sequential(flat[2], nn.Sequential(flat[3], flat[4])), *flat[5:])
    a = ob.summary(flat, (1, 1, 64, 64), verbose=False)
    b = ob.summary(nested, (1, 1, 64, 64), verbose=False)
    assert len(b.layers) == len(a.layers)
    assert b.layers[2].name == "2.0" and b.layers[4].name == "2.1.1"
    for field in ("params_by_precision", "macs_by_precision", "memory_bits", "trainable_params"):
        assert getattr(a, field) == getattr(b, field)


def test_per_sample_macs_and_shared_layer():
    layer = ob.QuantLinear(4, 4, bias=False, input_quantizer="ste_sign", kernel_quantizer="ste_sign")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(self.layer(x))

    s = ob.summary(Twice(), (8, 4), verbose=False)
    assert s.params_by_precision == {1: 16}  # counted once
    assert s.macs_by_precision == {1: 32}  # per sample, both calls


def test_unknown_macs_are_question_marks():
    model = nn.Sequential(nn.Conv3d(2, 2, 1), nn.ReLU(), nn.ConvTranspose3d(2, 2, 3), nn.Flatten(), nn.Linear(490, 2))
    s = ob.summary(model, input_data=torch.zeros(1, 2, 3, 5, 5), verbose=False)
    assert s.layers[2].macs_by_precision is None
    assert s.layers[0].macs_by_precision is None and s.layers[1].macs_by_precision == {}
    assert s.total_macs == 980
    assert str(s).count("?") == 2  # one MAC column, two unknown rows


def test_mode_restored_and_no_grad():
    model = larq_profile_model().train()
    ob.summary(model, (1, 1, 64, 64), verbose=False)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    ob.summary(model, (1, 1, 64, 64), verbose=False)
    assert not model.training


def test_printing(capsys):
    lines = []
    s = ob.summary(larq_profile_model(), (1, 1, 64, 64), print_fn=lines.append, name="sequential")
    assert lines == [SNAPSHOT] and isinstance(s, ModelSummary)
    ob.summary(larq_profile_model(), (1, 1, 64, 64), name="sequential")
    assert capsys.readouterr().out == SNAPSHOT + "\n"
    ob.summary(larq_profile_model(), (1, 1, 64, 64), verbose=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("bad", [None, (3,), (1, 0, 4), (1, 2.5, 3), "1x28x28"])
def test_invalid_input_size(bad):
    with pytest.raises(ValueError, match="input_size"):
        ob.summary(nn.Linear(2, 2), bad, verbose=False)


def test_number_as_readable_str():
    assert number_as_readable_str(0) == "0"
    assert number_as_readable_str(999) == "999"
    assert number_as_readable_str(1952) == "1.95 k"
    assert number_as_readable_str(40746) == "40.7 k"
    assert number_as_readable_str(999_000) == "999 k"
    assert number_as_readable_str(999_999) == "1 M"
    assert number_as_readable_str(1_411_968) == "1.41 M"
    assert number_as_readable_str(2.5e9) == "2.5 B"
    assert number_as_readable_str(1e16) == "1.00E+16"


def test_memory_as_readable_str():
    """larq utils_test: 2^i bits for i = 0..43 read "0.12 B" ... "1,024.00 GiB"."""
    assert memory_as_readable_str(1) == "0.12 B"
    assert memory_as_readable_str(8) == "1.00 B"
    assert memory_as_readable_str(2**13) == "1.00 KiB"
    assert memory_as_readable_str(2**23) == "1.00 MiB"
    assert memory_as_readable_str(2**33) == "1.00 GiB"
    assert memory_as_readable_str(2**43) == "1,024.00 GiB"


@pytest.mark.parametrize(
    "model, with_batch, without",
    [
        (lambda: larq_profile_model(), (1, 1, 64, 64), (1, 64, 64)),  # C,H,W before a 2-D convolution
        (lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU()), (1, 2, 16), (2, 16)),  # C,L before a 1-D one
        (lambda: nn.Sequential(nn.Linear(8, 4)), (1, 8), (8,)),  # F before a dense layer
    ],
)
def test_input_size_with_or_without_the_batch_dimension(model, with_batch, without):
    a = str(ob.summary(model(), with_batch, print_fn=None, name="m"))
    b = str(ob.summary(model(), without, print_fn=None, name="m"))
    assert a == b


def test_a_zoo_model_needs_no_input_size():
    model = ob.create_model("binarynet")
    assert str(ob.summary(model, print_fn=None)) == str(ob.summary(model, (3, 32, 32), print_fn=None))
    with pytest.raises(ValueError, match="needs input_size"):
        ob.summary(nn.Linear(2, 2), print_fn=None)
