"""The model zoo: ``create_model(name, num_classes=..., **kw)`` and ``list_models()``.

One file per family; each builder is registered under its function name.
"""

from . import binarynet, small_cnn  # noqa: F401  (registers the models)
from ._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
