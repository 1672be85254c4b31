"""``onebit train`` (and resume), ``onebit eval``, ``onebit plot``, and the reproduction study's
experiments (``onebit approximation-viewpoint``, ``onebit lr-invariance``: ``onebit train NAME``)."""

from __future__ import annotations

import csv
import json
import os
import sys

from .. import training
from ..training import distributed
from ..training.runs import COMPARE_PLOT
from .common import MAIN_RECIPE, Parser, UsageError, command, one_line, split_overrides
from .info import recipe_help

__all__ = ["EXPERIMENTS", "cmd_eval", "cmd_plot", "cmd_train"]

EXPERIMENTS = ("approximation-viewpoint", "lr-invariance")
OPTIONS = "--resume, --seed, --seeds, --data-dir, --out, --epochs, --jobs, --quiet"


def _train_parser() -> Parser:
    p = Parser(
        prog="onebit train",
        description="Train a recipe. Every config key can be overridden with key=value; "
        "`onebit train RECIPE --help` lists the keys with the recipe's values.",
    )
    p.add_argument("recipe", nargs="?", default=None, help=f"recipe name (default {MAIN_RECIPE}; see `onebit list`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--seed", type=int, help="same as seed=N")
    p.add_argument("--seeds", type=int, help="same as seeds=N: N runs (seeds seed..seed+N-1), mean and std")
    p.add_argument("--data-dir", help="same as data_dir=PATH")
    p.add_argument("--out", help="same as out=DIR (root of run folders)")
    p.add_argument("--epochs", type=int, help="same as epochs=N")
    p.add_argument("--jobs", type=int, default=1, help="sweeps: runs in parallel processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the final summary")
    return p


def _help(argv: list[str], default_recipe: str | None) -> int:
    positional, _ = split_overrides([a for a in argv if not a.startswith("-")])
    name = positional[0] if positional else default_recipe
    if name is None:
        _train_parser().print_help()
        print(f"\nrecipe defaults: `onebit train {MAIN_RECIPE} --help`")
    else:
        print(recipe_help(name))
    return 0


def _parse(argv: list[str], default_recipe: str | None):
    """(options, recipe names given, key=value overrides incl. the --seed style options)."""
    args, rest = _train_parser().parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; allowed: {OPTIONS}")
    positional, overrides = split_overrides(([args.recipe] if args.recipe else []) + args.overrides + rest)
    if default_recipe is not None:
        positional = [default_recipe] + positional
    if len(positional) > 1:
        raise UsageError(f"one recipe at a time, got {positional}; overrides are key=value")
    for key in ("seed", "seeds", "data_dir", "out", "epochs"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={getattr(args, key)}")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be >= 1")
    return args, positional, overrides


def _resume(run_dir: str, positional: list[str], overrides: list[str], verbose: bool) -> dict:
    """Continue a run from its last.pt, with its recipe and config (plus the overrides); a run
    killed before its first checkpoint starts over (``training.resume_run``)."""
    if positional:
        raise UsageError(f"--resume takes the recipe from the run folder; drop {positional[0]!r}")
    return training.resume_run(run_dir, overrides, verbose=verbose)


def _run_recipe(name: str, overrides: list[str], jobs: int, verbose: bool) -> dict:
    """Train a recipe, run a sweep's runs, or run the approximation-viewpoint experiment."""
    from ..recipes import load_recipe

    recipe = load_recipe(name).with_overrides(overrides)
    if recipe.config["seeds"] > 1:
        from ..training.experiments import run_seeds

        return run_seeds(recipe, verbose=verbose)
    if recipe.kind == "sweep":
        from ..training.experiments import run_sweep

        return run_sweep(recipe, jobs=jobs, verbose=verbose)
    if recipe.kind == "approximation-viewpoint":
        from ..training.experiments import approximation_viewpoint

        return approximation_viewpoint(recipe, verbose=verbose)
    return training.train(recipe.config, recipe=recipe.name, source=recipe.source, verbose=verbose)


def _interrupted(e: Exception) -> int:
    """Ctrl-C saved a checkpoint: say how to continue (once, under torchrun with its launcher)."""
    if os.environ.get("RANK", "0") == "0":
        launcher = "torchrun ... -m onebit" if "TORCHELASTIC_RUN_ID" in os.environ else "onebit"
        sys.stderr.write(f"onebit: {e}; continue with: {launcher} train --resume {e.run_dir}\n")
    return 130


@command
def cmd_train(argv: list[str], default_recipe: str | None = None) -> int:
    """onebit train [RECIPE] [key=value ...] [--resume RUN_DIR]; with ``default_recipe`` the
    experiment commands (``onebit lr-invariance`` = ``onebit train lr-invariance``)."""
    if "-h" in argv or "--help" in argv:
        return _help(argv, default_recipe)
    args, positional, overrides = _parse(argv, default_recipe)
    verbose = not args.quiet
    try:
        if args.resume:
            summary = _resume(args.resume, positional, overrides, verbose)
        else:
            summary = _run_recipe(positional[0] if positional else MAIN_RECIPE, overrides, args.jobs, verbose)
    except training.Interrupted as e:
        return _interrupted(e)
    distributed.shutdown()  # under torchrun: every rank done before any leaves
    if not verbose:
        print(json.dumps(summary, indent=2) if "runs" in summary else training.format_summary(summary))
    return 0


@command
def cmd_eval(argv: list[str]) -> int:
    """onebit eval RUN_DIR: test accuracy of a run's checkpoint."""
    p = Parser(prog="onebit eval", description="Test accuracy of a run's checkpoint on its test set.")
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
    print(
        f"test accuracy {100 * r['test_accuracy']:.2f}%  loss {r['test_loss']:.4f}  ({r['examples']} examples, "
        f"{r['checkpoint']}, after epoch {r['epoch']})"
    )
    return 0


@command
def cmd_plot(argv: list[str]) -> int:
    """onebit plot RUN_DIR [RUN_DIR ...] [--label NAME ...]: each run's figures, and a comparison
    of several; a sweep's folder redraws its compare.png."""
    p = Parser(
        prog="onebit plot",
        description="Draw accuracy.png and flips.png (each with a PDF twin) for each run; with several runs also "
        "a comparison: test accuracy on top, log flip ratio below. A sweep's folder redraws its compare.png.",
    )
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default=COMPARE_PLOT, help=f"comparison PNG for several runs (default {COMPARE_PLOT})")
    p.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="the comparison's legend name of each run, in order (once per run; default the runs' recipes)",
    )
    p.add_argument("--title", help="the comparison's title (default the recipes and their shared settings)")
    args = p.parse_args(argv)
    from ..training.plots import is_sweep_folder, plot_compare, plot_run, plot_sweep

    sweeps = [d for d in args.run_dirs if is_sweep_folder(d)]
    runs = [d for d in args.run_dirs if d not in sweeps]
    if args.label is not None and len(args.label) != len(runs):
        raise UsageError(f"{len(args.label)} --label for {len(runs)} runs: give one --label per run")
    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out {args.out}: must be a .png file (a .pdf is written next to it)")
    try:
        for d in sweeps:
            print(plot_sweep(d))
        for d in runs:
            for path in plot_run(d):
                print(path)
        if len(runs) > 1:
            print(plot_compare(runs, args.out, labels=args.label, title=args.title))
    except (ValueError, KeyError, csv.Error) as e:  # a damaged metrics.csv / flips.csv
        what = f"missing column {e}" if isinstance(e, KeyError) else one_line(e)
        raise UsageError(
            f"cannot plot {' '.join(args.run_dirs)}: {what} (a damaged metrics.csv or flips.csv?)"
        ) from None
    return 0
