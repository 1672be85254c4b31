"""The training configuration: one flat table of keys with defaults, help and allowed values.

A recipe (``onebit/recipes/*.toml``) overrides some keys; the command line overrides any key with
``key=value``. Values are parsed by the type of the key's default; unknown keys, unparsable values,
NaN and infinities, values outside a key's choices and values outside its range (``Field.check``:
every number is checked, by default ``>= 0``) raise ``ConfigError`` with one line naming what is
allowed. A key that the chosen data set or optimizer does not use is not an error; a value that no
data set or optimizer could use is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip install tomli
    import tomli as tomllib
import tomli_w

from ..suggest import did_you_mean

__all__ = [
    "FIELDS",
    "ConfigError",
    "Field",
    "Range",
    "defaults",
    "parse_value",
    "apply_overrides",
    "read_toml",
    "to_toml",
    "validate",
]


class ConfigError(ValueError):
    """A bad recipe, key or value (one line, names what is allowed)."""


@dataclass(frozen=True)
class Range:
    """The numbers a key allows: ``lo``..``hi`` (each end open or closed) plus the values in ``also``.

    Called with a value it returns None when the value is allowed, else what is allowed (text)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()

    def __call__(self, value) -> str | None:
        if value in self.also:
            return None
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return None if above and below else str(self)

    def __str__(self) -> str:
        if self.hi == math.inf:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        return text + "".join(f" or {_num(v)}" for v in self.also)


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


NON_NEGATIVE = Range(0)  # every number without a check of its own
POSITIVE = Range(0, lo_open=True)
AT_LEAST_1 = Range(1)
RATE = Range(0, 1, lo_open=True)  # gamma and decay rates: (0, 1]
FRACTION = Range(0, 1)


def _one_of(name: str, allowed) -> str | None:
    return None if name in allowed else f"one of {', '.join(allowed)}"


def _zoo_model(name: str) -> str | None:
    from ..models import list_models

    return _one_of(name, list_models())


def _input_quantizer(name: str) -> str | None:
    from .. import quantizers

    return _one_of(name, ("none", *quantizers.names()))


def _kernel_quantizer(name: str) -> str | None:
    from .. import quantizers

    return _one_of(name, ("auto", "none", *quantizers.names()))


def _constraint(name: str) -> str | None:
    from .. import constraints

    return _one_of(name, ("auto", "none", *constraints.names()))


def _device_name(name: str) -> str | None:
    ok = re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name) is not None
    return None if ok else "auto, cpu, cuda, cuda:N or mps"


def _not_empty(text: str) -> str | None:
    return None if text.strip() else "a folder name (not empty)"


_TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _checkpoint_every(value) -> tuple[int, float, str | None]:
    """(steps, seconds, None) of a ``checkpoint_every`` value, or (0, 0, what is allowed)."""
    text = str(value).strip().lower()
    try:
        if text in ("off", "0"):
            return 0, 0.0, None
        if text[-1:] in _TIME_UNITS:
            amount = float(text[:-1])
            if math.isfinite(amount) and amount >= 0:
                return 0, amount * _TIME_UNITS[text[-1]], None
        elif int(text) > 0:
            return int(text), 0.0, None
    except ValueError:
        pass
    return 0, 0.0, "off, a number of optimizer steps such as 500, or a time such as 90s, 30m or 2h"


def checkpoint_interval(value) -> tuple[int, float]:
    """``checkpoint_every`` as (steps, seconds): at most one of them is nonzero; (0, 0) when off."""
    steps, seconds, allowed = _checkpoint_every(value)
    if allowed is not None:
        raise ConfigError(f"bad value checkpoint_every={value!r}: checkpoint_every must be {allowed}")
    return steps, seconds


@dataclass(frozen=True)
class Field:
    """One key: its default (whose type the value must have), help, allowed choices, and ``check``:
    a callable that returns None for an allowed value and otherwise what is allowed (``Range``);
    numbers without one must be >= 0."""

    name: str
    default: object
    help: str
    choices: tuple = ()
    check: Callable[[object], str | None] | None = None


FIELDS: dict[str, Field] = {
    f.name: f
    for f in [
        # data
        Field("dataset", "mnist5k", "data set", ("mnist5k", "mnist", "cifar10", "imagefolder")),
        Field("data_dir", "", "folder of the data set's files (not used by mnist5k)"),
        Field(
            "augment",
            "auto",
            "training augmentation (auto: CIFAR-10 pad_crop_flip, image folders random-resized crop + flip, MNIST none)",
            ("auto", "none", "pad_crop", "pad_crop_flip"),
        ),
        Field("augment_pad", 4, "padding in pixels of pad_crop / pad_crop_flip", check=Range(0, 64)),
        Field(
            "image_size",
            0,
            "input side in pixels for image folders (0: the images' own size when they share one, else 224)",
            check=Range(16, 4096, also=(0,)),
        ),
        Field(
            "num_workers",
            -1,
            "worker processes decoding image files, per training process (-1: auto, the process's share of the cores, at most 8; 0: in the training process)",
            check=Range(-1, 256),
        ),
        # model
        Field("model", "small_cnn", "zoo model name (onebit list)", check=_zoo_model),
        Field("input_quantizer", "ste_sign", "activation quantizer of the binary layers", check=_input_quantizer),
        Field(
            "kernel_quantizer",
            "auto",
            "auto: 'noop' with Bop (Bop keeps +/-1), 'ste_sign' with latent weights",
            check=_kernel_quantizer,
        ),
        Field(
            "kernel_constraint",
            "auto",
            "auto: 'none' with Bop, 'weight_clip' with latent weights",
            check=_constraint,
        ),
        Field(
            "clip_value",
            1.0,
            "latent weights: the STE passes gradients where |w| <= clip_value; weight_clip bound",
            check=POSITIVE,
        ),
        Field("init_scale", 1.0, "multiply the binary kernels' initial (latent) values by this", check=POSITIVE),
        Field(
            "kernel_init",
            "default",
            "initial kernels of the quantized layers: the model's own, Keras glorot_uniform, or Keras RandomUniform (+/-0.05)",
            ("default", "glorot_uniform", "random_uniform"),
        ),
        Field(
            "init_scale_all",
            1.0,
            "multiply every initial parameter and batch-norm statistic by this (the reproduction study's scaled init)",
            check=POSITIVE,
        ),
        Field(
            "bn_momentum",
            0.0,
            "override every batch norm's torch momentum (0: keep the model's, Keras 0.99 = torch 0.01)",
            check=FRACTION,
        ),
        Field(
            "bn_reestimate",
            0,
            "before each evaluation, recompute batch-norm statistics as exact averages over this many training images (0: off, -1: all)",
            check=Range(0, also=(-1,)),
        ),
        Field("sync_batchnorm", False, "SyncBatchNorm across processes under torchrun (alias sync_bn)"),
        # optimisation
        Field("epochs", 6, "training epochs", check=AT_LEAST_1),
        Field("batch_size", 64, "GLOBAL batch size (split across torchrun processes)", check=AT_LEAST_1),
        Field(
            "optimizer",
            "bop",
            "bop: Bop for binary kernels + real_optimizer for the rest; latent: real_optimizer for all",
            ("bop", "latent"),
        ),
        Field("gamma", 1e-3, "Bop adaptivity rate", check=RATE),
        Field("threshold", 1e-6, "Bop threshold tau"),
        Field(
            "bop_fused",
            "auto",
            "Bop's compiled one-pass step: auto (param groups >= 2^20 weights), on, off",
            ("auto", "on", "off"),
        ),
        Field("gamma_decay", "none", "gamma schedule", ("none", "step", "linear")),
        Field("gamma_decay_epochs", 0.0, "step: decay period; linear: duration (0: whole run), in epochs"),
        Field("gamma_decay_steps", 0, "the same in optimizer steps (overrides gamma_decay_epochs when > 0)"),
        Field("gamma_decay_rate", 0.1, "step decay: multiply gamma by this every period", check=RATE),
        Field("gamma_end", 0.0, "linear decay: final gamma", check=FRACTION),
        Field("real_optimizer", "adam", "optimizer of the real-valued parameters", ("adam", "sgd")),
        Field("lr", 1e-2, "learning rate of real_optimizer"),
        Field("latent_lr", 0.0, "optimizer=latent: learning rate of the binary kernels' latent weights (0: lr)"),
        Field("lr_decay", "none", "lr schedule", ("none", "step", "linear")),
        Field("lr_decay_epochs", 0.0, "step: decay period; linear: duration (0: whole run), in epochs"),
        Field("lr_decay_steps", 0, "the same in optimizer steps (overrides lr_decay_epochs when > 0)"),
        Field("lr_decay_rate", 0.1, "step decay: multiply lr by this every period", check=RATE),
        Field("lr_end", 0.0, "linear decay: final lr"),
        Field("adam_eps", 1e-7, "Adam epsilon (Keras default 1e-7; torch's is 1e-8)"),
        Field("momentum", 0.9, "SGD momentum", check=FRACTION),
        Field("kernel_l2", 0.0, "Keras-style L2 on real-valued kernels (loss += kernel_l2 * sum(w^2))"),
        # run
        Field("seed", 0, "seed of initialisation, data order and augmentation", check=Range(0, 2**63 - 1)),
        Field(
            "seeds",
            1,
            "run the recipe this many times (seeds seed, seed+1, ...) and report mean and std",
            check=Range(1, 1000),
        ),
        Field("threads", 0, "torch CPU threads (0: all cores)", check=Range(0, 4096)),
        Field("device", "auto", "auto, cpu, cuda or cuda:N", check=_device_name),
        Field(
            "xnor_forward",
            "auto",
            "binary layers' forward by XOR + popcount (onebit.xnor; same outputs and gradients): auto (when numba imports), on, off",
            ("auto", "on", "off"),
        ),
        Field(
            "channels_last",
            True,
            "NHWC memory format for model and image batches (about 2x faster convolutions on CPU)",
        ),
        Field(
            "precision",
            "fp32",
            "arithmetic of forward and backward: fp32, bf16 (autocast; weights, Bop's state and the optimizer steps stay fp32), auto (bf16 on GPUs that support it and on CPUs with native bf16, else fp32)",
            ("fp32", "bf16", "auto"),
        ),
        Field("compile", False, "torch.compile the model (GPUs; the first steps compile)"),
        Field("eval_every", 1, "evaluate on the test set every N epochs (and after the last)", check=AT_LEAST_1),
        Field(
            "log_every", 50, "read metrics/flips on the host every N steps (progress, TensorBoard)", check=AT_LEAST_1
        ),
        Field("tensorboard", True, "write TensorBoard events when tensorboard is installed"),
        Field("plots", True, "write accuracy/flip PNG plots at the end"),
        Field("out", "runs", "root folder of run folders (runs/<recipe>/<timestamp>/)", check=_not_empty),
        Field(
            "check_replicas_every",
            100,
            "under torchrun: compare a checksum of the binary weights across processes every N steps and at each epoch end; a difference stops the run (0: off)",
        ),
        Field("max_steps", 0, "stop each epoch after this many steps (0: full epochs; for quick tests)"),
        Field(
            "checkpoint_every",
            "off",
            'also save last.pt within epochs: every N optimizer steps (500) or every so long (90s, 30m, 2h); off: at epoch ends only (in TOML a string: "500")',
            check=lambda value: _checkpoint_every(value)[2],
        ),
    ]
}


def defaults() -> dict:
    """A fresh dict of every key's default."""
    return {name: f.default for name, f in FIELDS.items()}


def _allowed_keys() -> str:
    return ", ".join(FIELDS)


def parse_value(key: str, text, default=None):
    """Parse ``text`` (from the command line, or a TOML value) as the type of the key's default and
    check it (choices, range); ``ConfigError`` with one line naming what is allowed."""
    if key not in FIELDS:
        raise ConfigError(f"unknown key {key!r}{did_you_mean(key, FIELDS)}; allowed keys: {_allowed_keys()}")
    field = FIELDS[key]
    kind = type(field.default if default is None else default)
    value = _parse(key, text, kind)
    if field.choices and value not in field.choices:
        raise ConfigError(f"bad value {key}={value!r}; allowed: {', '.join(map(str, field.choices))}")
    check = field.check if field.check is not None else (NON_NEGATIVE if kind in (int, float) else None)
    allowed = check(value) if check is not None else None
    if allowed is not None:
        raise ConfigError(f"bad value {key}={text!r}: {key} must be {allowed}")
    return value


def _parse(key: str, text, kind: type):
    """``text`` as a ``kind`` (bool, int, float or str): finite numbers, ints that fit 64 bits."""
    value = text
    if isinstance(text, str) and kind is not str:
        t = text.strip()
        try:
            if kind is bool:
                low = t.lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                value = low in ("true", "1", "yes", "on")
            elif kind is int:
                value = int(t)
            elif kind is float:
                value = float(t)
        except ValueError:
            raise ConfigError(f"bad value {key}={text!r}: expected {kind.__name__}") from None
    elif kind is float and isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    if type(value) is not kind:
        raise ConfigError(f"bad value {key}={text!r}: expected {kind.__name__}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"bad value {key}={text!r}: expected a finite number")
    if kind is int and not -(2**63) <= value < 2**63:
        raise ConfigError(f"bad value {key}={text!r}: expected an int of at most 19 digits")
    if kind is str and "\x00" in value:
        raise ConfigError(f"bad value {key}={text!r}: expected text without NUL characters")
    return value


def validate(config: dict) -> dict:
    """Check every key and value (types, choices, ranges: ``Field.check``); returns the config."""
    for key, value in config.items():
        parse_value(key, value)
    return config


ALIASES = {"sync_bn": "sync_batchnorm"}


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings to a copy of ``config`` (``ALIASES`` name keys too)."""
    config = dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}: expected key=value (keys: {_allowed_keys()})")
        key, text = item.split("=", 1)
        key = ALIASES.get(key.strip(), key.strip())
        config[key] = parse_value(key, text)
    return validate(config)


def to_toml(tables: dict[str, dict]) -> str:
    """Write ``{table: {key: value}}`` as TOML. TOML has no null: keys whose value is None are left
    out (a reader sees them as absent)."""
    return tomli_w.dumps(
        {table: {k: v for k, v in values.items() if v is not None} for table, values in tables.items()}
    )


def read_toml(text: str, what: str) -> dict:
    """Parse TOML ``text``; ``ConfigError`` naming ``what`` (a recipe, a file) if it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} is not valid TOML: {e}") from None
