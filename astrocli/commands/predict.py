"""``astro predict``: labels for image files, from a checkpoint or an exported ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from astrocli.commands.options import DeviceOption, FormatOption
from astrocli.errors import AstroError
from astrocli.output import OutputFormat, make_console, rows_json

if TYPE_CHECKING:
    from astrocli.inference.predict import Inputs


def _table(rows: list[dict[str, Any]], top_k: int) -> Any:
    """path | label | score | top-k (or the error, for a file that could not be read)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="predictions")
    table.add_column("path", overflow="fold")
    table.add_column("label")
    table.add_column("score", justify="right")
    table.add_column(f"top-{top_k}", overflow="fold")
    for row in rows:
        if "error" in row:
            table.add_row(escape(row["path"]), "[red]error[/]", "-", f"[red]{escape(row['error'])}[/]")
        else:
            topk = ", ".join(f"{t['label']} {t['score']:.3f}" for t in row["topk"])
            table.add_row(escape(row["path"]), escape(row["label"]), f"{row['score']:.3f}", escape(topk))
    return table


def predict_command(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, directories (walked) or glob patterns such as 'images/*.jpg'.",
            show_default=False,
        ),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="A .safetensors checkpoint or exported .onnx model "
            "(default: best.safetensors of the most recent run under runs/).",
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes to list per image.")] = 5,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Also write the predictions to FILE.json or FILE.csv (atomically)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")] = 32,
    device: DeviceOption = "auto",
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Predict the class of each image; unreadable files get an error row and exit status 1."""
    from astrocli.inference.predict import (  # lazy: keeps start-up torch-free
        check_output_path,
        find_latest_checkpoint,
        predict_files,
    )
    from astrocli.inference.runner import load_runner
    from astrocli.recipe import Recipe

    # With --format json/csv stdout carries the data only; the messages go to stderr.
    console = make_console(stderr=fmt is not OutputFormat.table)
    if output is not None:
        check_output_path(output)
    if batch_size < 1:
        raise AstroError(f"--batch-size must be at least 1, got {batch_size}")
    if top_k < 1:
        raise AstroError(f"--top-k must be at least 1, got {top_k}")
    inputs = _inputs(console, paths)
    if checkpoint is None:
        checkpoint = find_latest_checkpoint(Recipe().output.dir)
        console.print(f"using the latest run's checkpoint: {checkpoint}", highlight=False)
    runner = load_runner(checkpoint, device=device)
    console.print(f"model: {runner.describe()}", highlight=False)
    rows = predict_files(runner, inputs.files, top_k=top_k, batch_size=batch_size) + inputs.missing
    _show(console, rows, min(top_k, len(runner.class_names)), fmt, output)


def _inputs(console: Any, paths: list[str]) -> Inputs:
    """The image files ``paths`` name (warning about empty directories); an error when there are none."""
    from astrocli.inference.predict import collect_inputs  # lazy: keeps start-up torch-free

    inputs = collect_inputs(paths)
    for directory in inputs.empty_dirs:
        console.print(f"[yellow]warning:[/] no images in directory {directory}", highlight=False)
    if not inputs.files:
        reasons = [f"{m['path']}: {m['error']}" for m in inputs.missing]
        reasons += [f"{d}: empty directory (no image files)" for d in inputs.empty_dirs]
        raise AstroError(
            "nothing to predict (" + "; ".join(reasons) + "); pass image files, directories or globs"
        )
    return inputs


def _show(
    console: Any, rows: list[dict[str, Any]], shown_k: int, fmt: OutputFormat, output: Path | None
) -> None:
    """The rows as a table (or json/csv on stdout), then ``--output``; exit status 1 if any input failed."""
    from astrocli.inference.predict import (  # lazy: keeps start-up torch-free
        predictions_csv,
        write_predictions,
    )

    if fmt is OutputFormat.table:
        console.print(_table(rows, shown_k))
    else:
        print(rows_json(rows) if fmt is OutputFormat.json else predictions_csv(rows, shown_k), end="")
    failed = sum("error" in row for row in rows)
    if output is not None:
        write_predictions(rows, output)
        console.print(f"wrote {len(rows)} rows to {output}", highlight=False)
    if failed:
        console.print(f"[red]{failed} of {len(rows)} inputs could not be predicted[/]", highlight=False)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``astro predict`` to the CLI."""
    app.command("predict")(predict_command)
