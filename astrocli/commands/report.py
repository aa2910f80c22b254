"""``astro report RUN_DIR | CV_DIR | AUDIT_JSON``: one self-contained report.html to open in a browser."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astrocli.notices import warn_user


def write_end_report(target: Path, enabled: bool, say: bool = True) -> Path | None:
    """The report ``astro train`` / ``astro cv`` write when they finish (``output.report: false`` skips it).

    A report that cannot be written is a warning, never a failed run: the run itself is complete.
    """
    if not enabled:
        return None
    from astrocli.errors import AstroError  # lazy: keeps start-up torch-free
    from astrocli.experiments.report import write_report

    try:
        path = write_report(target)
    except (AstroError, OSError) as exc:
        warn_user(f"report.html not written ({exc}); try `astro report {target}`")
        return None
    if say:
        print(f"report: {path}")
    return path


def report_command(
    target: Annotated[
        Path, typer.Argument(help="A run folder, a cv folder, or an audit.json (or its folder).")
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the page (default: TARGET/report.html)."),
    ] = None,
    max_thumbs: Annotated[
        int, typer.Option("--max-thumbs", help="Thumbnails the page may hold (it says how many it left out).")
    ] = 300,
) -> None:
    """Write one self-contained HTML page: curves, confusion matrix, mistakes, duplicates, label errors."""
    from astrocli.errors import AstroError  # lazy: keeps start-up torch-free
    from astrocli.experiments.report import write_report

    if max_thumbs < 0:
        raise AstroError(f"--max-thumbs must be 0 or more, got {max_thumbs}")
    if not target.exists():
        raise AstroError(f"'{target}' does not exist; pass a run folder, a cv folder or an audit.json")
    print(f"wrote {write_report(target, output, max_thumbs)}")


def register(app: typer.Typer) -> None:
    """Add ``astro report`` to the CLI."""
    app.command("report")(report_command)
