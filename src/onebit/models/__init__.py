"""The model zoo: ``create_model(name, num_classes=..., weights=None, **kw)``, ``list_models()``
and ``model_info(name)`` (input size, classes, data set, accepted keywords); and the bridge from
Larq: ``from_larq(path)`` (a Larq / Keras model file as an onebit model) and Larq Zoo weight files
through ``create_model(name, weights=path)``.

One file per family; each builder is registered under its function name.
"""

from . import (  # noqa: F401  (importing a family registers its models)
    alexnet,
    binarynet,
    birealnet,
    densenet,
    dorefanet,
    meliusnet,
    quicknet,
    real_to_binary,
    resnet_e,
    small_cnn,
    xnornet,
)
from .keras_file import KerasImportError
from .keras_import import KerasModel, from_larq
from .larq_zoo_weights import load_larq_weights
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = [
    "KerasImportError",
    "KerasModel",
    "ModelInfo",
    "create_model",
    "from_larq",
    "list_models",
    "load_larq_weights",
    "model_info",
    "register_model",
]
