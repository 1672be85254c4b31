"""numba sign packer for ``onebit.xnor``: float +/-1 tensors (any strides) -> engine bit words.

Same convention as ``onebit.engine.bits.pack_sign`` (bit = 1 iff value < 0, little-endian uint64
words along the last axis, unused bits 0), in one threaded pass that also counts the values that
are not exactly +/-1 (so a NoOp-tagged kernel that is not binary yet falls back to torch).
Importing this module raises ImportError when numba is missing.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _pack(x, out):
    a, b, c, k = x.shape
    words = out.shape[3]
    bad = 0
    for r in prange(a * b):
        i = r // b
        j = r % b
        for m in range(c):
            for q in range(words):
                lo = q * 64
                hi = min(lo + 64, k)
                word = np.uint64(0)
                for t in range(lo, hi):
                    v = x[i, j, m, t]
                    word |= np.uint64(v < 0) << np.uint64(t - lo)
                    bad += np.int64((v != 1.0) & (v != -1.0))
                out[i, j, m, q] = word
    return bad


def pack_sign(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(words, count of values not exactly +/-1) of a 4-D float32 array packed along its last axis."""
    out = np.empty(x.shape[:3] + ((x.shape[3] + 63) // 64,), np.uint64)
    return out, int(_pack(x, out))
