"""Progress of an epoch: a live tqdm bar on a terminal, one plain line per epoch everywhere.

Why tqdm (and not rich): it is one small pure-Python package with no dependencies of its own,
it writes to any text stream (the trainer's ``stream``, a test's ``StringIO``), and its bar
already shows what a researcher asks of it (elapsed time, ETA, steps per second) with the
metrics as a postfix. rich draws finer live displays but brings its own console, markup and
pygments, none of which a one-line bar needs.

What is drawn where:

- a terminal: the bar is redrawn in place (at most every 0.1 s) and replaced at the epoch's end
  by the epoch's line;
- not a terminal (a log file, a pipe, a sweep's worker, CI): no bar, only the epoch's line;
- ``enabled=False`` (``--quiet``, every rank but 0 under torchrun, a sweep's worker processes):
  nothing. No tqdm object is created then, so no lock or thread either.

Metrics are passed by name, ``update(done, loss=0.31, acc=0.92, data_wait=0.04)``, and keep their
last value until passed again (cheap metrics can be passed every step, costly ones at log points
only). Names in ``PERCENT`` are fractions drawn in percent; other numbers are drawn with four
significant digits, strings as they are.
"""

from __future__ import annotations

import sys

__all__ = ["PERCENT", "Progress", "format_metrics"]

PERCENT = frozenset({"acc", "accuracy", "data_wait"})
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_metrics(metrics: dict) -> str:
    """``loss 0.3124  acc 91.20%  data wait 3.1%``: the metrics in the order given, None skipped."""
    parts = []
    for name, value in metrics.items():
        if value is None:
            continue
        label = name.replace("_", " ")
        if isinstance(value, str):
            parts.append(f"{label} {value}")
        elif name in PERCENT:
            parts.append(f"{label} {100 * value:.{1 if name == 'data_wait' else 2}f}%")
        else:
            parts.append(f"{label} {value:.4g}")
    return "  ".join(parts)


class Progress:
    """One epoch's progress: ``update(done, **metrics)`` after each step, ``finish(text, **metrics)``
    once at the end (one line: ``text`` then the metrics). ``start``: steps already done (a resumed
    epoch); the rate and ETA count from there."""

    def __init__(self, total: int, prefix: str, stream=None, enabled: bool = True, start: int = 0):
        self.total = max(total, 1)
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled
        self.metrics: dict = {}
        self.tty = enabled and _is_terminal(self.stream)  # whether a live bar is drawn
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=start,
                desc=prefix,
                file=self.stream,
                unit=" steps",
                bar_format=BAR_FORMAT,
                dynamic_ncols=True,
                leave=False,
                mininterval=0.1,
            )

    def update(self, done: int, **metrics) -> None:
        """``done`` steps of the epoch finished; ``metrics`` by name (see the module's docstring)."""
        self.metrics.update(metrics)
        if self.bar is None:
            return
        if metrics:
            self.bar.set_postfix_str(format_metrics(self.metrics), refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= self.total:
            self.bar.refresh()  # the full bar stays up while the epoch is evaluated

    def finish(self, text: str, **metrics) -> None:
        """End the epoch with one line: ``text`` followed by ``metrics`` (the bar is removed)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.enabled:
            return
        extra = format_metrics(metrics)
        self.stream.write(f"{self.prefix} {text}" + (f"  {extra}" if extra else "") + "\n")
        self.stream.flush()
