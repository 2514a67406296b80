"""Progress bars that suit where the output goes.

On a terminal a bar redraws in place; in a notebook it is tqdm's widget. Anywhere else (a log file,
a pipe, a batch job's output) redrawing writes every refresh into the file, so the bar prints
whole lines instead: one when it starts, one every `LINE_SECONDS` while it runs and one when it
closes.
"""

from __future__ import annotations

import io
import sys
from typing import IO, Any

from tqdm import std
from tqdm.auto import tqdm as auto_tqdm

LINE_SECONDS = 30.0


class LineBar(std.tqdm):
    """A tqdm bar that prints its state to `file` (default stderr) as a new line, at most every
    `LINE_SECONDS` and when it closes; tqdm's own in-place redraws go nowhere."""

    def __init__(self, *args: Any, file: IO[str] | None = None, **options: Any):
        self.lines, self.last_line = file or sys.stderr, ""
        options.setdefault("mininterval", LINE_SECONDS)
        options.setdefault("maxinterval", LINE_SECONDS)
        options.setdefault("ncols", 80)
        options.setdefault("ascii", True)
        super().__init__(*args, file=io.StringIO(), **options)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        line = (self.__str__() if msg is None else msg).rstrip()
        if line and line != self.last_line:
            self.lines.write(line + "\n")
            self.lines.flush()
            self.last_line = line
        return True


def progress_bar(*args: Any, **options: Any) -> std.tqdm:
    """A tqdm bar (same arguments as `tqdm`) drawn in place on a terminal or in a notebook, and
    as periodic lines (`LineBar`) where its output is not a terminal."""
    if _in_notebook():
        return auto_tqdm(*args, **options)
    output = options.get("file") or sys.stderr
    if _is_terminal(output):
        return std.tqdm(*args, **options)
    return LineBar(*args, **options)


def _in_notebook() -> bool:
    return any(base.__module__ == "tqdm.notebook" for base in auto_tqdm.__mro__)


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
