"""Torch-free kernels: bit packing and the packed file format, the numpy reference kernels and the
numba kernels of the binary ops, and convolution geometry.

Everything here runs on numpy arrays only. The layers (training) and the engine (inference) both
build on it; it imports nothing else of onebit. ``onebit.kernels.jit`` imports numba and raises
ImportError without it; ``jit_kernels()`` returns it, or None where numba is missing.
"""

from __future__ import annotations

import os

from .bits import EngineError, pack_bool, pack_sign, popcount, unpack_sign, words_for
from .geometry import out_size, same_padding

__all__ = [
    "EngineError",
    "jit_kernels",
    "jit_loaded",
    "out_size",
    "pack_bool",
    "pack_sign",
    "popcount",
    "same_padding",
    "unpack_sign",
    "words_for",
]

_jit = None  # the imported numba kernels; False once numba failed to import


def jit_kernels():
    """The numba kernels (module ``onebit.kernels.jit``), or None where numba does not import.

    Imported on first use: numba's import costs about a second, which a run that never takes a
    binary fast path should not pay. The result is cached for the process.

    Unless the environment says otherwise, OpenMP threads here wait passively (OMP_WAIT_POLICY):
    the runtime alternates numba's parallel kernels with BLAS and numpy, and OpenMP's default
    spin-wait made a 2-thread Bi-Real Net inference 10x slower than one thread. The OpenMP
    runtime reads this once, when it loads: in a process that imported torch first (which loads
    it), set it before Python starts, or give the runtime ``num_threads=1``."""
    global _jit
    if _jit is None:
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        try:
            from . import jit
        except ImportError:
            _jit = False
        else:
            _jit = jit
    return _jit or None


def jit_loaded() -> bool:
    """Whether the numba kernels are already imported in this process (never imports them)."""
    return bool(_jit)
