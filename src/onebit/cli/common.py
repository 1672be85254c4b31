"""What every ``onebit`` command shares: the argument parser with one-line errors, the errors that
are the user's (printed as one line, exit status 2, no traceback), and small argument helpers."""

from __future__ import annotations

import argparse
import functools
import sys

from ..data import DataError
from ..engine import EngineError
from ..training.config import ConfigError

__all__ = [
    "MAIN_RECIPE",
    "USER_ERRORS",
    "Parser",
    "UsageError",
    "command",
    "fail",
    "parse_input_size",
    "split_overrides",
]

MAIN_RECIPE = "mnist-bop"


class UsageError(Exception):
    """A bad command line (one line, names what is allowed)."""


# errors in what the user typed or pointed at: one line on stderr, exit status 2
USER_ERRORS = (UsageError, ConfigError, DataError, EngineError, FileNotFoundError)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``UsageError``) instead of usage + message + exit."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def fail(message: str, code: int = 2) -> int:
    """Print ``onebit: error: MESSAGE`` on stderr; returns the exit status."""
    sys.stderr.write(f"onebit: error: {message}\n")
    return code


def command(fn):
    """Decorate a command ``fn(argv) -> exit status``: the user's errors become one line on stderr
    and exit status 2."""

    @functools.wraps(fn)
    def run(argv: list[str], *args, **kwargs) -> int:
        try:
            return fn(argv, *args, **kwargs)
        except USER_ERRORS as e:
            return fail(str(e))

    return run


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """(positional arguments, ``key=value`` overrides)."""
    return [a for a in items if "=" not in a], [a for a in items if "=" in a]


def parse_input_size(text: str, flat: bool = False) -> tuple[int, ...]:
    """``--input-size C,H,W`` (or ``F`` when ``flat``: one feature vector) as positive ints."""
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) not in ((1, 3) if flat else (3,)) or min(dims) < 1:
        allowed = "C,H,W such as 3,32,32" + (", or F for flat inputs" if flat else "")
        raise UsageError(f"--input-size {text!r}: expected {allowed} (positive integers)")
    return dims
