"""The public API carries type hints (the package ships ``py.typed``): every function and method
that ``onebit``, ``onebit.optim``, ``onebit.quantizers``, ``onebit.layers``, ``onebit.metrics``,
``onebit.models``, ``onebit.settings``, ``onebit.functional``, ``onebit.xnor``, ``onebit.engine``,
``onebit.training`` and ``onebit.data`` export annotates its parameters and its return value (``__init__``: its
parameters), for the objects defined in the modules of ``CHECKED`` (the layers, quantizers,
optimizers, metrics, summary, constraints, the zoo's registry and Larq importer, the engine, the
training package, the data sets and loader, and the package's own functions).
Read from the signatures, so a new public callable there without hints fails here."""

import importlib
import inspect
from pathlib import Path

import pytest

import onebit

MODULES = (
    "onebit",
    "onebit.optim",
    "onebit.quantizers",
    "onebit.layers",
    "onebit.metrics",
    "onebit.models",
    "onebit.settings",
    "onebit.functional",
    "onebit.xnor",
    "onebit.engine",
    "onebit.training",
    "onebit.data",
)
SKIP_PARAMS = ("self", "cls")
CHECKED = (
    "onebit",
    "onebit.optim.bop",
    "onebit.optim.case",
    "onebit.quantizers",
    "onebit.layers.quantized",
    "onebit.layers.pooling",
    "onebit.layers.popcount",
    "onebit.settings",
    "onebit.functional",
    "onebit.xnor",
    "onebit.metrics",
    "onebit.model_summary",
    "onebit.constraints",
    "onebit.models.registry",
    "onebit.models.keras_import",
    "onebit.models.larq_zoo_weights",
    "onebit.engine",
    "onebit.engine.runtime",
    "onebit.kernels.bits",
    "onebit.training.build",
    "onebit.training.checkpoint",
    "onebit.training.config",
    "onebit.training.experiments",
    "onebit.training.loop",
    "onebit.training.runs",
    "onebit.training.step",
    "onebit.data.datasets",
    "onebit.data.loader",
)


def _functions(obj):
    """(name, function) of a public function, or of a class's public methods, properties and __init__."""
    if inspect.isfunction(obj):
        return [("", obj)]
    found = []
    for name, value in vars(obj).items():
        if name.startswith("_") and name != "__init__":
            continue
        value = value.fget if isinstance(value, property) else value
        value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if inspect.isfunction(value):
            found.append((name, value))
    return found


def _missing(fn, name: str) -> list[str]:
    sig = inspect.signature(fn)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    bad = [
        p.name
        for p in sig.parameters.values()
        if p.name not in SKIP_PARAMS and p.annotation is inspect.Parameter.empty and p.kind not in variadic
    ]
    if name != "__init__" and sig.return_annotation is inspect.Signature.empty:
        bad.append("return")
    return bad


def _public(module_name: str):
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ in CHECKED:
            yield f"{module_name}.{name}", obj


@pytest.mark.parametrize("module_name", MODULES)
def test_public_callables_are_annotated(module_name):
    unannotated = {
        f"{qualified}{'.' + name if name else ''}": missing
        for qualified, obj in _public(module_name)
        for name, fn in _functions(obj)
        if (missing := _missing(fn, name))
    }
    assert unannotated == {}


def test_the_package_says_it_is_typed():
    assert (Path(onebit.__file__).parent / "py.typed").is_file()
