"""``astro audit --recipe R [--cv DIR] [--checkpoint CKPT] [--fix] [KEY=VALUE ...]``: check a data set.

Unreadable, empty and truncated files, modes and sizes, class counts; exact and near duplicates
within and across splits; suspected label errors from a cv's out-of-fold probabilities. Writes
``audit.json`` (and with ``--fix`` the lists ``exclude.txt`` / ``relabel.csv``); never the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from astrocli.commands.options import Overrides, RecipeOption
from astrocli.output import make_console

SHOWN = 5  # rows of each list printed on the console (audit.json and the report hold them all)


def audit_recipe(recipe: str | None, overrides: list[str], cv_dir: Path | None) -> Any:
    """The recipe to audit: ``--recipe``, else the one the cv in ``--cv`` ran (its plan)."""
    import json

    from astrocli.errors import AstroError  # lazy: keeps start-up torch-free
    from astrocli.recipe import apply_override, load_recipe, recipe_from_dict

    if recipe is not None:
        return load_recipe(recipe, overrides)
    if cv_dir is None:
        raise AstroError("give --recipe FILE (the data to audit) or --cv DIR (a folder `astro cv` wrote)")
    plan = Path(cv_dir) / "cv_plan.json"
    if not plan.is_file():
        raise AstroError(f"--cv '{cv_dir}' is not a cv folder (no cv_plan.json); pass runs/NAME-cv")
    raw = json.loads(plan.read_text())["recipe"]
    for item in overrides:
        apply_override(raw, item)
    return recipe_from_dict(raw)


def print_summary(result: dict[str, Any], out_dir: Path) -> None:
    """A few lines per finding; names from the data are escaped (they are text, never markup)."""
    from rich.markup import escape

    console = make_console(highlight=False)
    files, classes, dups = result["files"], result["classes"], result["duplicates"]
    console.print(f"[bold]{result['images']}[/] images, {files['decoded']} decoded; modes {files['modes']}")
    ratio = classes["imbalance_ratio"]
    console.print(f"class imbalance (largest / smallest training class): {ratio if ratio else 'n/a'}")
    for title, rows in (("unreadable", files["unreadable"]), ("skipped by the recipe", files["skipped"])):
        if rows:
            console.print(f"[yellow]{len(rows)} {title}[/]")
            for row in rows[:SHOWN]:
                console.print(f"  {escape(row['key'])}: {escape(row['reason'])}")
    color = "red" if dups["cross_split"] else "green"
    console.print(
        f"[{color}]{dups['total']} duplicate pair(s)[/] ({dups['exact']} exact, {dups['near']} near, "
        f"{dups['embedding']} embedding); {dups['cross_split']} across splits"
    )
    for pair in dups["pairs"][:SHOWN]:
        console.print(
            f"  {escape(pair['a'])} ({pair['split_a']}) ~ {escape(pair['b'])} ({pair['split_b']}): "
            f"{pair['kind']}, distance {pair['distance']:g}"
        )
    issues = result.get("label_issues")
    if issues:
        console.print(
            f"[yellow]{issues['flagged']} suspected label error(s)[/] of {issues['images']} "
            f"({issues['method']})"
        )
        for entry in issues["ranking"][:SHOWN]:
            console.print(
                f"  {escape(entry['key'])}: given {escape(entry['given'])}, suggested "
                f"{escape(entry['suggested'])} (p(given) {entry['self_confidence']:.3f})"
            )
    console.print(
        f"wrote {escape(str(out_dir / 'audit.json'))}; see it as a page: astro report {escape(str(out_dir))}"
    )
    if "fix" in result:
        fix = result["fix"]
        console.print(
            f"wrote {escape(fix['exclude'])} ({fix['excluded']}) and "
            f"{escape(fix['relabel'])} ({fix['relabelled']}); "
            f"review them, then train with data.exclude=... data.relabel=..."
        )


def run_with_count(run_audit: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``run_audit`` with a count of decoded images on a terminal (logs and pipes get nothing, so a
    failed audit stays one line)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    err = make_console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}: {task.completed} images"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("decoding and hashing", total=None)
        return run_audit(*args, on_image=lambda n: progress.advance(task, n), **kwargs)


def audit_command(
    overrides: Overrides = None,
    recipe: RecipeOption = None,
    cv: Annotated[
        Path | None,
        typer.Option(
            "--cv", help="A folder `astro cv` wrote: rank label errors by its out-of-fold probabilities."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="Also pair images that are near in this model's embedding."),
    ] = None,
    fix: Annotated[
        bool,
        typer.Option("--fix", help="Write exclude.txt and relabel.csv beside audit.json (never the data)."),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Folder for audit.json (default: <output.dir>/<output.name>-audit)."
        ),
    ] = None,
    max_bits: Annotated[
        int,
        typer.Option(
            "--max-bits", help="Near duplicate: perceptual hashes at most this many of 256 bits apart."
        ),
    ] = 32,
    min_cosine: Annotated[
        float,
        typer.Option("--min-cosine", help="With --checkpoint: embedding neighbours at least this alike."),
    ] = 0.98,
    label_method: Annotated[
        str, typer.Option("--label-method", help="auto (cleanlab when installed), builtin or cleanlab.")
    ] = "auto",
) -> None:
    """Find unreadable files, duplicates and leaks across splits, and mislabelled images."""
    from astrocli.errors import AstroError  # lazy: keeps start-up torch-free
    from astrocli.experiments.audit import run_audit

    if label_method not in ("auto", "builtin", "cleanlab"):
        raise AstroError(f"--label-method must be auto, builtin or cleanlab, got '{label_method}'")
    if not 0 <= max_bits <= 256:
        raise AstroError(f"--max-bits must be between 0 and 256, got {max_bits}")
    chosen = audit_recipe(recipe, overrides or [], cv)
    out_dir = output or Path(chosen.output.dir) / f"{chosen.output.name}-audit"
    result = run_with_count(
        run_audit, chosen.data, out_dir, cv_dir=cv, checkpoint=checkpoint, fix=fix, max_bits=max_bits,
        min_cosine=min_cosine, label_method=label_method,
    )  # fmt: skip
    print_summary(result, out_dir)


def register(app: typer.Typer) -> None:
    """Add ``astro audit`` to the CLI."""
    app.command("audit", context_settings={"allow_interspersed_args": True})(audit_command)
