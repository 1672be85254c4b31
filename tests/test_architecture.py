"""The package's structure, read from its source: modules import only downward, no import cycle,
no long functions, no package attribute that is both a function and a submodule, every
process-wide switch in onebit.settings. docs/architecture.md explains the layers."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import pytest

import onebit

ROOT = Path(onebit.__file__).parent
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = ("onebit",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """onebit modules that ``name`` imports anywhere in its source (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" imports the submodule where one has that name
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _within(module: str, *packages: str) -> bool:
    return any(module == f"onebit.{p}" or module.startswith(f"onebit.{p}.") for p in packages)


def test_the_graph_is_read():
    assert (
        "onebit.layers.quantized" in GRAPH["onebit.layers.popcount"]
        or "onebit.settings" in GRAPH["onebit.layers.popcount"]
    )
    assert "onebit.kernels.geometry" in GRAPH["onebit.kernels.jit_float"]


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan). A package's
    ``__init__`` importing its own submodules, and their imports of siblings through it, are
    the package's re-exports, not a cycle: edges from a submodule to an enclosing package are
    followed to what that package re-exports only if it is not an ancestor."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def edges(v):
        return [w for w in GRAPH[v] if not v.startswith(w + ".")]

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles() == []


LOWER = ("kernels", "settings", "functional", "quantizers", "constraints", "layers", "optim", "metrics")


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _within(m, *LOWER)))
def test_training_building_blocks_import_nothing_above_them(module):
    above = {m for m in GRAPH[module] if _within(m, "engine", "training", "cli", "models", "recipes", "data")}
    assert not above, f"{module} imports {sorted(above)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _within(m, "engine")))
def test_engine_imports_nothing_of_training_or_cli(module):
    above = {m for m in GRAPH[module] if _within(m, "training", "cli", "recipes", "data", "models")}
    assert not above, f"{module} imports {sorted(above)}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _within(m, "kernels")))
def test_kernels_are_torch_free(module):
    tree = ast.parse(MODULES[module].read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {n for n in names if n.split(".")[0] == "torch"}, f"{module} imports torch"
    assert all(not m.startswith("onebit.") or _within(m, "kernels") for m in GRAPH[module])


def test_training_imports_nothing_of_the_cli():
    offenders = {
        m: sorted(GRAPH[m] & {c for c in GRAPH if _within(c, "cli")})
        for m in GRAPH
        if _within(m, "training", "models", "data", "engine")
    }
    assert not {m: c for m, c in offenders.items() if c}


def test_no_function_over_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def _packages():
    return [m for m, p in MODULES.items() if p.name == "__init__.py"]


@pytest.mark.parametrize("package", _packages())
def test_no_attribute_is_both_a_function_and_a_submodule(package):
    pkg = importlib.import_module(package)
    subs = [info.name for info in pkgutil.iter_modules(pkg.__path__) if info.name != "__main__"]
    for sub in subs:  # import every submodule: importing one must not replace a function
        try:
            importlib.import_module(f"{package}.{sub}")
        except ImportError as e:  # an optional extra (numba, onnx) missing here
            pytest.skip(f"{package}.{sub}: {e}")
    clashing = [s for s in subs if hasattr(pkg, s) and not isinstance(getattr(pkg, s), types.ModuleType)]
    assert clashing == []


def test_engine_export_works_twice_and_after_export_onnx(tmp_path):
    pytest.importorskip("onnx")
    import torch

    model = torch.nn.Sequential(onebit.QuantLinear(8, 4, kernel_quantizer="ste_sign"))
    for i in range(2):
        report = onebit.engine.export(model, tmp_path / f"m{i}.obe", (1, 8))
        assert report["file_bytes"] > 0
    onebit.engine.export_onnx(model, tmp_path / "m.onnx", (1, 8))
    assert callable(onebit.engine.export) and onebit.engine.export(model, tmp_path / "m2.obe", (1, 8))


def test_process_wide_switches_live_in_settings():
    """No module but onebit.settings rebinds module-level state with ``global`` (caches of a
    lazily imported module excepted), so every switch is in one place."""
    allowed = {"onebit.settings", "onebit.kernels", "onebit.constraints"}
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Global) and name not in allowed:
                offenders.append(f"{name}: global {', '.join(node.names)}")
    assert offenders == []
