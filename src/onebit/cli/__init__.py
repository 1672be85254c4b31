"""The ``onebit`` command.

    onebit train [recipe] [key=value ...]     train a recipe (default: mnist-bop, the main job)
    onebit train --resume RUN_DIR [key=value] continue a run bit-identically
    onebit list                               recipes (with their sources) and models
    onebit summary MODEL|RECIPE               layer table: bits, memory, MACs
    onebit eval RUN_DIR                       test accuracy of a run's best checkpoint
    onebit plot RUN_DIR [RUN_DIR ...]         accuracy and flip-ratio PNGs (one comparison for several)
    onebit approximation-viewpoint [key=value]   the reproduction study's experiments
    onebit lr-invariance [key=value]

Errors in what the user typed are one line naming what is allowed, exit code 2, no traceback;
Ctrl-C during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]

MAIN_RECIPE = "mnist-bop"
EXPERIMENT_COMMANDS = ("approximation-viewpoint", "lr-invariance")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + message."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"onebit: error: {message}\n")
    return code


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    positional = [a for a in items if "=" not in a]
    overrides = [a for a in items if "=" in a]
    return positional, overrides


# ----------------------------------------------------------------------------- train


def _train_parser() -> _Parser:
    p = _Parser(
        prog="onebit train",
        description="Train a recipe. Every config key can be overridden with key=value; "
        "`onebit train RECIPE --help` lists the keys with the recipe's values.",
    )
    p.add_argument("recipe", nargs="?", default=None, help=f"recipe name (default {MAIN_RECIPE}; see `onebit list`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--seed", type=int, help="same as seed=N")
    p.add_argument("--data-dir", help="same as data_dir=PATH")
    p.add_argument("--out", help="same as out=DIR (root of run folders)")
    p.add_argument("--epochs", type=int, help="same as epochs=N")
    p.add_argument("--jobs", type=int, default=1, help="sweeps: runs in parallel processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the final summary")
    return p


def _recipe_help(name: str) -> str:
    from ..recipes import load_recipe
    from ..training.config import FIELDS

    recipe = load_recipe(name)
    lines = [
        f"usage: onebit train {name} [key=value ...] [--resume RUN_DIR] [--seed N] [--data-dir PATH] [--jobs N] [--quiet]",
        "",
        f"{name}: {recipe.description}",
        f"source: {recipe.source}",
        f"kind: {recipe.kind}" + (f" ({len(recipe.runs)} runs)" if recipe.runs else ""),
    ]
    for note in recipe.notes:
        lines.append(f"  note: {note}")
    lines += ["", "keys (value in this recipe; * = set by the recipe):"]
    width = max(len(k) for k in FIELDS)
    for key, field in FIELDS.items():
        mark = "*" if key in recipe.recipe_keys else " "
        value = recipe.config[key]
        choices = f" [{'|'.join(map(str, field.choices))}]" if field.choices else ""
        lines.append(f" {mark}{key:<{width}} = {value!r:<12} {field.help}{choices}")
    if recipe.runs:
        lines += ["", "runs:"]
        for run in recipe.runs:
            keys = ", ".join(f"{k}={v}" for k, v in run.items() if k not in ("label", "group"))
            group = run.get("group", "runs")
            group = group if isinstance(group, str) else ", ".join(group)
            lines.append(f"  {run['label']:<28} [{group}] {keys}")
    return "\n".join(lines)


def cmd_train(argv: list[str], default_recipe: str | None = None) -> int:
    from ..recipes import load_recipe

    if "-h" in argv or "--help" in argv:
        positional, _ = _split_overrides([a for a in argv if not a.startswith("-")])
        name = positional[0] if positional else default_recipe
        if name is None:
            _train_parser().print_help()
            print(f"\nrecipe defaults: `onebit train {MAIN_RECIPE} --help`")
        else:
            print(_recipe_help(name))
        return 0
    args, rest = _train_parser().parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; allowed: --resume, --seed, --data-dir, --out, --epochs, --jobs, --quiet")
    items = ([args.recipe] if args.recipe else []) + args.overrides + rest
    positional, overrides = _split_overrides(items)
    if default_recipe is not None:
        positional = [default_recipe] + positional
    if len(positional) > 1:
        raise UsageError(f"one recipe at a time, got {positional}; overrides are key=value")
    for flag, key in (("seed", "seed"), ("data_dir", "data_dir"), ("out", "out"), ("epochs", "epochs")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be >= 1")
    verbose = not args.quiet

    from ..training import Interrupted, format_summary, train
    from ..training.config import apply_overrides

    try:
        if args.resume:
            if positional:
                raise UsageError(f"--resume takes the recipe from the run folder; drop {positional[0]!r}")
            from pathlib import Path

            from ..training import load_checkpoint

            last = Path(args.resume) / "last.pt"
            if not last.is_file():
                raise UsageError(f"--resume {args.resume}: expected a run folder with last.pt; none at {last}")
            ckpt = load_checkpoint(last)
            config = apply_overrides(ckpt["config"], overrides)
            summary = train(config, recipe=ckpt["recipe"], source=ckpt.get("source", ""), resume=args.resume, verbose=verbose)
        else:
            recipe = load_recipe(positional[0] if positional else MAIN_RECIPE).with_overrides(overrides)
            if recipe.kind == "sweep":
                from ..training.experiments import run_sweep

                summary = run_sweep(recipe, jobs=args.jobs, verbose=verbose)
            elif recipe.kind == "approximation-viewpoint":
                from ..training.experiments import approximation_viewpoint

                summary = approximation_viewpoint(recipe, verbose=verbose)
            else:
                summary = train(recipe.config, recipe=recipe.name, source=recipe.source, verbose=verbose)
    except Interrupted as e:
        import os

        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, with the launcher to rerun
            launcher = "torchrun ... -m onebit" if "TORCHELASTIC_RUN_ID" in os.environ else "onebit"
            sys.stderr.write(f"onebit: {e}; continue with: {launcher} train --resume {e.run_dir}\n")
        return 130
    if not verbose:
        if "runs" in summary:
            print(json.dumps(summary, indent=2))
        else:
            print(format_summary(summary))
    return 0


# ----------------------------------------------------------------------------- other commands


def cmd_list(argv: list[str]) -> int:
    _Parser(prog="onebit list", description="List the recipes and the models.").parse_args(argv)
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


def _input_shape(config: dict) -> tuple[int, int, int]:
    return {"mnist5k": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}.get(
        config["dataset"], (3, config["image_size"] or 224, config["image_size"] or 224)
    )


MODEL_INPUTS = {"small_cnn": (1, 28, 28), "binarynet": (3, 32, 32)}


def cmd_summary(argv: list[str]) -> int:
    p = _Parser(prog="onebit summary", description="Print a model's layer table (bits, memory, MACs).")
    p.add_argument("model", help="a model name or a recipe name (onebit list)")
    p.add_argument("--input-size", help="C,H,W of one input (default: from the recipe, or per model)")
    p.add_argument("--num-classes", type=int, default=None)
    args = p.parse_args(argv)
    import torch

    from ..models import create_model, list_models
    from ..recipes import list_recipes, load_recipe
    from ..training.build import build_model

    shape = None
    if args.input_size:
        try:
            shape = tuple(int(v) for v in args.input_size.split(","))
            assert len(shape) == 3 and min(shape) > 0
        except (ValueError, AssertionError):
            raise UsageError(f"--input-size {args.input_size!r}: expected C,H,W such as 3,32,32") from None
    if args.model in list_recipes():
        config = load_recipe(args.model).config
        shape = shape or _input_shape(config)
        classes = args.num_classes or (1000 if config["dataset"] == "imagefolder" else 10)
        model = build_model(config, classes, shape)
    elif args.model in list_models():
        shape = shape or MODEL_INPUTS.get(args.model, (3, 224, 224))
        kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
        model = create_model(args.model, **kwargs)
    else:
        raise UsageError(
            f"unknown model or recipe {args.model!r}; models: {', '.join(list_models())}; recipes: {', '.join(list_recipes())}"
        )
    from ..model_summary import summary as model_summary

    model.eval()
    with torch.no_grad():
        result = model_summary(model, (1, *shape), print_fn=None)
    print(result)
    return 0


def cmd_eval(argv: list[str]) -> int:
    p = _Parser(prog="onebit eval", description="Test accuracy of a run's checkpoint on its test set.")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data_dir=PATH if the data moved")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    args = p.parse_args(argv)
    from ..training.config import parse_value
    from ..training.experiments import evaluate_run

    overrides = {}
    for item in args.overrides:
        if "=" not in item:
            raise UsageError(f"bad override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        overrides[k] = parse_value(k, v)
    r = evaluate_run(args.run_dir, args.checkpoint, overrides)
    print(f"test accuracy {100 * r['test_accuracy']:.2f}%  loss {r['test_loss']:.4f}  ({r['examples']} examples, "
          f"{r['checkpoint']}, after epoch {r['epoch']})")
    return 0


def cmd_plot(argv: list[str]) -> int:
    p = _Parser(prog="onebit plot", description="Draw accuracy.png and flips.png for each run; with several runs also a comparison.")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default="compare.png", help="comparison PNG for several runs (default compare.png)")
    args = p.parse_args(argv)
    from ..training.plots import plot_compare, plot_run

    for d in args.run_dirs:
        for path in plot_run(d):
            print(path)
    if len(args.run_dirs) > 1:
        print(plot_compare(args.run_dirs, args.out))
    return 0


def cmd_export(argv: list[str]) -> int:
    from .deploy import cmd_export as run

    return run(argv)


def cmd_bench_engine(argv: list[str]) -> int:
    from .deploy import cmd_bench_engine as run

    return run(argv)


COMMANDS = {
    "train": cmd_train,
    "list": cmd_list,
    "summary": cmd_summary,
    "eval": cmd_eval,
    "plot": cmd_plot,
    "export": cmd_export,
    "bench-engine": cmd_bench_engine,
}

USAGE = """usage: onebit COMMAND [...]

commands:
  train [recipe] [key=value ...]   train a recipe (default mnist-bop, the main job); --resume RUN_DIR
  list                             recipes with their sources, and models
  summary MODEL|RECIPE             layer table: bits, memory, binary/float MACs
  eval RUN_DIR                     test accuracy of a run's best checkpoint
  plot RUN_DIR [RUN_DIR ...]       accuracy and log-flip-ratio plots
  export RUN_DIR FILE [--onnx F]   bit-packed engine file (1 bit per binary weight), runs without torch
  bench-engine FILE|MODEL|RUN_DIR  engine vs torch fp32 timings (--batch 1 50 --threads 2)
  approximation-viewpoint          the reproduction study's experiments (= onebit train NAME)
  lr-invariance

`onebit COMMAND --help` for details; `onebit train RECIPE --help` lists every key and its value."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``onebit`` console script (and ``python -m onebit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    from ..data import DataError
    from ..training.config import ConfigError

    try:
        if command in EXPERIMENT_COMMANDS:
            return cmd_train(rest, default_recipe=command)
        if command not in COMMANDS:
            raise UsageError(f"unknown command {command!r}; allowed: {', '.join(list(COMMANDS) + list(EXPERIMENT_COMMANDS))}")
        return COMMANDS[command](rest)
    except (UsageError, ConfigError, DataError) as e:
        return _fail(str(e))
    except FileNotFoundError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        sys.stderr.write("onebit: aborted\n")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
