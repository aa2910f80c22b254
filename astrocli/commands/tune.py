"""``astro tune --recipe R --space SPACE.yaml``: an Optuna search over recipe keys."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from astrocli.commands.options import RECIPE_HELP
from astrocli.output import make_console


class PrunerName(str, Enum):
    median = "median"
    hyperband = "hyperband"
    none = "none"


STORAGE_HELP = (
    "Optuna storage URL shared by several processes or machines, e.g. sqlite:///study.db or "
    "postgresql://user:pw@host/db (default: a SQLite file in the tune folder)."
)


def tune_command(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help=RECIPE_HELP)],
    space: Annotated[
        Path,
        typer.Option(
            "--space",
            "-s",
            help="Search space YAML: recipe keys to ranges {low, high, log, step} or lists.",
        ),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[KEY=VALUE]...", help="Recipe overrides applied to every trial, e.g. train.epochs=20"
        ),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", "-n", help="Trials this process adds to the study.")
    ] = 20,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Start no new trial after this many seconds.", metavar="SECONDS"),
    ] = None,
    storage: Annotated[str | None, typer.Option("--storage", help=STORAGE_HELP)] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study name (default: the recipe's output.name).")
    ] = None,
    pruner: Annotated[
        PrunerName,
        typer.Option("--pruner", help="Stop unpromising trials on the per-epoch validation metric."),
    ] = PrunerName.median,
) -> None:
    """Search recipe settings with Optuna (TPE); every trial is an ordinary run directory.

    Re-running the same command continues the study.

    Writes to <output.dir>/<name>-tune/: best.yaml, history.png, importance.png, trial<N>/ run dirs.
    """
    from astrocli.experiments.tune import run_tune  # lazy: keeps start-up torch-free

    console = make_console(highlight=False)

    def on_trial(study: Any, trial: Any) -> None:
        state = trial.state.name.lower()
        value = f"{trial.value:.4g}" if trial.value is not None else "-"
        params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        console.print(f"trial {trial.number} {state}: {value}  {params}", markup=False)

    result = run_tune(
        recipe,
        space,
        overrides or [],
        trials=trials,
        timeout=timeout,
        storage=storage,
        study_name=study,
        pruner=pruner.value,
        on_trial=on_trial,
    )
    _print_report(console, result)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_report(console: Any, result: Any) -> None:
    from collections import Counter  # lazy: keeps start-up torch-free

    from rich.markup import escape
    from rich.table import Table

    from astrocli.experiments.tune import top_trials

    study = result.study
    counts = Counter(t.state.name.lower() for t in study.trials)
    console.print(
        f"study '{escape(study.study_name)}': {len(study.trials)} trials ("
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"), {result.direction} {result.metric}"
    )
    rows = top_trials(study, result.direction)
    if rows:
        names = list(dict.fromkeys(k for t in rows for k in t.params))
        table = Table(title="top trials")
        for column in ("trial", result.metric, *names):
            table.add_column(escape(column))
        table.add_column("run dir", overflow="fold")  # a path is worth reading whole
        for t in rows:
            table.add_row(
                str(t.number),
                f"{t.value:.4g}",
                *(escape(_short(t.params.get(k, "-"))) for k in names),
                escape(t.user_attrs.get("run_dir", "-")),
            )
        console.print(table)
    for note in result.notes:
        console.print(f"note: {escape(note)}")
    if result.best_yaml is not None:
        best = escape(str(result.best_yaml))
        console.print(f"best recipe: {best} (train it: astro train --recipe {best})")
    else:
        console.print("no trial finished yet, so there is no best.yaml")
    for plot in result.plots:
        console.print(f"wrote {escape(str(plot))}")


def register(app: typer.Typer) -> None:
    """Add ``astro tune`` to the CLI."""
    app.command("tune", context_settings={"allow_interspersed_args": True})(tune_command)
