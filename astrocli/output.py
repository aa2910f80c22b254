"""What every command shares for its output: ``--format table|json|csv`` and consoles that do not
wrap names and paths when the output goes to a pipe or a file.

Rich sizes a console to the terminal; when stdout is not a terminal it falls back to ``COLUMNS`` or
80 columns and folds table cells and long lines there, cutting paths mid-word in a log or a
``| grep``. :func:`make_console` gives such a console a width no line reaches, so every line comes
out whole and tables take their natural width. In a terminal nothing changes.

Torch-free: commands import it at start-up.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from enum import Enum
from typing import Any

from rich.console import Console

# Width of a console writing to a pipe or a file: wider than any line astro prints, so nothing wraps.
PIPE_WIDTH = 100_000


class OutputFormat(str, Enum):
    """``--format``: a rich table for people, JSON (one array of objects) or CSV for programs."""

    table = "table"
    json = "json"
    csv = "csv"


FORMAT_HELP = "table (for people), json or csv (for programs; messages then go to stderr)."


def make_console(stderr: bool = False, **kwargs: Any) -> Console:
    """A rich console on stdout (or stderr) that never wraps a line when it is not a terminal."""
    console = Console(stderr=stderr, **kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console = Console(stderr=stderr, width=PIPE_WIDTH, **kwargs)
    return console


def render_text(renderable: Any) -> str:
    """``renderable`` (a rich table, ...) as plain text at stdout's width, or unwrapped when piped."""
    width = make_console().width
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def rows_json(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as one JSON array (what ``--format json`` prints)."""
    return json.dumps(list(rows), indent=2, default=str) + "\n"


def rows_csv(rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> str:
    """The rows as CSV with a header (columns: ``fieldnames``, default the union of the rows' keys)."""
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fieldnames})
    return buffer.getvalue()
