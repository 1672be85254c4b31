"""Every process-wide switch of onebit, in one place, thread-safe, settable for a block of code.

=====================  =======================  ========  =============================================
switch                 values                   default   what it changes
=====================  =======================  ========  =============================================
``popcount_forward``   "auto", "on", "off"      "auto"    Binary conv/dense layers in training compute
                       (True = "on",                      their forward with XOR + popcount (exact, the
                       False = "off")                     same outputs and gradients as torch's op), and
                                                          the sign STE takes one fused pass. "auto": for
                                                          layer calls of at least 2^28 multiply-adds,
                                                          when numba imports; "on": wherever it applies
                                                          (numba required); "off": torch's ops only.
=====================  =======================  ========  =============================================

``get(name)`` reads a switch. ``set(name=value)`` changes the process-wide value and returns the
previous ones. ``override(name=value)`` is a context manager that changes it for the current
thread only, until the block ends (other threads keep theirs)::

    with onebit.settings.override(popcount_forward="off"):
        loss = model(x)   # torch's ops for this block, in this thread

The training loop runs under ``override`` with the run's config, so a run never leaks its
switches into the rest of the process.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["SWITCHES", "get", "override", "set"]


def _popcount_forward(value):
    if value is True or value is False:
        value = "on" if value else "off"
    if value not in ("auto", "on", "off"):
        raise ValueError(f"popcount_forward={value!r} is not one of 'auto', 'on', 'off', True, False")
    if value == "on":
        from .kernels import jit_kernels

        if jit_kernels() is None:
            raise RuntimeError(
                "popcount_forward='on' needs numba, which is not installed "
                "(pip install 'onebit[jit]'); use 'auto' or 'off'"
            )
    return value


# name -> (default, validator returning the canonical value or raising ValueError / RuntimeError)
SWITCHES = {"popcount_forward": ("auto", _popcount_forward)}

_lock = threading.Lock()
_process = {name: default for name, (default, _) in SWITCHES.items()}
_local: contextvars.ContextVar[dict | None] = contextvars.ContextVar("onebit_settings", default=None)


def _canonical(values: dict) -> dict:
    out = {}
    for name, value in values.items():
        if name not in SWITCHES:
            raise ValueError(f"unknown onebit setting {name!r}; settings: {', '.join(sorted(SWITCHES))}")
        out[name] = SWITCHES[name][1](value)
    return out


def get(name: str) -> Any:
    """The current value of switch ``name`` in this thread (its override, else the process value)."""
    local = _local.get()
    if local is not None and name in local:
        return local[name]
    try:
        return _process[name]
    except KeyError:
        raise ValueError(f"unknown onebit setting {name!r}; settings: {', '.join(sorted(SWITCHES))}") from None


def set(**values: Any) -> dict[str, Any]:  # noqa: A001  (the verb is the API: onebit.settings.set(...))
    """Set switches for the whole process (threads with an ``override`` keep theirs); returns the
    previous values, so ``set(**previous)`` restores them."""
    values = _canonical(values)
    with _lock:
        previous = {name: _process[name] for name in values}
        _process.update(values)
    return previous


@contextlib.contextmanager
def override(**values: Any) -> Iterator[None]:
    """Context manager: the switches take these values in the current thread for the block only."""
    values = _canonical(values)
    local = dict(_local.get() or {})
    local.update(values)
    token = _local.set(local)
    try:
        yield
    finally:
        _local.reset(token)
