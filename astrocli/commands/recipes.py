"""``astro recipes``: the shipped recipes, with the model, data and paper result each targets."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from astrocli.commands.options import FormatOption
from astrocli.output import OutputFormat, make_console, rows_csv, rows_json

COLUMNS = ("name", "model", "dataset", "img_size", "epochs", "time", "target")


def _recipe_rows() -> list[dict[str, Any]]:
    """One row per shipped recipe, in name order."""
    from astrocli.recipe import PACKAGED_RECIPES, load_recipe  # lazy: keeps start-up torch-free

    rows = []
    for path in sorted(PACKAGED_RECIPES.glob("*.yaml")):
        recipe = load_recipe(path)
        rows.append(
            {
                "name": path.stem,
                "model": recipe.model.name,
                "dataset": recipe.data.source,
                "img_size": recipe.data.img_size,
                "epochs": recipe.train.epochs,  # with a time budget: the first epoch's plan
                "time": recipe.train.time,  # train.time in minutes (None: train.epochs decides)
                "target": recipe.target,
            }
        )
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.markup import escape  # lazy: keeps start-up torch-free
    from rich.table import Table

    table = Table(title=f"{len(rows)} shipped recipes (astro train --recipe NAME)")
    for column in COLUMNS:
        # Names never fold (a recipe name cut in two cannot be pasted); the free text may.
        table.add_column(
            column,
            overflow="fold" if column == "target" else "ellipsis",
            no_wrap=column != "target",
            justify="right" if column in ("img_size", "epochs", "time") else "left",
        )
    for row in rows:
        shown = {**row, "time": f"{row['time']:g} min" if row["time"] else ""}
        table.add_row(*(escape(str(shown[c])) for c in COLUMNS))
    make_console().print(table)


def recipes_command(
    fmt: FormatOption = OutputFormat.table,
    as_json: Annotated[
        bool,
        typer.Option("--json", hidden=True, help="Deprecated: one JSON object per line (use --format json)."),
    ] = False,
) -> None:
    """List the shipped recipes: name, model, dataset, image size and the paper result they target."""
    import json

    rows = _recipe_rows()
    if as_json:
        for row in rows:
            print(json.dumps(row))
    elif fmt is not OutputFormat.table:
        print(rows_json(rows) if fmt is OutputFormat.json else rows_csv(rows, COLUMNS), end="")
    else:
        _print_table(rows)


def register(app: typer.Typer) -> None:
    """Add the ``recipes`` command to the astro app."""
    app.command("recipes")(recipes_command)
