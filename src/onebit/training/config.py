"""The training configuration: one flat table of keys with defaults, help and allowed values.

A recipe (``onebit/recipes/*.toml``) overrides some keys; the command line overrides any key with
``key=value``. Values are parsed by the type of the key's default; unknown keys, unparsable values
and values outside a key's choices raise ``ConfigError`` with one line naming what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip install tomli
    import tomli as tomllib
import tomli_w

__all__ = [
    "FIELDS",
    "ConfigError",
    "Field",
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
class Field:
    name: str
    default: object
    help: str
    choices: tuple = ()


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
        Field("augment_pad", 4, "padding in pixels of pad_crop / pad_crop_flip"),
        Field("image_size", 0, "input side in pixels for image folders (0: the data set's own)"),
        # model
        Field("model", "small_cnn", "zoo model name (onebit list)"),
        Field("input_quantizer", "ste_sign", "activation quantizer of the binary layers"),
        Field("kernel_quantizer", "auto", "auto: 'noop' with Bop (Bop keeps +/-1), 'ste_sign' with latent weights"),
        Field("kernel_constraint", "auto", "auto: 'none' with Bop, 'weight_clip' with latent weights"),
        Field("clip_value", 1.0, "latent weights: the STE passes gradients where |w| <= clip_value; weight_clip bound"),
        Field("init_scale", 1.0, "multiply the binary kernels' initial (latent) values by this"),
        Field(
            "bn_momentum",
            0.0,
            "override every batch norm's torch momentum (0: keep the model's, Keras 0.99 = torch 0.01)",
        ),
        Field(
            "bn_reestimate",
            0,
            "before each evaluation, recompute batch-norm statistics as exact averages over this many training images (0: off, -1: all)",
        ),
        Field("sync_batchnorm", False, "SyncBatchNorm across processes under torchrun (alias sync_bn)"),
        # optimisation
        Field("epochs", 6, "training epochs"),
        Field("batch_size", 64, "GLOBAL batch size (split across torchrun processes)"),
        Field(
            "optimizer",
            "bop",
            "bop: Bop for binary kernels + real_optimizer for the rest; latent: real_optimizer for all",
            ("bop", "latent"),
        ),
        Field("gamma", 1e-3, "Bop adaptivity rate"),
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
        Field("gamma_decay_rate", 0.1, "step decay: multiply gamma by this every period"),
        Field("gamma_end", 0.0, "linear decay: final gamma"),
        Field("real_optimizer", "adam", "optimizer of the real-valued parameters", ("adam", "sgd")),
        Field("lr", 1e-2, "learning rate of real_optimizer"),
        Field("latent_lr", 0.0, "optimizer=latent: learning rate of the binary kernels' latent weights (0: lr)"),
        Field("lr_decay", "none", "lr schedule", ("none", "step", "linear")),
        Field("lr_decay_epochs", 0.0, "step: decay period; linear: duration (0: whole run), in epochs"),
        Field("lr_decay_steps", 0, "the same in optimizer steps (overrides lr_decay_epochs when > 0)"),
        Field("lr_decay_rate", 0.1, "step decay: multiply lr by this every period"),
        Field("lr_end", 0.0, "linear decay: final lr"),
        Field("adam_eps", 1e-7, "Adam epsilon (Keras default 1e-7; torch's is 1e-8)"),
        Field("momentum", 0.9, "SGD momentum"),
        Field("kernel_l2", 0.0, "Keras-style L2 on real-valued kernels (loss += kernel_l2 * sum(w^2))"),
        # run
        Field("seed", 0, "seed of initialisation, data order and augmentation"),
        Field("threads", 0, "torch CPU threads (0: all cores)"),
        Field("device", "auto", "auto, cpu, cuda or cuda:N"),
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
        Field("eval_every", 1, "evaluate on the test set every N epochs (and after the last)"),
        Field("log_every", 50, "read metrics/flips on the host every N steps (progress, TensorBoard)"),
        Field("tensorboard", True, "write TensorBoard events when tensorboard is installed"),
        Field("plots", True, "write accuracy/flip PNG plots at the end"),
        Field("out", "runs", "root folder of run folders (runs/<recipe>/<timestamp>/)"),
        Field(
            "check_replicas_every",
            100,
            "under torchrun: compare a checksum of the binary weights across processes every N steps and at each epoch end; a difference stops the run (0: off)",
        ),
        Field("max_steps", 0, "stop each epoch after this many steps (0: full epochs; for quick tests)"),
    ]
}


def defaults() -> dict:
    """A fresh dict of every key's default."""
    return {name: f.default for name, f in FIELDS.items()}


def _allowed_keys() -> str:
    return ", ".join(FIELDS)


def parse_value(key: str, text, default=None):
    """Parse ``text`` (from the command line, or a TOML value) as the type of the key's default."""
    if key not in FIELDS:
        raise ConfigError(f"unknown key {key!r}; allowed keys: {_allowed_keys()}")
    field = FIELDS[key]
    kind = type(field.default if default is None else default)
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
    if field.choices and value not in field.choices:
        raise ConfigError(f"bad value {key}={value!r}; allowed: {', '.join(map(str, field.choices))}")
    return value


def validate(config: dict) -> dict:
    """Check every key and value (types, choices, ranges); returns the config."""
    for key, value in config.items():
        parse_value(key, value)
    for key in ("epochs", "batch_size", "eval_every", "log_every"):
        if config.get(key, 1) < 1:
            raise ConfigError(f"bad value {key}={config[key]!r}: must be >= 1")
    for key in ("gamma", "lr"):
        if not 0 <= config.get(key, 0) <= (1 if key == "gamma" else math.inf):
            raise ConfigError(f"bad value {key}={config[key]!r}: gamma must be in [0, 1], lr >= 0")
    if config.get("threshold", 0) < 0:
        raise ConfigError(f"bad value threshold={config['threshold']!r}: must be >= 0")
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
