"""The model registry (timm style): ``@register_model`` on a builder, ``create_model(name)``, and
each model's defaults in one place (``model_info(name)``: input size, classes, data set, the
keyword arguments its builder takes)."""

from __future__ import annotations

import fnmatch
import inspect
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..suggest import did_you_mean

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]

NO_PRETRAINED = (
    "create_model({name!r}, pretrained=True): onebit ships no pretrained weights; train the model "
    "(onebit train), or load a Larq Zoo weight file (.h5) with create_model({name!r}, weights=PATH)"
)


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows of a model without building it.

    ``input_size`` (C, H, W) and ``num_classes`` are the builder's defaults (``in_channels``,
    ``image_size``, ``num_classes``; 224 pixels where the builder takes any size); ``dataset`` is
    the data set it was designed for; ``keywords`` the keyword arguments the builder accepts
    (None: any)."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    num_classes: int
    dataset: str
    keywords: frozenset[str] | None

    @property
    def description(self) -> str:
        """The first line of the builder's docstring."""
        doc = (inspect.getdoc(self.builder) or "").strip().splitlines()
        return doc[0] if doc else ""

    def accepts(self, keyword: str) -> bool:
        """Whether the builder takes ``keyword``."""
        return self.keywords is None or keyword in self.keywords


_MODELS: dict[str, ModelInfo] = {}


def _info(fn: Callable[..., nn.Module], dataset: str) -> ModelInfo:
    params = inspect.signature(fn).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    keywords = None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else frozenset(params)
    side = defaults.get("image_size", 224)
    return ModelInfo(
        name=fn.__name__,
        builder=fn,
        input_size=(defaults.get("in_channels", 3), side, side),
        num_classes=defaults.get("num_classes", 1000),
        dataset=dataset,
        keywords=keywords,
    )


def register_model(fn: Callable[..., nn.Module] | None = None, *, dataset: str = "imagenet") -> Callable:
    """Register a builder under its function name: ``@register_model`` or
    ``@register_model(dataset="cifar10")`` (the data set it was designed for; default imagenet)."""

    def register(fn):
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _MODELS[fn.__name__] = _info(fn, dataset)
        return fn

    return register(fn) if fn is not None else register


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching ``pattern`` (shell-style, as timm's:
    ``"quicknet*"``, ``"*resnet*"``), sorted; every model by default."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def model_info(name: str) -> ModelInfo:
    """The registry's entry of model ``name`` (ValueError naming the available models if unknown)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, _MODELS)}; available: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, weights: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments (e.g. ``num_classes=10``).

    ``weights``: a Larq Zoo / Keras weights file (``.h5`` or ``.keras``) to load into the model
    (``onebit.models.larq_zoo_weights``; needs h5py, not TensorFlow); the model is then in eval mode."""
    info = model_info(name)
    if kwargs.pop("pretrained", False):  # timm's keyword (no weights ship): answered, never ignored
        raise ValueError(NO_PRETRAINED.format(name=name))
    unknown = sorted(k for k in kwargs if not info.accepts(k))
    if unknown:
        raise ValueError(
            f"model {name!r} takes no argument {unknown[0]!r}; it takes: {', '.join(sorted(info.keywords))}"
        )
    for key in ("num_classes", "in_channels", "image_size"):
        value = kwargs.get(key, 1)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"model {name!r}: {key}={value!r} must be an int >= 1")
    model = info.builder(**kwargs)
    model.name = name  # shown by onebit.summary
    side = kwargs.get("image_size", info.input_size[1])
    model.default_input_size = (kwargs.get("in_channels", info.input_size[0]), side, side)  # summary's default
    if weights is not None:
        from .larq_zoo_weights import load_larq_weights

        load_larq_weights(model, weights)
    return model
