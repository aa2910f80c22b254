"""``astro models``: the zoo as a table (name, family, default image size, parameters, MACs)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from astrocli.commands.options import FormatOption
from astrocli.errors import AstroError
from astrocli.output import OutputFormat, make_console, rows_csv


def _describe(name: str, with_macs: bool, num_classes: int) -> dict[str, Any]:
    """One row: counted on the meta device, so even ViT-H costs no memory."""
    from astrocli.models import count_params, create_model, get_model_info  # lazy: keeps start-up torch-free

    info = get_model_info(name)
    model = create_model(name, num_classes=num_classes, img_size=info.default_img_size, device="meta")
    macs = None
    if with_macs:
        from astrocli.models.cost import count_macs  # lazy: keeps start-up torch-free

        macs = count_macs(model, info.default_img_size)
    return {
        "model": name,
        "family": info.family,
        "img_size": info.default_img_size,
        "params": count_params(model),
        "macs": macs,
        "paper_params_m": info.paper_params,
    }


def _print_table(rows: list[dict[str, Any]], num_classes: int) -> None:
    from rich.table import Table  # lazy: keeps start-up torch-free

    table = Table(title=f"astro model zoo ({num_classes} classes, MACs for one image at the default size)")
    for column in ("name", "family", "img size", "params", "MACs"):
        table.add_column(
            column, justify="left" if column in ("name", "family") else "right", no_wrap=column == "name"
        )
    for row in rows:
        macs = "-" if row["macs"] is None else f"{row['macs'] / 1e9:.3f} G"
        table.add_row(row["model"], row["family"], str(row["img_size"]), f"{row['params'] / 1e6:.3f} M", macs)
    make_console().print(table)


def models_command(
    family: Annotated[
        str | None, typer.Option("--family", help="Only this family (astroformer, cct, cvt, ...).")
    ] = None,
    macs: Annotated[
        bool, typer.Option("--macs/--no-macs", help="Count MACs (attention products included).")
    ] = True,
    num_classes: Annotated[
        int, typer.Option("--num-classes", help="Classifier size used for the counts.")
    ] = 10,
    output_format: FormatOption = OutputFormat.table,
) -> None:
    """List the model zoo: name, family, default image size, parameters and MACs."""
    from astrocli.models import FAMILIES, list_models  # lazy: keeps start-up torch-free

    if family is not None and family not in FAMILIES:
        raise AstroError(f"unknown family {family!r}; choose one of: {', '.join(FAMILIES)}")
    rows = [_describe(name, macs, num_classes) for name in list_models(family)]
    if output_format is OutputFormat.json:
        print(json.dumps(rows, indent=2))
    elif output_format is OutputFormat.csv:
        print(rows_csv(rows), end="")
    else:
        _print_table(rows, num_classes)


def register(app: typer.Typer) -> None:
    """Add ``astro models`` to the CLI."""
    app.command("models")(models_command)
