"""``astro eval``: accuracy, per-class precision/recall/F1, confusion matrix and calibration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from astrocli.commands.options import DeviceOption
from astrocli.errors import AstroError
from astrocli.output import FORMAT_HELP, OutputFormat, make_console, rows_csv


def _summary_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="evaluation" + (" (with horizontal-flip TTA)" if report["tta"] else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("images", str(report["num_samples"]))
    table.add_row("top-1 (%)", _with_ci(report, "top1"))
    table.add_row("top-5 (%)", f"{report['top5']:.2f}")
    table.add_row("macro-F1 (%)", _with_ci(report, "macro_f1"))
    table.add_row("balanced accuracy (%)", _with_ci(report, "balanced_accuracy"))
    table.add_row("loss (NLL)", f"{report['loss']:.4f}")
    table.add_row("ECE (15 bins)", f"{report['ece']:.4f}")
    if "ece_calibrated" in report:
        table.add_row(f"ECE at temperature {report['temperature']:.3g}", f"{report['ece_calibrated']:.4f}")
    return table


def _with_ci(report: dict[str, Any], key: str) -> str:
    """``value`` or ``value [lo, hi]`` when ``--ci`` computed the bootstrap interval."""
    ci = report.get(f"{key}_ci95")
    text = f"{report[key]:.2f}"
    return text + (f" \\[{ci[0]:.2f}, {ci[1]:.2f}] 95% CI" if ci else "")


def _per_class_table(report: dict[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="per class")
    for name, justify in (("#", "right"), ("class", "left"), ("precision", "right"), ("recall", "right")):
        table.add_column(name, justify=justify)
    table.add_column("F1", justify="right")
    table.add_column("support", justify="right")
    for row in report["per_class"]:
        table.add_row(
            str(row["class_index"]),
            escape(row["label"]),
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
            f"{row['f1']:.3f}",
            str(row["support"]),
        )
    table.add_section()
    for average in ("macro", "weighted"):
        avg = report[average]
        table.add_row(
            "",
            f"[bold]{average} avg[/]",
            f"{avg['precision']:.3f}",
            f"{avg['recall']:.3f}",
            f"{avg['f1']:.3f}",
            str(avg["support"]),
        )
    return table


def _confusion_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    matrix = report["confusion_matrix"]
    table = Table(title="confusion matrix (rows: true class #, columns: predicted class #)")
    table.add_column("true \\ pred", justify="right")
    for j in range(len(matrix)):
        table.add_column(str(j), justify="right")
    for i, row in enumerate(matrix):
        table.add_row(
            str(i),
            *(f"[bold]{v}[/]" if i == j else (str(v) if v else "[dim]0[/]") for j, v in enumerate(row)),
        )
    return table


def _machine_output(report: dict[str, Any], fmt: OutputFormat) -> str:
    """``--format json``: the report as ``--json`` writes it; ``csv``: per-class rows, then the averages."""
    import json

    if fmt is OutputFormat.json:
        return json.dumps(report, indent=2) + "\n"
    columns = ("class_index", "label", "precision", "recall", "f1", "support")
    rows = [*report["per_class"], *({"label": f"{a} avg", **report[a]} for a in ("macro", "weighted"))]
    return rows_csv(rows, columns)


def _tta_warning(recipe: dict[str, Any] | None) -> str | None:
    """Why ``--tta`` may mislead: the model never saw horizontally flipped images in training."""
    augment = (recipe or {}).get("augment") or {}
    hflip = augment.get("hflip")
    if hflip is None or float(hflip) > 0:
        return None  # trained with flips (or the recipe is unknown): the flipped view is in-distribution
    return (
        "--tta averages each image with its horizontal flip, but this model trained with "
        "augment.hflip=0 (flips can change the class, e.g. digits); the TTA score may be lower"
    )


def eval_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="A .safetensors checkpoint or an exported .onnx model.", show_default=False),
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Recipe overrides KEY=VALUE for the data, e.g. data.root=DIR data.split=test.",
            show_default=False,
        ),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every metric to this JSON file.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Save the normalised confusion matrix to FILE.png.")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average the softmax of each image and its horizontal flip.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")] = 64,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", help="DataLoader workers (default: data.num_workers, at most the CPU count)."
        ),
    ] = None,
    device: DeviceOption = "auto",
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="First fit the softmax temperature on the recipe's validation split and write it into "
            "the checkpoint (astro predict and export then use it).",
        ),
    ] = False,
    ci: Annotated[
        bool,
        typer.Option(
            "--ci", help="Add seeded bootstrap 95% intervals for top-1, macro-F1, balanced accuracy."
        ),
    ] = False,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples for --ci.")] = 1000,
    ci_seed: Annotated[int, typer.Option("--ci-seed", help="Seed of the bootstrap resampling for --ci.")] = 0,
    fmt: Annotated[
        OutputFormat,
        typer.Option("--format", help=FORMAT_HELP + " json: the whole report; csv: per-class rows."),
    ] = OutputFormat.table,
) -> None:
    """Evaluate a model on the split its recipe validated on (or the one the overrides name)."""
    from astrocli.inference.evaluate import evaluate  # lazy: keeps start-up torch-free
    from astrocli.inference.runner import load_runner

    # With --format json/csv stdout carries the data only; the messages go to stderr.
    console = make_console(stderr=fmt is not OutputFormat.table)
    _check_options(json_path, plot, batch_size, resamples if ci else None)
    runner = load_runner(checkpoint, device=device)
    console.print(f"model: {runner.describe()}", highlight=False)
    if tta and (tta_note := _tta_warning(getattr(runner.meta, "recipe", None))):
        console.print(f"[yellow]warning:[/] {tta_note}", highlight=False)
    data = _held_out(console, runner, overrides or [], workers)
    if calibrate:
        _calibrate(console, runner, overrides or [], batch_size, data.num_workers, data.split)
    report = evaluate(
        runner,
        data.dataset,
        batch_size=batch_size,
        num_workers=data.num_workers,
        tta=tta,
        ci_resamples=resamples if ci else 0,
        ci_seed=ci_seed,
    )
    report["data"] = {"source": data.source, "root": data.root, "split": data.split}
    report["split_info"] = data.split_info
    _show(console, report, fmt, json_path, plot)


def _check_options(json_path: Path | None, plot: Path | None, batch_size: int, resamples: int | None) -> None:
    """Bad options fail before the model loads; the output files must be writable before the evaluation,
    not after it. ``resamples``: the bootstrap resamples of ``--ci``, None without it."""
    from astrocli.files import check_writable  # lazy: keeps start-up torch-free

    if plot is not None and plot.suffix.lower() != ".png":
        raise AstroError(f"--plot '{plot}' must end in .png")
    if batch_size < 1:
        raise AstroError(f"--batch-size must be at least 1, got {batch_size}")
    for output in (json_path, plot):
        if output is not None:
            check_writable(output)
    if resamples is not None and resamples < 100:
        raise AstroError(f"--resamples must be at least 100 for a 95% interval, got {resamples}")


@dataclass
class _HeldOut:
    """The images eval scores, where they come from, and the loader workers to read them with."""

    dataset: Any
    source: str
    root: str
    split: str
    split_info: dict[str, Any]
    num_workers: int


def _held_out(console: Any, runner: Any, overrides: list[str], workers: int | None) -> _HeldOut:
    """The held-out split of the model's recipe (with ``overrides``), after checking its channels and
    labels against the model; says which data it is."""
    from astrocli.data import build_datasets  # lazy: keeps start-up torch-free
    from astrocli.inference.evaluate import check_labels, eval_recipe

    recipe = eval_recipe(runner.meta, overrides)
    if recipe.data.in_chans != runner.meta.in_chans:
        raise AstroError(
            f"data.in_chans={recipe.data.in_chans} but the model takes {runner.meta.in_chans} channels; "
            f"drop the override or use data.in_chans={runner.meta.in_chans}"
        )
    bundle = build_datasets(recipe.data)
    for warning in check_labels(runner.class_names, bundle.class_names):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    num_workers = workers if workers is not None else min(recipe.data.num_workers, os.cpu_count() or 1)
    split_info = dict(getattr(bundle, "split_info", None) or {})
    split_info.pop("members", None)  # the file lists stay in the run's split.json
    heldout = split_info.get("heldout_split", recipe.data.split)
    console.print(
        f"data: {recipe.data.source} at {recipe.data.root}, "
        f"held-out split '{heldout}', {len(bundle.val)} images",
        highlight=False,
    )
    return _HeldOut(bundle.val, recipe.data.source, recipe.data.root, heldout, split_info, num_workers)


def _show(
    console: Any, report: dict[str, Any], fmt: OutputFormat, json_path: Path | None, plot: Path | None
) -> None:
    """The report as tables (or json/csv on stdout), then the files asked for."""
    from astrocli.inference.evaluate import (  # lazy: keeps start-up torch-free
        plot_confusion_matrix,
        write_report_json,
    )

    if fmt is OutputFormat.table:
        console.print(_summary_table(report))
        console.print(_per_class_table(report))
        console.print(_confusion_table(report))
    else:
        print(_machine_output(report, fmt), end="")
    if json_path is not None:
        write_report_json(report, json_path)
        console.print(f"wrote {json_path}", highlight=False)
    if plot is not None:
        plot_confusion_matrix(report, plot)
        console.print(f"wrote {plot}", highlight=False)
        from astrocli.calibration import plot_reliability, reliability_path  # lazy: keeps start-up torch-free

        plot_reliability(report, reliability_path(plot))
        console.print(f"wrote {reliability_path(plot)}", highlight=False)


def _calibrate(
    console: Any, runner: Any, overrides: list[str], batch_size: int, workers: int, split: str
) -> None:
    """``--calibrate``: fit and store the temperature (astrocli/calibration.py), then say where."""
    from astrocli.inference.calibrate import calibrate_checkpoint  # lazy: keeps start-up torch-free

    fit = calibrate_checkpoint(runner, overrides, batch_size, workers)
    if not fit["applied"]:
        console.print(
            f"[yellow]warning:[/] calibration not applied, temperature 1 written into {runner.source}: "
            f"{fit['reason']}",
            highlight=False,
        )
        return
    console.print(
        f"calibrated on the '{fit['split']}' split ({fit['num_samples']} images): temperature "
        f"{fit['temperature']:.3f}, ECE {fit['ece']:.4f} -> {fit['ece_calibrated']:.4f}; "
        f"written into {runner.source}",
        highlight=False,
    )
    if fit["split"] == split:
        console.print(
            "[yellow]note:[/] evaluating on the split the temperature was fitted on: ece_calibrated is "
            "optimistic; add data.split=test for an independent figure",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add ``astro eval`` to the CLI."""
    app.command("eval")(eval_command)
