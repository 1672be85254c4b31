"""The model zoo: ``create_model(name, num_classes=..., **kw)`` and ``list_models()``.

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
from ._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
