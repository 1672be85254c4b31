"""Bad arguments to the public API: every entry point refuses them up front with a ValueError or
TypeError of one line naming the argument and what is allowed (never torch's or numpy's message
from deep inside, never a silently accepted NaN). docs/reliability.md counts these cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import onebit
from onebit import constraints, quantizers
from onebit.data import DataError, Loader, load_dataset
from onebit.engine import EngineError, export, load
from onebit.kernels import bits
from onebit.layers import QuantConv1d, QuantConv2d, QuantConvTranspose2d, QuantDepthwiseConv2d, QuantLinear
from onebit.optim import Bop, Bop2ndOrder, CaseOptimizer
from onebit.training.config import FIELDS, ConfigError, Range, parse_value

NAN, INF = math.nan, math.inf


def w():
    return [nn.Parameter(torch.ones(3))]


def refused(fn, kind, match):
    """``fn()`` raises ``kind`` whose one-line message matches ``match``."""
    with pytest.raises(kind, match=match) as info:
        fn()
    assert "\n" not in str(info.value), str(info.value)
    return info.value


# ------------------------------------------------------------------------------------ layers

LAYERS = [
    (lambda: QuantLinear(0, 4), "in_features=0 must be an int >= 1"),
    (lambda: QuantLinear(-3, 4), "in_features=-3"),
    (lambda: QuantLinear(4, 2.5), "out_features=2.5"),
    (lambda: QuantLinear("4", 4), "in_features='4'"),
    (lambda: QuantLinear(4, 4, input_quantizer="sgn"), "unknown quantizer 'sgn'"),
    (lambda: QuantLinear(4, 4, kernel_constraint="clip"), "unknown constraint 'clip'"),
    (lambda: QuantLinear(4, 4, kernel_quantizer=3), "cannot use 3 as a quantizer"),
    (lambda: QuantConv2d(0, 8, 3), "in_channels=0"),
    (lambda: QuantConv2d(3, -8, 3), "out_channels=-8"),
    (lambda: QuantConv2d(3, 8, 0), "kernel_size=0"),
    (lambda: QuantConv2d(3, 8, (3, 3, 3)), r"kernel_size=\(3, 3, 3\).*tuple of 2"),
    (lambda: QuantConv2d(3, 8, 3, stride=0), "stride=0"),
    (lambda: QuantConv2d(3, 8, 3, dilation=-1), "dilation=-1"),
    (lambda: QuantConv2d(3, 8, 3, padding=-1), "padding=-1"),
    (lambda: QuantConv2d(3, 8, 3, padding="full"), "padding='full'"),
    (lambda: QuantConv2d(3, 8, 3, groups=0), "groups=0"),
    (lambda: QuantConv2d(3, 8, 3, pad_values=NAN), "pad_values=nan must be a finite number"),
    (lambda: QuantConv2d(3, 8, 3, pad_values="one"), "pad_values='one'"),
    (lambda: QuantConv2d(3, 8, 3, padding=1, padding_mode="reflect", pad_values=1.0), "needs padding_mode='zeros'"),
    (lambda: QuantConv1d(3, 8, 3, stride=(1, 1)), "stride=.*tuple of 1"),
    (lambda: QuantDepthwiseConv2d(3, 3, depth_multiplier=0), "depth_multiplier=0"),
    (lambda: QuantConvTranspose2d(3, 8, 0), "kernel_size=0"),
]


@pytest.mark.parametrize("fn, match", LAYERS)
def test_layers(fn, match):
    refused(fn, ValueError, match)


# ------------------------------------------------------------------------- quantizers, constraints

QUANTIZERS = [
    (lambda: quantizers.get("sgn"), "unknown quantizer 'sgn'; valid names: .*ste_sign"),
    (lambda: quantizers.get(1.5), "cannot use 1.5 as a quantizer"),
    (lambda: quantizers.SteSign(clip_value=-1.0), "SteSign clip_value=-1.0 must be a finite number > 0 or None"),
    (lambda: quantizers.SteSign(clip_value=NAN), "clip_value=nan"),
    (lambda: quantizers.SteSign(clip_value="1"), "clip_value='1'"),
    (lambda: quantizers.SwishSign(beta=0), "SwishSign beta=0"),
    (lambda: quantizers.SwishSign(beta=INF), "beta=inf"),
    (lambda: quantizers.MagnitudeAwareSign(clip_value=0), "clip_value=0"),
    (lambda: quantizers.SteHeaviside(clip_value=-INF), "clip_value=-inf"),
    (lambda: quantizers.SteTern(threshold_value=-0.1), "threshold_value=-0.1 must be a finite number >= 0"),
    (lambda: quantizers.SteTern(clip_value=NAN), "clip_value=nan"),
    (lambda: quantizers.DoReFa(k_bit=0), r"k_bit=0 must be an int in \[1, 32\]"),
    (lambda: quantizers.DoReFa(k_bit=2.5), "k_bit=2.5"),
    (lambda: quantizers.DoReFa(mode="both"), "mode='both'"),
    (lambda: quantizers.NoOp(precision=0), "precision=0"),
    (lambda: constraints.get("clip"), "unknown constraint 'clip'; valid names: weight_clip"),
    (lambda: constraints.get(3), "cannot use 3 as a constraint"),
    (lambda: constraints.WeightClip(0), "clip_value=0 must be > 0"),
    (lambda: constraints.WeightClip(NAN), "clip_value=nan"),
    (lambda: constraints.WeightClip("1"), "clip_value='1'"),
]


@pytest.mark.parametrize("fn, match", QUANTIZERS)
def test_quantizers_and_constraints(fn, match):
    refused(fn, ValueError, match)


# ------------------------------------------------------------------------------------ optimizers

OPTIMIZERS = [
    (lambda: Bop(w(), gamma=0.0), ValueError, "Invalid gamma: 0.0; it must lie in"),
    (lambda: Bop(w(), gamma=NAN), ValueError, "Invalid gamma: nan"),
    (lambda: Bop(w(), gamma="fast"), ValueError, "Invalid gamma: 'fast'"),
    (lambda: Bop(w(), gamma=None), ValueError, "Invalid gamma: None"),
    (lambda: Bop(w(), threshold=NAN), ValueError, "Invalid threshold: nan"),
    (lambda: Bop(w(), threshold=INF), ValueError, "Invalid threshold: inf"),
    (lambda: Bop(w(), threshold=-1.0), ValueError, "Invalid threshold: -1.0"),
    (lambda: Bop([]), ValueError, "empty parameter list"),
    (lambda: Bop(torch.ones(3)), TypeError, "params=Tensor: expected an iterable"),
    (lambda: Bop(5), TypeError, "params=int: expected an iterable"),
    (lambda: Bop2ndOrder(w(), sigma=NAN), ValueError, "Invalid sigma: nan"),
    (lambda: Bop2ndOrder(w(), eps=NAN), ValueError, "Invalid eps: nan"),
    (lambda: Bop2ndOrder(w(), eps=-1.0), ValueError, "Invalid eps: -1.0"),
    (lambda: Bop2ndOrder(w(), gamma=2.0), ValueError, "Invalid gamma: 2.0"),
    (lambda: CaseOptimizer(), ValueError, "at least one optimizer"),
    (lambda: CaseOptimizer("adam"), TypeError, "'adam' is not a torch.optim.Optimizer"),
    (lambda: CaseOptimizer(Bop(w()), default="adam"), TypeError, "default='adam' must be an Optimizer"),
]


@pytest.mark.parametrize("fn, kind, match", OPTIMIZERS)
def test_optimizers(fn, kind, match):
    refused(fn, kind, match)


def test_setting_a_nan_gamma_is_refused():
    opt = Bop(w())
    refused(lambda: setattr(opt, "gamma", NAN), ValueError, "Invalid gamma: nan")
    refused(lambda: setattr(opt, "threshold", NAN), ValueError, "Invalid threshold: nan")


# ------------------------------------------------------------------------------------ models

MODELS = [
    (lambda: onebit.create_model("resnet50"), "unknown model 'resnet50'; available: "),
    (lambda: onebit.create_model("small_cnn", num_classes=0), "num_classes=0 must be an int >= 1"),
    (lambda: onebit.create_model("small_cnn", num_classes="10"), "num_classes='10'"),
    (lambda: onebit.create_model("small_cnn", in_channels=-1), "in_channels=-1"),
    (lambda: onebit.create_model("small_cnn", image_size=8), "small_cnn image_size=8 is too small"),
    (lambda: onebit.create_model("small_cnn", image_size=28.0), "image_size=28.0"),
    (lambda: onebit.create_model("binarynet", image_size=9), "binarynet needs image_size >= 10"),
    (lambda: onebit.create_model("quicknet", image_size=32), "takes no argument 'image_size'"),
    (lambda: onebit.models.model_info("nope"), "unknown model 'nope'"),
]


@pytest.mark.parametrize("fn, match", MODELS)
def test_models(fn, match):
    refused(fn, ValueError, match)


# ------------------------------------------------------------------------------------ summary


def tiny_cnn():
    return nn.Sequential(QuantConv2d(1, 4, 3), nn.Flatten(), QuantLinear(4 * 6 * 6, 2))


SUMMARY = [
    (
        lambda: onebit.summary(tiny_cnn(), (1, 1, 9, 9), verbose=False),
        ValueError,
        r"input_size=\(1, 1, 9, 9\): the model does not run on it",
    ),
    (lambda: onebit.summary(tiny_cnn(), (1, 3, 8, 8), verbose=False), ValueError, "the model does not run on it"),
    (lambda: onebit.summary(tiny_cnn(), (3, 8, 8), verbose=False), ValueError, "does not run on it"),  # C,H,W
    (lambda: onebit.summary(tiny_cnn(), 8, verbose=False), ValueError, "input_size=8 must be a tuple of positive ints"),
    (lambda: onebit.summary(tiny_cnn(), (1, 1, 8, -8), verbose=False), ValueError, "input_size=.*positive ints"),
    (
        lambda: onebit.summary(tiny_cnn(), input_data="x", verbose=False),
        TypeError,
        "input_data='x' must be a torch.Tensor",
    ),
    (lambda: onebit.summary("small_cnn", (1, 1, 28, 28)), TypeError, "expected a torch.nn.Module, got str"),
]


@pytest.mark.parametrize("fn, kind, match", SUMMARY)
def test_summary(fn, kind, match):
    refused(fn, kind, match)


def test_summary_on_the_right_size_still_works():
    assert onebit.summary(tiny_cnn(), (1, 1, 8, 8), verbose=False).name == "Sequential"
    assert onebit.summary(tiny_cnn(), (1, 8, 8), verbose=False).name == "Sequential"  # C,H,W: batch of 1


# ------------------------------------------------------------------------------------ engine


@pytest.fixture(scope="module")
def engine_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "m.obe"
    model = nn.Sequential(QuantLinear(8, 4, input_quantizer="ste_sign", kernel_quantizer="ste_sign"))
    export(model, path, (1, 8))
    return path


@pytest.mark.parametrize(
    "size, match",
    [
        ((1, 9), r"input_size=\(1, 9\): Sequential does not run on it"),
        ((8,), "must be .* of positive ints"),
        ((1, 0), "must be .* of positive ints"),
        ((1, 8.5), "must be .* of positive ints"),
        ("1,8", "must be .* of positive ints"),
        (None, "must be .* of positive ints"),
    ],
)
def test_export_refuses_bad_input_sizes(tmp_path, size, match):
    model = nn.Sequential(QuantLinear(8, 4, input_quantizer="ste_sign", kernel_quantizer="ste_sign"))
    refused(lambda: export(model, tmp_path / "m.obe", size), EngineError, match)
    assert not (tmp_path / "m.obe").exists()


@pytest.mark.parametrize(
    "x, match",
    [
        (np.zeros((2, 9), np.float32), r"input shape \(2, 9\) does not match the exported shape \('N', 8\)"),
        (np.zeros((8,), np.float32), r"input shape \(8,\)"),
        (np.zeros((0, 8), np.float32), r"N >= 1"),
        (np.array([["a"] * 8]), "real-valued numeric array.*got dtype <U1"),
        (np.zeros((1, 8), np.complex64), "got dtype complex64"),
        (None, "got dtype object"),
        ([[1.0] * 8, [1.0] * 7], "input: expected a numeric array"),
    ],
)
def test_runtime_refuses_bad_inputs(engine_file, x, match):
    rt = load(engine_file, backend="numpy")
    refused(lambda: rt(x), EngineError, match)
    assert rt(np.zeros((3, 8), np.int64)).shape == (3, 4)  # integers are numbers: converted


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(backend="gpu"), "backend='gpu' is not one of"),
        (dict(num_threads=0), "num_threads=0 must be None or an int >= 1"),
        (dict(num_threads="2"), "num_threads='2'"),
    ],
)
def test_load_refuses_bad_arguments(engine_file, kwargs, match):
    refused(lambda: load(engine_file, **kwargs), EngineError, match)


# ------------------------------------------------------------------------ engine files (damaged)


def _damage(blob: bytes, how: str) -> bytes:
    """The engine file ``blob`` damaged in one way (``DAMAGES``)."""
    head_len = int(np.frombuffer(blob, np.uint64, 1, 8)[0])
    header = json.loads(blob[16 : 16 + head_len])
    data = blob[16 + head_len + (-(16 + head_len) % 8) :]

    def rebuild(h):
        text = json.dumps(h).encode()
        head = bits.MAGIC + np.uint64(len(text)).tobytes() + text
        return head + b"\x00" * (-len(head) % 8) + data

    if how == "empty":
        return b""
    if how == "magic only":
        return bits.MAGIC
    if how == "truncated data":
        return blob[: len(blob) - 8]
    if how == "truncated header":
        return blob[: 16 + head_len // 2]
    if how == "huge header length":
        return bits.MAGIC + np.uint64(2**60).tobytes() + blob[16:]
    if how == "header not json":
        return bits.MAGIC + np.uint64(4).tobytes() + b"{{{{" + blob[20:]
    if how == "header a list":
        return rebuild([1, 2])
    if how == "other format":
        return rebuild({**header, "format": "tflite"})
    if how == "version 99":
        return rebuild({**header, "version": 99})
    if how == "no array table":
        return rebuild({k: v for k, v in header.items() if k != "arrays"})
    if how == "bad dtype":
        return rebuild({**header, "arrays": {k: {**v, "dtype": "zz"} for k, v in header["arrays"].items()}})
    if how == "negative shape":
        return rebuild({**header, "arrays": {k: {**v, "shape": [-1, 2]} for k, v in header["arrays"].items()}})
    if how == "no arrays":
        return rebuild({**header, "arrays": {}})
    if how == "unknown op":
        return rebuild({**header, "ops": [{**header["ops"][0], "op": "teleport"}] + header["ops"][1:]})
    if how == "dangling input":
        return rebuild({**header, "ops": [{**header["ops"][0], "in": ["nowhere"]}] + header["ops"][1:]})
    if how == "no output":
        return rebuild({**header, "output": "nowhere"})
    if how == "no input shape":
        return rebuild({**header, "input": {"name": "input"}})
    if how == "missing attribute":
        ops = [{k: v for k, v in op.items() if k not in ("in_features", "mode", "channels")} for op in header["ops"]]
        return rebuild({**header, "ops": ops})
    raise AssertionError(how)


DAMAGES = {
    "empty": "not an onebit engine file",
    "magic only": "not an onebit engine file",
    "truncated data": "is truncated",
    "truncated header": "is truncated",
    "huge header length": "is truncated",
    "header not json": "corrupt engine header",
    "header a list": "corrupt engine header",
    "other format": "has format 'tflite'",
    "version 99": "format version 99; this onebit reads version 1",
    "no array table": "no table of arrays",
    "bad dtype": "corrupt entry for array",
    "negative shape": "corrupt entry for array",
    "no arrays": "missing or malformed arrays",
    "unknown op": "unknown kind 'teleport'",
    "dangling input": "reads 'nowhere' before it is computed",
    "no output": "output 'nowhere' is never computed",
    "no input shape": "corrupt graph",
    "missing attribute": "cannot run",
}


@pytest.mark.parametrize("how", list(DAMAGES))
def test_damaged_engine_files(engine_file, tmp_path, how):
    path = tmp_path / "bad.obe"
    path.write_bytes(_damage(engine_file.read_bytes(), how))

    def run():
        rt = load(path, backend="numpy")
        rt(np.zeros((1, 8), np.float32))

    err = refused(run, EngineError, DAMAGES[how])
    assert str(path) in str(err) or how in ("missing attribute",)


def test_engine_file_that_is_a_folder_or_missing(tmp_path):
    refused(lambda: load(tmp_path), EngineError, "is a folder, not an engine file")
    refused(lambda: load(tmp_path / "none.obe"), EngineError, "no engine file at")


# ------------------------------------------------------------------------------------ data API

DATA = [
    (lambda: load_dataset("mnist5k", image_size=-5), "image_size=-5 must be an int >= 0"),
    (lambda: load_dataset("mnist5k", pad=-1), "pad=-1 must be an int >= 0"),
    (lambda: load_dataset("mnist5k", augment="mixup"), "augment='mixup'; allowed: auto, none"),
    (lambda: load_dataset("svhn"), "unknown dataset 'svhn'"),
    (lambda: Loader(list(range(10)), 0, train=False), "batch_size=0 must be an int >= 1"),
    (lambda: Loader(list(range(10)), 2.5, train=False), "batch_size=2.5"),
    (lambda: Loader(list(range(10)), 16, train=True), r"batch_size=16 is larger than the training set \(10 examples\)"),
    (lambda: Loader([], 1, train=True), r"the training set is empty"),
    (lambda: Loader(list(range(10)), 3, train=True, world_size=2), "must divide by the number of processes"),
]


@pytest.mark.parametrize("fn, match", DATA)
def test_data_api(fn, match):
    refused(fn, DataError, match)


# ------------------------------------------------------------------------ config (library API)


def _bad_values(name):
    """Values of the key's own type that no data set or optimizer can use, and ones of no type."""
    field = FIELDS[name]
    kind = type(field.default)
    if kind is bool:
        return ["maybe", "2", 1]
    if kind is str:
        words = [w for w in ("definitely-not-allowed", "", " ") if field.choices or (field.check and field.check(w))]
        return words[:1] + [3]
    check = field.check if isinstance(field.check, Range) else Range(0)
    out = ["abc", [1]]
    if kind is float:
        out += ["nan", "inf", "-inf", NAN]
    else:
        out += ["1.5", "nan", str(2**64)]
    below = check.lo - 1 if not check.lo_open else check.lo
    out.append(str(kind(below)) if kind(below) not in check.also else str(kind(below - 1)))
    if check.hi != math.inf:
        out.append(str(kind(check.hi + 1)) if check.hi_open is False else str(kind(check.hi)))
    return out


CONFIG_CASES = [(name, bad) for name in FIELDS for bad in _bad_values(name)]


@pytest.mark.parametrize("name, bad", CONFIG_CASES, ids=[f"{n}={b!r}" for n, b in CONFIG_CASES])
def test_every_config_key_refuses_what_no_run_can_use(name, bad):
    refused(lambda: parse_value(name, bad), ConfigError, rf"^bad value {name}=.*(expected|must be|allowed)")


def test_every_config_key_has_a_range_or_allowed_values():
    free = {"data_dir"}  # any path
    for name, field in FIELDS.items():
        if isinstance(field.default, (int, float)) and not isinstance(field.default, bool):
            check = field.check or Range(0)
            assert check(field.default) is None, name
        elif isinstance(field.default, str) and name not in free:
            assert field.choices or field.check, f"{name}: a string key without choices or check"
