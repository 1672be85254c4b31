"""What every ``onebit`` command shares: the argument parser with one-line errors, the errors that
are the user's (printed as one line, exit status 2, no traceback), and small argument helpers."""

from __future__ import annotations

import argparse
import functools
import sys

from ..data import DataError
from ..engine import EngineError
from ..suggest import did_you_mean
from ..training.config import ConfigError

__all__ = [
    "MAIN_RECIPE",
    "USER_ERRORS",
    "Parser",
    "UsageError",
    "command",
    "does_not_run",
    "fail",
    "one_line",
    "parse_input_size",
    "split_overrides",
    "takes",
    "user_error",
    "zoo_model",
]

MAIN_RECIPE = "mnist-bop"


class UsageError(Exception):
    """A bad command line (one line, names what is allowed)."""


# errors in what the user typed or pointed at: one line on stderr, exit status 2 (besides these,
# every ValueError / TypeError class that onebit defines, e.g. a damaged checkpoint's)
USER_ERRORS = (UsageError, ConfigError, DataError, EngineError, OSError)


def user_error(e: BaseException) -> bool:
    """Whether ``e`` is the user's: a bad argument, value or file (not a bug of onebit's)."""
    if isinstance(e, BrokenPipeError):  # the reader went away (``| head``): not an error
        return False
    if isinstance(e, USER_ERRORS):
        return True
    return isinstance(e, (ValueError, TypeError)) and type(e).__module__.split(".")[0] == "onebit"


def one_line(e: BaseException) -> str:
    """The message of a user error as one line (an OSError as ``FILE: reason``)."""
    if isinstance(e, OSError) and e.strerror:  # from the system: "[Errno 21] ..." reads worse
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    else:
        text = str(e) or type(e).__name__
    return " ".join(t.strip() for t in text.splitlines() if t.strip())


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
        except Exception as e:
            if not user_error(e):
                raise
            return fail(one_line(e))

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


def _sizes(dims) -> str:
    return ",".join(map(str, dims))


def zoo_model(name: str, dims: tuple[int, ...] | None, num_classes: int | None = None):
    """(zoo model, input size (C, H, W)): ``name`` built for inputs of ``dims`` (its own default
    size when None; a builder that takes ``in_channels`` / ``image_size`` is built for them).
    ``UsageError`` when the model cannot be built for that size."""
    from ..models import create_model, list_models, model_info

    if name not in list_models():
        raise UsageError(f"{name!r} is not a zoo model{did_you_mean(name, list_models())} ({', '.join(list_models())})")
    info = model_info(name)
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    if dims is not None and len(dims) == 3:
        wanted = {"in_channels": dims[0], "image_size": dims[1]}
        kwargs.update({k: v for k, v in wanted.items() if info.accepts(k)})
    try:
        model = create_model(name, **kwargs)
    except ValueError as e:
        where = f"--input-size {_sizes(dims)}" if dims is not None else name
        raise UsageError(f"{where}: {e} ({takes(name)})") from None
    return model, tuple(dims) if dims is not None else info.input_size


def takes(name: str) -> str:
    """What input sizes zoo model ``name`` takes, in words (for error messages)."""
    from ..models import model_info

    info = model_info(name)
    channels = "any C" if info.accepts("in_channels") else f"C={info.input_size[0]}"
    side = "H = W (it is built for that size)" if info.accepts("image_size") else "any H, W large enough"
    return f"{name} takes C,H,W with {channels} and {side}; default {_sizes(info.input_size)}"


def does_not_run(name: str, dims, e: Exception, zoo: bool) -> UsageError:
    """The one line for a model whose forward pass fails on inputs of ``dims`` (C, H, W)."""
    cause = e.__context__ or e
    reason = next((t.strip() for t in str(cause).splitlines() if t.strip()), type(cause).__name__)
    hint = takes(name) if zoo else "see `onebit summary MODEL` for the model's own size"
    return UsageError(f"{name} does not run on input size {_sizes(dims)} ({reason}); {hint}")
