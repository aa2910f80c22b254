"""``astro export``: ONNX, TorchScript or plain safetensors, each checked against PyTorch."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class OnnxExporter(str, Enum):
    auto = "auto"
    dynamo = "dynamo"
    torchscript = "torchscript"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    safetensors = "safetensors"


OUTPUT_HELP = (
    "Where to write (default: beside the checkpoint: NAME.onnx, NAME.torchscript.pt, "
    "NAME-safetensors/model.safetensors + config.json)."
)
EXPORTER_HELP = (
    "ONNX exporter: auto (torch.export-based, falling back to the TorchScript-based one), "
    "dynamo or torchscript."
)
IMAGES_HELP = (
    "Real images to verify on (files, directories, globs; repeatable). "
    "Default: a few from the checkpoint's recipe data when it is present."
)


def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="An astro .safetensors checkpoint.", show_default=False)],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="What to export to.")
    ] = ExportFormat.onnx,
    output: Annotated[Path | None, typer.Option("--output", "-o", help=OUTPUT_HELP)] = None,
    opset: Annotated[
        int | None, typer.Option("--opset", help="ONNX opset version (default: the exporter's).")
    ] = None,
    exporter: Annotated[OnnxExporter, typer.Option("--exporter", help=EXPORTER_HELP)] = OnnxExporter.auto,
    images: Annotated[list[str] | None, typer.Option("--images", help=IMAGES_HELP)] = None,
) -> None:
    """Export a checkpoint; ONNX and TorchScript are verified (rtol 1e-3, atol 1e-4) before writing."""
    from rich.markup import escape  # lazy: keeps start-up torch-free

    from astrocli.inference.export import export_checkpoint
    from astrocli.output import make_console

    console = make_console()
    with console.status(f"exporting {checkpoint} to {fmt.value} ..."):
        result = export_checkpoint(
            checkpoint, fmt.value, output=output, opset=opset, images=images, exporter=exporter.value
        )
    for check in result.checks:
        console.print(
            f"check vs PyTorch on {check.inputs}: max abs diff {check.max_abs_diff:.3g} "
            f"(rtol 1e-3, atol 1e-4) [green]ok[/]",
            highlight=False,
        )
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False)  # escape: notes may name 'astrocli[...]'
    exporter = f" with the {result.exporter} exporter" if result.exporter else ""
    console.print(f"wrote {result.path}{exporter}", highlight=False)
    for extra in result.extra_files:
        console.print(f"wrote {extra}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``astro export`` to the CLI."""
    app.command("export")(export_command)
