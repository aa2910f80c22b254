"""``astro train --recipe FILE [KEY=VALUE ...]``: train a recipe; ``--resume RUN_DIR`` continues a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astrocli.commands.options import Overrides, RecipeOption


def train_command(
    overrides: Overrides = None,
    recipe: RecipeOption = None,
    print_recipe: Annotated[
        bool, typer.Option("--print-recipe", help="Print the resolved recipe and exit.")
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue the interrupted run in RUN_DIR.", metavar="RUN_DIR"),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only warnings and the run directory.")
    ] = False,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="Print one JSON object per event (for scripts).")
    ] = False,
) -> None:
    """Train a model from a recipe; prints the run directory at the end."""
    from astrocli.engine.budget import describe as describe_budget  # lazy: keeps start-up torch-free
    from astrocli.errors import AstroError  # lazy: keeps start-up torch-free
    from astrocli.recipe import load_recipe

    if quiet and jsonl:
        raise AstroError("choose one of --quiet and --jsonl")
    if resume is None and recipe is None:
        raise AstroError("give --recipe FILE (see `astro recipes`) or --resume RUN_DIR")
    if resume is not None and recipe is not None:
        raise AstroError(
            "--resume continues a run with its own recipe; drop --recipe (KEY=VALUE still applies)"
        )
    log = "quiet" if quiet else "jsonl" if jsonl else None

    if print_recipe:
        if resume is not None:
            from astrocli.engine.run_dir import RunDir  # lazy: keeps start-up torch-free

            _, resolved = RunDir(resume).load_resume(overrides or [])
            comments: list[str] = []
        else:
            from astrocli.data.defaults import resolve_for_print  # lazy: keeps start-up torch-free

            resolved, comments = resolve_for_print(load_recipe(recipe, overrides or []))
        budget = describe_budget(resolved.train.time, resolved.train.epochs)
        comments = [*comments, *([budget] if budget else [])]
        print("".join(f"# {line}\n" for line in comments) + resolved.to_yaml(), end="")
        return

    from astrocli.engine import train  # lazy: keeps start-up torch-free

    if resume is not None:
        train(resume_dir=resume, overrides=overrides or [], log=log)
    else:
        train(load_recipe(recipe, overrides or []), log=log)


def register(app: typer.Typer) -> None:
    """Add ``astro train`` to the CLI."""
    app.command("train", context_settings={"allow_interspersed_args": True})(train_command)
