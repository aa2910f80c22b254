"""``astro cv --recipe R [--folds K] [--repeats N] [--seeds S] [KEY=VALUE ...]``: k-fold cross-validation.

Every fold x seed is an ordinary run under ``runs/<name>-cv/``; the parent's ``cv.json`` holds each
metric's values, mean, standard deviation and Student-t 95% interval. Re-running resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from astrocli.commands.options import Overrides, RecipeOption
from astrocli.commands.report import write_end_report
from astrocli.output import make_console

METRIC_LABELS = {
    "top1": "top-1 %",
    "top5": "top-5 %",
    "macro_f1": "macro-F1 %",
    "balanced_accuracy": "balanced acc. %",
    "loss": "loss",
}


def cv_table(report: dict[str, Any], title: str) -> Any:
    """Mean ± half-interval, std and the 95% interval for every metric of a cv report."""
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for name, justify in (("metric", "left"), ("mean ± 95% CI", "right"), ("std", "right")):
        table.add_column(name, justify=justify)
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    for key, stats in report["metrics"].items():
        test = key.startswith("test_")
        label = ("test " if test else "val ") + METRIC_LABELS.get(key.removeprefix("test_"), key)
        digits = 4 if key.endswith("loss") else 2
        ci = stats["ci95"]
        half = f" ± {(ci[1] - ci[0]) / 2:.{digits}f}" if ci else ""
        table.add_row(
            label,
            f"{stats['mean']:.{digits}f}{half}",
            "-" if stats["std"] is None else f"{stats['std']:.{digits}f}",
            f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]".replace("[", "\\[", 1) if ci else "-",
            str(stats["n"]),
        )
    return table


def print_report(report: dict[str, Any], parent: Path) -> None:
    """The cv table, what it was selected on, and where cv.json is."""
    console = make_console(highlight=False)
    runs = len(report["runs"])
    title = (
        f"{report['recipe']}: {report['folds']}-fold x {report['repeats']} repeat(s) x "
        f"{report['seeds']} seed(s), {runs} run(s)"
    )
    console.print(cv_table(report, title))
    if report["selected_on"] == "test":
        console.print("[bold red]checkpoints were selected on the test split (data.split=test)[/]")
    if report["missing"]:
        console.print(f"[yellow]not finished yet:[/] {', '.join(report['missing'])}")
    console.print(f"wrote {parent / 'cv.json'}")


def cv_command(
    overrides: Overrides = None,
    recipe: RecipeOption = None,
    folds: Annotated[int, typer.Option("--folds", "-k", help="Folds of stratified k-fold (at least 2).")] = 5,
    repeats: Annotated[
        int, typer.Option("--repeats", help="Repeats of the k-fold, reshuffled each time.")
    ] = 1,
    seeds: Annotated[int, typer.Option("--seeds", help="Training seeds per fold (train.seed, +1, ...).")] = 1,
    fold: Annotated[
        int | None,
        typer.Option("--fold", help="Run only fold I (0-based across repeats), e.g. one job of an array."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="With --fold: run only seed J of that fold.")
    ] = None,
    aggregate: Annotated[
        Path | None,
        typer.Option(
            "--aggregate", help="Write PARENT/cv.json from the runs finished so far.", metavar="PARENT"
        ),
    ] = None,
    parallel: Annotated[int, typer.Option("--parallel", help="Runs side by side (subprocesses).")] = 1,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices", help="With --parallel: GPUs to hand out, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES)."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only warnings and the results.")
    ] = False,
) -> None:
    """Cross-validate a recipe: stratified k-fold x seeds, mean ± 95% CI per metric."""
    from astrocli.errors import AstroError  # lazy: keeps start-up torch-free
    from astrocli.experiments import cv
    from astrocli.recipe import load_recipe

    if aggregate is not None:
        if recipe is not None or overrides:
            raise AstroError("--aggregate reads a finished cv folder; drop --recipe and KEY=VALUE")
        print_report(cv.aggregate(aggregate), aggregate)
        _end_report(aggregate)
        return
    if recipe is None:
        raise AstroError("give --recipe FILE (see `astro recipes`) or --aggregate PARENT")
    base = load_recipe(recipe, overrides or [])
    log = "quiet" if quiet else None
    if parallel > 1 and fold is None:
        device_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else []
        parent = cv.run_parallel(recipe, overrides or [], base, folds, repeats, seeds, parallel, device_list)
    else:
        parent = cv.run_cv(base, folds, repeats, seeds, fold=fold, seed=seed, log=log)
        if fold is not None:
            print(f"run done; when all have finished: astro cv --aggregate {parent}")
            return
    print_report(cv.read_cv(parent), parent)
    _end_report(parent)


def _end_report(parent: Path) -> None:
    """report.html in the cv folder unless the cv's recipe says ``output.report: false``."""
    import json

    recipe = json.loads((parent / "cv_plan.json").read_text())["recipe"]
    write_end_report(parent, bool(recipe.get("output", {}).get("report", True)))


def register(app: typer.Typer) -> None:
    """Add ``astro cv`` to the CLI."""
    app.command("cv", context_settings={"allow_interspersed_args": True})(cv_command)
