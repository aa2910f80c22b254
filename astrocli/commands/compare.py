"""``astro compare A [B]``: two runs, two cv folders (paired differences), or a cv folder vs its target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from astrocli.commands.cv import METRIC_LABELS
from astrocli.output import make_console


def _label(key: str) -> str:
    split = "test " if key.startswith("test_") else "val "
    return split + METRIC_LABELS.get(key.removeprefix("test_"), key)


def _digits(key: str) -> int:
    return 4 if key.endswith("loss") else 2


def comparison_table(report: dict[str, Any]) -> Any:
    """A rich table for any kind of comparison."""
    from rich.markup import escape
    from rich.table import Table

    if report["kind"] == "target":
        table = Table(title=f"{escape(report['cv'])} vs its target", show_header=False)
        ci = report["ci95"]
        table.add_row("target", escape(report["target"]))
        table.add_row("paper number", f"{report['target_value']:.2f}")
        table.add_row(
            f"cv {_label(report['metric'])}",
            f"{report['mean']:.2f}" + (f" \\[{ci[0]:.2f}, {ci[1]:.2f}] 95% CI" if ci else ""),
        )
        table.add_row("paper number is", f"[bold]{report['position']}[/] the interval")
        return table
    table = Table(title=f"A = {escape(report['a'])}   B = {escape(report['b'])}", header_style="bold")
    for name in ("metric", "A", "B", "A - B"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    table.add_column("95% CI of A - B", justify="right")
    table.add_column("p" if report["kind"] == "runs" else "excludes 0", justify="center")
    for key, row in report["metrics"].items():
        d = _digits(key)
        if report["kind"] == "runs":
            lo, hi = row["ci95"]
            table.add_row(
                _label(key),
                f"{row['a']:.{d}f}",
                f"{row['b']:.{d}f}",
                f"{row['difference']:+.{d}f}",
                f"\\[{lo:+.{d}f}, {hi:+.{d}f}]",
                f"{row['p']:.3g}",
            )
            continue
        diff = row["difference"]
        ci = diff["ci95"]
        table.add_row(
            _label(key),
            f"{row['a_mean']:.{d}f}",
            f"{row['b_mean']:.{d}f}",
            f"{diff['mean']:+.{d}f}",
            f"\\[{ci[0]:+.{d}f}, {ci[1]:+.{d}f}]" if ci else "-",
            "[bold green]yes[/]" if diff["excludes_zero"] else "no",
        )
    return table


def compare_command(
    a: Annotated[Path, typer.Argument(help="A run directory or a cv folder.", show_default=False)],
    b: Annotated[
        Path | None,
        typer.Argument(
            help="Another run directory or cv folder (omit: compare A's cv with its recipe target).",
            show_default=False,
        ),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the comparison to this JSON file.")
    ] = None,
    partial: Annotated[
        bool,
        typer.Option("--partial", help="Two cvs: pair the runs both have finished, even if some have not."),
    ] = False,
) -> None:
    """Compare two runs or two cv folders (paired differences with a 95% CI), or a cv with its target."""
    from astrocli.experiments.compare import compare_paths, dumps  # lazy: keeps start-up torch-free
    from astrocli.files import atomic_write_text, check_writable

    if json_path is not None:
        check_writable(json_path)
    report = compare_paths(a, b, partial=partial)
    console = make_console(highlight=False)
    console.print(comparison_table(report))
    if report["kind"] == "cv":
        paired, planned = len(report["paired_runs"]), report["planned_runs"]
        note = " [bold yellow](partial: not every run has finished)[/]" if report["partial"] else ""
        console.print(f"paired over {paired} of {planned} runs (same fold, same seed){note}")
    if report["kind"] == "runs":
        console.print(f"paired over the same {report['num_images']} held-out images; {report['method']}")
    if json_path is not None:
        atomic_write_text(json_path, dumps(report))
        console.print(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add ``astro compare`` to the CLI."""
    app.command("compare")(compare_command)
