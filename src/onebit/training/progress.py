"""A small progress bar: redrawn in place with \\r on a terminal, plain per-epoch lines otherwise."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Per-epoch progress. ``update(done, info)`` redraws on a TTY (no output otherwise);
    ``finish(text)`` ends the epoch with one line on both."""

    def __init__(self, total: int, prefix: str, stream=None, enabled: bool = True, width: int = 24):
        self.total = max(total, 1)
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.start = time.perf_counter()
        self.info = ""
        self._last = 0.0

    def update(self, done: int, info: str | None = None) -> None:
        if info is not None:
            self.info = info
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and done < self.total and info is None:
            return
        self._last = now
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = now - self.start
        self.stream.write(f"\r{self.prefix} [{bar}] {done}/{self.total} {self.info} {elapsed:.1f}s\033[K")
        self.stream.flush()

    def finish(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r" if self.tty else "") + f"{self.prefix} {text}" + ("\033[K" if self.tty else "") + "\n")
        self.stream.flush()
