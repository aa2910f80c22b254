"""``astro predict``: labels for image files, from a checkpoint or an exported ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from astrocli.errors import AstroError
from astrocli.output import FORMAT_HELP, OutputFormat


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
    paths: list[str] = typer.Argument(
        ...,
        help="Image files, directories (walked) or glob patterns such as 'images/*.jpg'.",
        show_default=False,
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="A .safetensors checkpoint or exported .onnx model "
        "(default: best.safetensors of the most recent run under runs/).",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", help="How many classes to list per image."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Also write the predictions to FILE.json or FILE.csv (atomically)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (PyTorch checkpoints)."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help=FORMAT_HELP),
) -> None:
    """Predict the class of each image; unreadable files get an error row and exit status 1."""
    from astrocli.inference import load_runner
    from astrocli.output import make_console, rows_json
    from astrocli.predict import (
        check_output_path,
        collect_inputs,
        find_latest_checkpoint,
        predict_files,
        predictions_csv,
        write_predictions,
    )
    from astrocli.recipe import Recipe

    # With --format json/csv stdout carries the data only; the messages go to stderr.
    console = make_console(stderr=fmt is not OutputFormat.table)
    if output is not None:
        check_output_path(output)
    if batch_size < 1:
        raise AstroError(f"--batch-size must be at least 1, got {batch_size}")
    if top_k < 1:
        raise AstroError(f"--top-k must be at least 1, got {top_k}")
    inputs = collect_inputs(paths)
    for directory in inputs.empty_dirs:
        console.print(f"[yellow]warning:[/] no images in directory {directory}", highlight=False)
    if not inputs.files:
        reasons = [f"{m['path']}: {m['error']}" for m in inputs.missing]
        reasons += [f"{d}: empty directory (no image files)" for d in inputs.empty_dirs]
        raise AstroError(
            "nothing to predict (" + "; ".join(reasons) + "); pass image files, directories or globs"
        )

    if checkpoint is None:
        checkpoint = find_latest_checkpoint(Recipe().output.dir)
        console.print(f"using the latest run's checkpoint: {checkpoint}", highlight=False)
    runner = load_runner(checkpoint, device=device)
    console.print(f"model: {runner.describe()}", highlight=False)

    rows = predict_files(runner, inputs.files, top_k=top_k, batch_size=batch_size) + inputs.missing
    shown_k = min(top_k, len(runner.class_names))
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
