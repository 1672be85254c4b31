"""The ``onebit`` command.

    onebit --version                          onebit's version
    onebit train [recipe] [key=value ...]     train a recipe (default: mnist-bop, the main job)
    onebit train my-recipe.toml [key=value]   train your own recipe file (same schema as the bundled)
    onebit train --resume RUN_DIR [key=value] continue a run bit-identically
    onebit list                               recipes (with their sources) and models
    onebit summary MODEL|RECIPE               layer table: bits, memory, MACs
    onebit eval RUN_DIR                       test accuracy of a run's best checkpoint
    onebit plot RUN_DIR [RUN_DIR ...]         accuracy and flip-ratio PNGs (one comparison for several)
    onebit export RUN_DIR FILE                bit-packed engine file
    onebit bench-engine FILE|MODEL|RUN_DIR    engine vs torch timings
    onebit approximation-viewpoint [key=value]   the reproduction study's experiments
    onebit lr-invariance [key=value]

Errors in what the user typed are one line naming what is allowed, exit code 2, no traceback;
Ctrl-C during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import functools
import sys

from .. import __version__
from ..suggest import did_you_mean
from . import deploy, info, train
from .common import fail

__all__ = ["main"]

COMMANDS = {
    "train": train.cmd_train,
    "list": info.cmd_list,
    "summary": info.cmd_summary,
    "eval": train.cmd_eval,
    "plot": train.cmd_plot,
    "export": deploy.cmd_export,
    "bench-engine": deploy.cmd_bench_engine,
    **{name: functools.partial(train.cmd_train, default_recipe=name) for name in train.EXPERIMENTS},
}

USAGE = """usage: onebit COMMAND [...]    (onebit --version: the version)

commands:
  train [recipe] [key=value ...]   train a recipe (default mnist-bop, the main job); --resume RUN_DIR;
                                   a recipe is a bundled name or the path of your own .toml file
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
    if argv[0] in ("-V", "--version"):
        print(f"onebit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail(f"unknown command {name!r}{did_you_mean(name, COMMANDS)}; allowed: {', '.join(COMMANDS)}")
    try:
        return COMMANDS[name](rest)  # each command prints the user's errors as one line (exit 2)
    except KeyboardInterrupt:
        sys.stderr.write("onebit: aborted\n")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
