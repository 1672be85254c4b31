"""Recipes: the paper's and the reproduction study's experiments as data (TOML files here), and
users' own recipe files of the same schema (``onebit train path/to/recipe.toml``).

A recipe file has a ``[recipe]`` table (``description``, ``source``: the paper/report section it
reproduces, ``kind``: train | sweep | approximation-viewpoint, ``notes``: porting choices), a
``[config]`` table overriding the defaults of ``onebit.training.config``, and for sweeps a list
of ``[[runs]]`` (``label``, ``group`` and the keys that change).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..suggest import did_you_mean
from ..training.config import ConfigError, apply_overrides, defaults, parse_value, read_toml, validate

__all__ = ["KINDS", "Recipe", "is_recipe_file", "list_recipes", "load_recipe"]

KINDS = ("train", "sweep", "approximation-viewpoint")
SECTIONS = ("recipe", "config", "runs")  # a recipe file's tables
RECIPE_KEYS = ("description", "source", "kind", "notes")  # keys of its [recipe] table


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


def is_recipe_file(name: str) -> bool:
    """Whether ``name`` names a recipe file (ends in ``.toml`` or is a path) rather than a bundled recipe."""
    return name.endswith(".toml") or "/" in name or os.sep in name


def load_recipe(name: str | os.PathLike) -> Recipe:
    """A bundled recipe by name, or a recipe file (a path, or a name ending in ``.toml``) of the
    same schema; ``ConfigError`` with one line naming what is wrong (or the bundled recipes)."""
    name = os.fspath(name)
    if is_recipe_file(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"recipe file {name!r} does not exist; bundled recipes: {', '.join(list_recipes())}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read recipe file {name!r} ({getattr(e, 'strerror', None) or e})") from None
        return _parse_recipe(text, path.stem, f"recipe file {name!r}")
    files = _files()
    if name not in files:
        raise ConfigError(
            f"unknown recipe {name!r}{did_you_mean(name, files)}; available: {', '.join(sorted(files))} "
            "(or a path to your own .toml recipe)"
        )
    return _parse_recipe(files[name].read_text(encoding="utf-8"), name, f"recipe {name!r}")


def _check_table(table, allowed: tuple[str, ...], what: str) -> dict:
    """``table`` as a dict whose keys are all ``allowed`` (``ConfigError`` naming a stray one)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{what} must be a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{what}: unknown key {key!r}{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")
    return table


def _parse_recipe(text: str, name: str, what: str) -> Recipe:
    """A ``Recipe`` from TOML ``text``: every table, key and value checked, errors naming ``what``."""
    data = _check_table(read_toml(text, what), SECTIONS, what)
    meta = _check_table(data.get("recipe", {}), RECIPE_KEYS, f"{what} [recipe]")
    kind = meta.get("kind", "train")
    if kind not in KINDS:
        raise ConfigError(f"{what}: kind={kind!r}; allowed: {', '.join(KINDS)}")
    notes = meta.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ConfigError(f"{what} [recipe]: notes must be a list of strings")
    settings = _check_table(data.get("config", {}), tuple(defaults()), f"{what} [config]")
    config = defaults()
    try:
        for key, value in settings.items():
            config[key] = parse_value(key, value)
        validate(config)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    runs = data.get("runs", [])
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ConfigError(f"{what}: runs must be [[runs]] tables")
    if kind == "sweep" and not runs:
        raise ConfigError(f"{what} is a sweep without [[runs]]")
    recipe = Recipe(
        name=name,
        description=str(meta.get("description", "")),
        source=str(meta.get("source", "")),
        kind=kind,
        notes=list(notes),
        config=config,
        recipe_keys=tuple(settings),
        runs=[dict(r) for r in runs],
    )
    try:
        recipe.run_configs()  # validate the runs' keys now
    except ConfigError as e:
        raise ConfigError(f"{what} [[runs]]: {e}") from None
    return recipe
