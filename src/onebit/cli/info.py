"""``onebit list``, ``onebit summary`` and the recipe page of ``onebit train RECIPE --help``."""

from __future__ import annotations

from ..suggest import did_you_mean
from .common import Parser, UsageError, command, does_not_run, parse_input_size, zoo_model

__all__ = ["cmd_list", "cmd_summary", "recipe_help"]


def recipe_help(name: str) -> str:
    """A recipe's page: description, source, notes, every key with its value here, and the runs."""
    from ..recipes import load_recipe
    from ..training.config import FIELDS

    recipe = load_recipe(name)
    lines = [
        f"usage: onebit train {name} [key=value ...] [--resume RUN_DIR] [--seed N] [--seeds N] [--data-dir PATH] [--jobs N] [--quiet]",
        "",
        f"{name}: {recipe.description}",
        f"source: {recipe.source}",
        f"kind: {recipe.kind}" + (f" ({len(recipe.runs)} runs)" if recipe.runs else ""),
    ]
    lines += [f"  note: {note}" for note in recipe.notes]
    lines += ["", "keys (value in this recipe; * = set by the recipe):"]
    width = max(len(k) for k in FIELDS)
    for key, field in FIELDS.items():
        mark = "*" if key in recipe.recipe_keys else " "
        choices = f" [{'|'.join(map(str, field.choices))}]" if field.choices else ""
        lines.append(f" {mark}{key:<{width}} = {recipe.config[key]!r:<12} {field.help}{choices}")
    if recipe.runs:
        lines += ["", "runs:"]
        for run in recipe.runs:
            keys = ", ".join(f"{k}={v}" for k, v in run.items() if k not in ("label", "group"))
            group = run.get("group", "runs")
            group = group if isinstance(group, str) else ", ".join(group)
            lines.append(f"  {run['label']:<28} [{group}] {keys}")
    return "\n".join(lines)


@command
def cmd_list(argv: list[str]) -> int:
    """onebit list: the recipes (with their sources) and the models."""
    Parser(prog="onebit list", description="List the recipes and the models.").parse_args(argv)
    from ..models import list_models
    from ..recipes import list_recipes, load_recipe

    print("recipes (onebit train RECIPE):")
    for name in list_recipes():
        r = load_recipe(name)
        print(f"  {name:<28} {r.description}")
        print(f"  {'':<28} source: {r.source}")
    print("\nmodels (onebit summary MODEL):")
    print("  " + ", ".join(list_models()))
    return 0


def _recipe_input(config: dict) -> tuple[int, int, int]:
    """(C, H, W) of a recipe's data set, without reading it."""
    side = config["image_size"] or 224
    return {"mnist5k": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}.get(
        config["dataset"], (3, side, side)
    )


def _summary_model(name: str, shape, num_classes):
    """(model, input size) of a recipe or a zoo model name; the input size defaults to the
    recipe's data set or the model's own, and the model is built for the size asked."""
    from ..models import list_models
    from ..recipes import is_recipe_file, list_recipes, load_recipe
    from ..training.build import build_model

    if name in list_recipes() or is_recipe_file(name):
        config = load_recipe(name).config
        shape = shape or _recipe_input(config)
        classes = num_classes or (1000 if config["dataset"] == "imagefolder" else 10)
        return build_model(config, classes, shape), shape
    if name in list_models():
        return zoo_model(name, shape, num_classes)
    hint = did_you_mean(name, list_models() + list_recipes())
    raise UsageError(
        f"unknown model or recipe {name!r}{hint}; models: {', '.join(list_models())}; recipes: {', '.join(list_recipes())}"
    )


@command
def cmd_summary(argv: list[str]) -> int:
    """onebit summary MODEL|RECIPE: the layer table (bits, memory, MACs)."""
    p = Parser(prog="onebit summary", description="Print a model's layer table (bits, memory, MACs).")
    p.add_argument("model", help="a model name, a recipe name (onebit list) or a recipe file")
    p.add_argument(
        "--input-size", help="C,H,W of one input (default: from the recipe, or per model; the model is built for it)"
    )
    p.add_argument("--num-classes", type=int, default=None)
    args = p.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes {args.num_classes}: must be >= 1")
    import torch

    from ..model_summary import summary
    from ..models import list_models

    shape = parse_input_size(args.input_size) if args.input_size else None
    model, shape = _summary_model(args.model, shape, args.num_classes)
    model.eval()
    try:
        with torch.no_grad():
            table = summary(model, (1, *shape), print_fn=None)
    except ValueError as e:  # the model does not run on inputs of this size
        raise does_not_run(args.model, shape, e, args.model in list_models()) from None
    print(table)
    return 0
