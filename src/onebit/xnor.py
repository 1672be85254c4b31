"""The popcount-forward switch under its short name: ``onebit.xnor.use(False)`` and friends.

The switch itself is ``popcount_forward`` in ``onebit.settings`` (where every process-wide switch
lives); the kernels are ``onebit.layers.popcount``. These functions read and set that switch:

- ``set_mode("auto" | "on" | "off" | True | False)``: for the whole process; returns the previous mode.
- ``get_mode()``: the mode in this thread.
- ``use(mode)``: context manager, the mode for a block of code in this thread only.
- ``available()``: whether numba imports (the popcount forward can run).
"""

from __future__ import annotations

import contextlib

from . import settings
from .functional import MIN_ELEMENTS, sign_and_mask
from .layers.popcount import MIN_MACS, available, conv2d, linear

__all__ = ["MIN_ELEMENTS", "MIN_MACS", "available", "conv2d", "get_mode", "linear", "set_mode", "sign_and_mask", "use"]


def set_mode(mode: str | bool) -> str:
    """Set the popcount forward for the whole process; returns the previous mode.

    "on" without numba raises RuntimeError (install ``onebit[jit]`` or use "auto" / "off")."""
    return settings.set(popcount_forward=mode)["popcount_forward"]


def get_mode() -> str:
    """The popcount forward's mode in this thread: "auto", "on" or "off"."""
    return settings.get("popcount_forward")


def use(mode: str | bool = True) -> contextlib.AbstractContextManager[None]:
    """Context manager: ``with onebit.xnor.use(False): ...`` runs torch's path inside (this thread)."""
    return settings.override(popcount_forward=mode)
