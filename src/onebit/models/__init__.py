"""The model zoo: ``create_model(name, num_classes=..., **kw)``, ``list_models()`` and
``model_info(name)`` (input size, classes, data set, accepted keywords).

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
from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]
