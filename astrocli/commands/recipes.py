"""``astro recipes``: the shipped recipes, with the model, data and paper result each targets."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``recipes`` command to the astro app."""

    @app.command("recipes")
    def recipes_command(
        as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    ) -> None:
        """List the shipped recipes: name, model, dataset, image size and the paper result they target."""
        import json

        from rich.console import Console
        from rich.table import Table

        from astrocli.recipe import PACKAGED_RECIPES, load_recipe

        rows = []
        for path in sorted(PACKAGED_RECIPES.glob("*.yaml")):
            recipe = load_recipe(path)
            rows.append(
                {
                    "name": path.stem,
                    "model": recipe.model.name,
                    "dataset": recipe.data.source,
                    "img_size": recipe.data.img_size,
                    "epochs": recipe.train.epochs,
                    "target": recipe.target,
                }
            )
        if as_json:
            for row in rows:
                print(json.dumps(row))
            return
        table = Table(title=f"{len(rows)} shipped recipes (astro train --recipe NAME)")
        for column in ("name", "model", "dataset", "img_size", "epochs", "target"):
            table.add_column(
                column, overflow="fold", justify="right" if column in ("img_size", "epochs") else "left"
            )
        for row in rows:
            table.add_row(
                *(str(row[c]) for c in ("name", "model", "dataset", "img_size", "epochs", "target"))
            )
        Console().print(table)
