"""Recipes: the paper's and the reproduction study's experiments as data (TOML files here).

A recipe file has a ``[recipe]`` table (``description``, ``source``: the paper/report section it
reproduces, ``kind``: train | sweep | approximation-viewpoint, ``notes``: porting choices), a
``[config]`` table overriding the defaults of ``onebit.training.config``, and for sweeps a list
of ``[[runs]]`` (``label``, ``group`` and the keys that change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from ..training.config import ConfigError, apply_overrides, defaults, parse_value, read_toml, validate

__all__ = ["KINDS", "Recipe", "list_recipes", "load_recipe"]

KINDS = ("train", "sweep", "approximation-viewpoint")


@dataclass
class Recipe:
    """A named experiment: resolved config (defaults + recipe) and, for sweeps, its runs."""

    name: str
    description: str
    source: str
    kind: str = "train"
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    recipe_keys: tuple = ()
    runs: list[dict] = field(default_factory=list)

    def with_overrides(self, overrides: list[str]) -> Recipe:
        """A copy whose config has the ``key=value`` overrides applied."""
        return Recipe(
            self.name,
            self.description,
            self.source,
            self.kind,
            list(self.notes),
            apply_overrides(self.config, overrides),
            self.recipe_keys,
            [dict(r) for r in self.runs],
        )

    def run_configs(self) -> list[tuple[dict, dict]]:
        """For sweeps: ``(run, config)`` per run, the run's keys applied over the config."""
        out = []
        for run in self.runs:
            cfg = dict(self.config)
            for key, value in run.items():
                if key not in ("label", "group"):
                    cfg[key] = parse_value(key, value)
            out.append((run, validate(cfg)))
        return out


def _files():
    return {p.name[: -len(".toml")]: p for p in resources.files(__name__).iterdir() if p.name.endswith(".toml")}


def list_recipes() -> list[str]:
    """Names of the bundled recipes, sorted."""
    return sorted(_files())


def load_recipe(name: str) -> Recipe:
    """Load the bundled recipe ``name`` (ConfigError naming the available ones if unknown)."""
    files = _files()
    if name not in files:
        raise ConfigError(f"unknown recipe {name!r}; available: {', '.join(sorted(files))}")
    data = read_toml(files[name].read_text(encoding="utf-8"), f"recipe {name!r}")
    meta = data.get("recipe", {})
    kind = meta.get("kind", "train")
    if kind not in KINDS:
        raise ConfigError(f"recipe {name!r}: kind={kind!r}; allowed: {', '.join(KINDS)}")
    config = defaults()
    for key, value in data.get("config", {}).items():
        config[key] = parse_value(key, value)
    validate(config)
    runs = [dict(r) for r in data.get("runs", [])]
    if kind == "sweep" and not runs:
        raise ConfigError(f"recipe {name!r} is a sweep without [[runs]]")
    recipe = Recipe(
        name=name,
        description=meta.get("description", ""),
        source=meta.get("source", ""),
        kind=kind,
        notes=list(meta.get("notes", [])),
        config=config,
        recipe_keys=tuple(data.get("config", {})),
        runs=runs,
    )
    recipe.run_configs()  # validate the runs' keys now
    return recipe
