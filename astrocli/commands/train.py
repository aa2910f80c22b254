"""``astro train --recipe FILE [KEY=VALUE ...]``: train a recipe; ``--resume RUN_DIR`` continues a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astrocli.commands.options import Overrides, RecipeOption
from astrocli.commands.report import write_end_report
from astrocli.notices import warn_user


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
        run_dir = train(resume_dir=resume, overrides=overrides or [], log=log)
    else:
        run_dir = train(load_recipe(recipe, overrides or []), log=log)
    finish_run(Path(run_dir), say=log is None)  # --quiet and --jsonl keep stdout as it was


def finish_run(run_dir: Path, say: bool = True) -> None:
    """After training: the selected checkpoint's held-out predictions (predictions.npz/.csv, one
    forward pass) and report.html unless ``output.report: false``. Rank 0 only under torchrun; a
    failure here is a warning, since the run itself is complete."""
    import os

    from astrocli.errors import AstroError  # lazy: keeps start-up torch-free
    from astrocli.experiments.predictions import write_predictions
    from astrocli.recipe import load_recipe

    if int(os.environ.get("RANK", "0")) != 0:
        return
    recipe = load_recipe(run_dir / "recipe.yaml")
    try:
        write_predictions(run_dir, device=recipe.train.device, force=True)
    except (AstroError, OSError) as exc:
        warn_user(f"predictions.csv not written ({exc})")
        return
    write_end_report(run_dir, recipe.output.report, say=say)


def register(app: typer.Typer) -> None:
    """Add ``astro train`` to the CLI."""
    app.command("train", context_settings={"allow_interspersed_args": True})(train_command)
