"""How commands print: tables with `rich`, progress on stderr, and the plain forms of both.

What a command answers (tables, trees, JSON) goes to stdout; progress and notes go to stderr, so
`bitware run … > out.txt` keeps only the answer. On a terminal, tables get rules and colour and
progress is one bar redrawn in place; when the stream is not a terminal, or NO_COLOR is set,
tables are plain aligned columns and progress is one line per event.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from bitware_client import ProgressEvent
from bitware_mesh.cli.common import bar


def fancy(stream: TextIO) -> bool:
    """True when `stream` is a terminal and colour is not turned off (NO_COLOR)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def console(stream: TextIO) -> Console:
    return Console(file=stream, highlight=False)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A table on stdout: drawn by rich on a terminal, plain aligned columns otherwise."""
    cells = [[str(cell) for cell in row] for row in rows]
    if fancy(sys.stdout):
        table = Table(*headers, box=box.SIMPLE, header_style="bold", pad_edge=False)
        for row in cells:
            table.add_row(*row)
        console(sys.stdout).print(table)
        return
    widths = [max(len(line[i]) for line in [list(headers), *cells]) for i in range(len(headers))]
    for line in [list(headers), *cells]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def describe(event: ProgressEvent) -> str:
    text = f"{event.type.replace('_', ' ')}: {event.message}"
    if event.error_message:
        text += f" ({event.error_reason}: {event.error_message})"
    return text


class ProgressView:
    """An execution's progress on stderr: a rich bar redrawn in place on a terminal, else one
    line per event (`[####----]  40%  stage progress: …`)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.live = fancy(sys.stderr) and not quiet
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if self.live:
            self._bar = Progress(
                TextColumn("{task.percentage:>3.0f}%"),
                BarColumn(),
                TextColumn("{task.description}", style="dim"),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._task = self._bar.add_task("", total=1.0)
            self._bar.start()

    def show(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        if self._bar is not None and self._task is not None:
            # One line, cut to the terminal: a long message must not break the redraw.
            width = max(20, self._bar.console.width - 50)
            self._bar.update(
                self._task, completed=event.progress, description=describe(event)[:width]
            )
            return
        print(f"{bar(event.progress)}  {describe(event)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
