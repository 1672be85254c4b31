"""mkdocs hook: fills docs/cli.md's ``<!-- onebit-help: COMMAND -->`` markers with the output of
``onebit COMMAND --help`` (``onebit --help`` for an empty COMMAND), so the command-line reference
is always the installed version's."""

from __future__ import annotations

import contextlib
import io
import re

MARKER = re.compile(r"<!-- onebit-help: *([a-z-]*) *-->")


def command_help(command: str) -> str:
    """What ``onebit COMMAND --help`` prints."""
    from onebit.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([command, "--help"] if command else ["--help"])
        except SystemExit:  # argparse's --help exits after printing
            pass
    return out.getvalue().rstrip()


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace every help marker of a page by that help text, as a code block."""
    return MARKER.sub(lambda m: "```text\n" + command_help(m.group(1)) + "\n```", markdown)
