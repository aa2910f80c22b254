"""Options that several commands share, declared once in Typer's ``Annotated`` style.

A command uses one as the type of its parameter (``device: DeviceOption = "auto"``); Typer copies
the declaration for every command, so sharing it is safe.
"""

from __future__ import annotations

from typing import Annotated

import typer

from astrocli.output import FORMAT_HELP, OutputFormat

RECIPE_HELP = "Recipe YAML file or shipped recipe name (see `astro recipes`)."

Overrides = Annotated[
    list[str] | None,
    typer.Argument(metavar="[KEY=VALUE]...", help="Recipe overrides, e.g. train.epochs=5 data.root=/data"),
]
RecipeOption = Annotated[str | None, typer.Option("--recipe", "-r", help=RECIPE_HELP)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (PyTorch checkpoints).")]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help=FORMAT_HELP)]
