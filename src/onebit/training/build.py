"""From a config to objects: model, optimizer (CaseOptimizer(Bop, Adam) or latent Adam/SGD),
gamma/lr schedules, and the flip source. Shared by training, evaluation and the experiments."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import constraints, quantizers
from ..data import default_workers, load_dataset
from ..layers import QuantLayer, binary_parameters, real_parameters
from ..metrics import FlipCounter
from ..models import create_model, list_models, model_info
from ..optim import Bop, CaseOptimizer
from .config import ConfigError

__all__ = [
    "load_data",
    "data_workers",
    "build_model",
    "build_optimizer",
    "schedule_factor",
    "build_schedulers",
    "FlipSource",
    "binary_named_parameters",
]


def load_data(config: dict):
    """(train, test) data sets of a config (dataset, data_dir, image_size, augment, augment_pad)."""
    return load_dataset(
        config["dataset"], config["data_dir"], config["image_size"], config["augment"], config["augment_pad"]
    )


def data_workers(config: dict, processes_per_machine: int = 1) -> int:
    """Worker processes per training process: ``num_workers``, or (-1) this process's share of
    the cores (``onebit.data.default_workers``)."""
    n = config.get("num_workers", -1)  # run folders from before the key: auto
    return default_workers(processes_per_machine) if n < 0 else n


def _kernel_quantizer(config: dict):
    name = config["kernel_quantizer"]
    if name == "auto":
        name = "noop" if config["optimizer"] == "bop" else "ste_sign"
    if name == "ste_sign":
        return quantizers.SteSign(clip_value=config.get("clip_value", 1.0))
    return None if name == "none" else name


def _kernel_constraint(config: dict):
    name = config["kernel_constraint"]
    if name == "auto":
        name = "none" if config["optimizer"] == "bop" else "weight_clip"
    if name == "weight_clip":
        return constraints.WeightClip(config.get("clip_value", 1.0))
    return None if name == "none" else name


def build_model(config: dict, num_classes: int, shape: tuple[int, int, int]) -> nn.Module:
    """The zoo model ``config["model"]`` for inputs of ``shape`` (C, H, W) and ``num_classes``.

    Only the keyword arguments the builder accepts are passed (ImageNet models take no
    ``in_channels``/``image_size``); ``init_scale`` multiplies the binary kernels after init.
    """
    name = config["model"]
    if name not in list_models():
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    kwargs = dict(
        num_classes=num_classes,
        in_channels=shape[0],
        image_size=shape[1],
        input_quantizer=None if config["input_quantizer"] == "none" else config["input_quantizer"],
        kernel_quantizer=_kernel_quantizer(config),
        kernel_constraint=_kernel_constraint(config),
    )
    info = model_info(name)
    kwargs = {k: v for k, v in kwargs.items() if info.accepts(k)}  # e.g. no image_size: any size
    try:
        model = create_model(name, **kwargs)
    except ValueError as e:
        raise ConfigError(f"cannot build model {name!r}: {e}") from None
    if config.get("bn_momentum", 0.0) > 0:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = config["bn_momentum"]
    _initialize(model, config)
    return model


@torch.no_grad()
def _initialize(model: nn.Module, config: dict) -> None:
    """``kernel_init`` (quantized layers' kernels), then ``init_scale`` (binary kernels), then
    ``init_scale_all``: every parameter and floating buffer (batch norm's running mean and
    variance too), as the study's code multiplies every Keras layer weight."""
    init = config.get("kernel_init", "default")
    for m in model.modules() if init != "default" else ():
        if isinstance(m, QuantLayer):
            if init == "glorot_uniform":
                nn.init.xavier_uniform_(m.weight)
            else:  # Keras RandomUniform's defaults
                nn.init.uniform_(m.weight, -0.05, 0.05)
    if config.get("init_scale", 1.0) != 1.0:
        for p in binary_parameters(model):
            p.mul_(config["init_scale"])
    factor = config.get("init_scale_all", 1.0)
    if factor != 1.0:
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.mul_(factor)


def binary_named_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, kernel) of every binary kernel, in model order."""
    ids = {id(p) for p in binary_parameters(model)}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def _real_optimizer(config: dict, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """Adam/SGD; ``kernel_l2`` becomes weight decay 2 * kernel_l2 on tensors with ndim > 1
    (Keras adds kernel_l2 * sum(w^2) to the loss, whose gradient is 2 * kernel_l2 * w)."""
    decay = [p for p in params if p.ndim > 1] if config["kernel_l2"] > 0 else []
    ids = {id(p) for p in decay}
    groups = [{"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0}]
    if decay:
        groups.append({"params": decay, "weight_decay": 2 * config["kernel_l2"]})
    groups = [g for g in groups if g["params"]]
    if config["real_optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=config["lr"], eps=config["adam_eps"])
    return torch.optim.SGD(groups, lr=config["lr"], momentum=config["momentum"])


def build_optimizer(config: dict, model: nn.Module) -> tuple[torch.optim.Optimizer, Bop | None]:
    """(optimizer, bop): CaseOptimizer(Bop(binary), Adam/SGD(rest)) for ``optimizer="bop"``, or
    one Adam/SGD over all parameters (latent weights) with ``bop`` None."""
    if config["optimizer"] == "latent":
        opt = _real_optimizer(config, list(model.parameters()))
        if config["latent_lr"] > 0:  # the binary kernels' latent weights get their own group
            binary = {id(p) for p in binary_parameters(model)}
            groups = []
            for g in opt.param_groups:
                for subset, lr in (
                    ([p for p in g["params"] if id(p) not in binary], g["lr"]),
                    ([p for p in g["params"] if id(p) in binary], config["latent_lr"]),
                ):
                    if subset:
                        groups.append(dict(g, params=subset, lr=lr))
            opt = type(opt)(groups, **{k: v for k, v in opt.defaults.items() if k in ("eps", "momentum")})
        return opt, None
    binary = list(binary_parameters(model))
    if not binary:
        raise ConfigError(
            f"model {config['model']!r} has no binary kernels for Bop (kernel_quantizer={config['kernel_quantizer']!r}); "
            "use optimizer=latent or a 1-bit kernel_quantizer"
        )
    fused = {"auto": None, "on": True, "off": False}[config.get("bop_fused", "auto")]
    bop = Bop(binary, gamma=config["gamma"], threshold=config["threshold"], fused=fused)
    real = list(real_parameters(model))
    if not real:
        return CaseOptimizer(bop), bop
    return CaseOptimizer(bop, _real_optimizer(config, real)), bop


def schedule_factor(kind: str, step: int, period_steps: float, rate: float, start: float, end: float) -> float:
    """Multiplier of the initial value after ``step`` optimizer steps.

    none: 1; step: rate ** floor(step / period) (Keras staircase ExponentialDecay); linear: from
    start to end over ``period_steps``, then constant at end (Keras PolynomialDecay, power 1).
    """
    if kind == "none" or period_steps <= 0:
        return 1.0
    if kind == "step":
        return rate ** math.floor(step / period_steps)
    if start == 0:
        return 1.0
    frac = min(step, period_steps) / period_steps
    return (start + (end - start) * frac) / start


def build_schedulers(
    config: dict, optimizer: torch.optim.Optimizer, bop: Bop | None, steps_per_epoch: int, total_steps: int
) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """LambdaLR schedulers (stepped once per optimizer step): gamma for Bop, lr for the rest.

    gamma lives in Bop's ``"lr"``, so a stock torch scheduler drives it; schedules are pure
    functions of the step count, so resuming restores them exactly.
    """

    def period(prefix: str) -> float:
        if config[f"{prefix}_decay_steps"] > 0:
            return float(config[f"{prefix}_decay_steps"])
        if config[f"{prefix}_decay_epochs"] > 0:
            return config[f"{prefix}_decay_epochs"] * steps_per_epoch
        return float(total_steps)

    def make(opt, prefix: str):
        kind, p = config[f"{prefix}_decay"], period(prefix)
        rate, start, end = config[f"{prefix}_decay_rate"], config[prefix], config[f"{prefix}_end"]
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule_factor(kind, s, p, rate, start, end))

    subs = optimizer.optimizers if isinstance(optimizer, CaseOptimizer) else [optimizer]
    return [make(opt, "gamma" if opt is bop else "lr") for opt in subs]


class FlipSource:
    """Per-step flips of each binary kernel as one int64 tensor (no host sync): Bop's own counts,
    or sign changes of latent weights (``FlipCounter``) otherwise. Build it after loading a
    checkpoint, so the latent snapshot is the restored weights."""

    def __init__(self, model: nn.Module, bop: Bop | None = None) -> None:
        named = binary_named_parameters(model)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.sizes = [p.numel() for p in self.params]
        self.numel = sum(self.sizes)
        self.bop = bop
        self.counter = None if (bop is not None or not named) else FlipCounter(named)

    def __len__(self) -> int:
        return len(self.params)

    def read(self) -> torch.Tensor:
        """Flips per kernel in the last step (call right after ``optimizer.step()``)."""
        if not self.params:
            return torch.zeros(0, dtype=torch.int64)
        if self.bop is not None:
            return torch.stack([self.bop.state[p]["flips"] for p in self.params])
        return torch.stack(list(self.counter.update().values()))


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    return [m for m in model.modules() if isinstance(m, QuantLayer)]
