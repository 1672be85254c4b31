"""The "did you mean" hint of one-line errors: the closest allowed name to a mistyped one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(word: str, allowed: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` naming the allowed name closest to ``word``, or ``""`` when
    none is close (difflib's ratio >= 0.6); to be put right after the bad name in a message."""
    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
