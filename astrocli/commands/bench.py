"""``astro bench``: parameters, MACs/FLOPs and throughput of zoo models, and scaling curves of runs."""

from __future__ import annotations

import csv
import io
import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from astrocli.devices import resolve_device
from astrocli.errors import AstroError
from astrocli.output import OutputFormat, make_console, render_text

if TYPE_CHECKING:
    import torch


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


# Table columns: (row key, header, formatter)
_MODEL_COLUMNS = (
    ("model", "model", str),
    ("img_size", "img", str),
    ("params", "params (M)", lambda v: f"{v / 1e6:.3f}"),
    ("trainable_params", "trainable (M)", lambda v: f"{v / 1e6:.3f}"),
    ("macs", "MACs (G)", lambda v: f"{v / 1e9:.3f}"),
    ("flops", "FLOPs (G) = 2xMACs", lambda v: f"{v / 1e9:.3f}"),
    ("infer_img_s", "infer img/s", lambda v: f"{v:.1f}"),
    ("train_img_s", "train img/s", lambda v: f"{v:.1f}"),
    ("peak_mem_mb", "peak mem (MB)", lambda v: f"{v:.0f}"),
    ("note", "note", str),
)
_RUN_COLUMNS = (
    ("run", "run", str),
    ("model", "model", str),
    ("family", "family", str),
    ("dataset", "data", str),
    ("img_size", "img", str),
    ("best_top1", "best top-1 (%)", lambda v: f"{v:.2f}"),
    ("top1_ci95", "95% CI (cv)", lambda v: f"[{v[0]:.2f}, {v[1]:.2f}]"),
    ("cv_runs", "cv runs", str),
    ("params", "params (M)", lambda v: f"{v / 1e6:.3f}"),
    ("macs", "MACs (G)", lambda v: f"{v / 1e9:.3f}"),
)


def _render_table(rows: list[dict[str, Any]], columns: tuple, title: str) -> str:
    """Rows as a rich table, rendered to text (so it can go to stdout or a file alike)."""
    from rich.table import Table

    shown = [c for c in columns if any(row.get(c[0]) is not None for row in rows)]
    table = Table(title=title)
    for key, header, _ in shown:
        text = key in ("model", "run", "family", "note")
        table.add_column(header, justify="left" if text else "right", no_wrap=key in ("model", "run"))
    for row in rows:
        table.add_row(*("-" if row.get(key) is None else fmt(row[key]) for key, _, fmt in shown))

    return render_text(table)  # stdout's width, or unwrapped when piped (no run path cut in two)


def _render(rows: list[dict[str, Any]], fmt: OutputFormat, columns: tuple, title: str) -> str:
    if fmt is OutputFormat.json:
        return json.dumps(rows, indent=2) + "\n"
    if fmt is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [c[0] for c in columns])
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    return _render_table(rows, columns, title)


def _emit(text: str, output: Path | None) -> None:
    """Print ``text``, and write it atomically to ``output`` when given."""
    from astrocli.files import atomic_write_text  # lazy: keeps start-up torch-free

    typer.echo(text, nl=False)
    if output is not None:
        atomic_write_text(output, text)


def _bench_runs(runs_dir: Path, plot: Path | None, fmt: OutputFormat, output: Path | None) -> None:
    from astrocli.experiments.runs import plot_scaling, read_runs  # lazy: keeps start-up torch-free

    runs = read_runs(runs_dir)
    if not runs:
        raise AstroError(f"no finished runs under '{runs_dir}' (a run needs summary.json and recipe.yaml)")
    if plot is not None:
        plot_scaling(runs, plot)
        make_console(stderr=True).print(f"scaling plot written to {plot}", highlight=False)
    rows = [run.to_dict() for run in runs]
    _emit(_render(rows, fmt, _RUN_COLUMNS, f"{len(rows)} finished runs"), output)


def _model_names(models: list[str] | None, all_models: bool) -> list[str]:
    """The named models, then (``--all``) the rest of the zoo; each checked against the zoo."""
    from astrocli.models import list_models  # lazy: keeps start-up torch-free
    from astrocli.models.cost import check_model_name

    names = list(models or [])
    if all_models:
        names += [name for name in list_models() if name not in names]
    if not names:
        raise AstroError("name at least one model (see `astro models`), or pass --all or --runs DIR")
    for name in names:
        check_model_name(name)
    return names


def _bench_models(names: list[str], **settings: Any) -> list[dict[str, Any]]:
    """One row per model (:func:`astrocli.models.cost.bench_model`), a status line meanwhile."""
    from astrocli.models.cost import bench_model  # lazy: keeps start-up torch-free

    status = make_console(stderr=True)
    rows = []
    for name in names:
        with status.status(f"benchmarking {name}"):
            rows.append(bench_model(name, **settings))
    return rows


def _models_title(batch_size: int, device: torch.device, throughput: bool) -> str:
    """The model table's title: what was measured where (throughput only when it was measured)."""
    title = "MACs/FLOPs per image"
    if throughput:  # say what the peak-memory column measures (peak_mem_kind in json/csv)
        title += f"; throughput at batch {batch_size} on {device}"
        title += (
            "; peak mem: CUDA max allocated"
            if device.type == "cuda"
            else "; peak mem: resident-set growth of a fresh process per model, weights included"
        )
    return title


def bench_command(
    models: Annotated[
        list[str] | None, typer.Argument(help="Zoo names (see `astro models`) or timm/<name>.")
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Bench every zoo model (params and MACs only unless asked).")
    ] = False,
    params: Annotated[bool, typer.Option("--params", help="Report total and trainable parameters.")] = False,
    flops: Annotated[
        bool, typer.Option("--flops", help="Report MACs and FLOPs (= 2 x MACs) for one image.")
    ] = False,
    throughput: Annotated[
        bool, typer.Option("--throughput", help="Measure inference/training img/s and peak memory.")
    ] = False,
    img_size: Annotated[
        int | None, typer.Option("--img-size", min=1, help="Input size (default: each model's own).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size for throughput.")] = 32,
    num_classes: Annotated[int, typer.Option("--num-classes", min=1, help="Classifier outputs.")] = 10,
    in_chans: Annotated[int, typer.Option("--in-chans", min=1, help="Input channels (1 for grayscale).")] = 3,
    device: Annotated[Device, typer.Option("--device", help="Device for throughput.")] = Device.cpu,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed warm-up steps before timing.")] = 3,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Timed steps; the median is reported.")
    ] = 10,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", help="Also write the output to this file (atomically).")
    ] = None,
    runs: Annotated[
        Path | None, typer.Option("--runs", help="Report finished training runs under this directory.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="With --runs: save top-1 vs params/MACs curves as PNG.")
    ] = None,
) -> None:
    """Parameters, MACs/FLOPs and throughput of models; or scaling curves of finished runs.

    With none of --params/--flops/--throughput all three are reported (--all: params and MACs).
    MACs are multiply-accumulates for one image with attention products included; FLOPs = 2 x MACs.
    """
    if plot is not None and runs is None:
        raise AstroError("--plot needs --runs DIR (the finished runs to plot)")
    if runs is not None:
        if models or all_models:
            raise AstroError("--runs reports finished runs; do not name models or --all with it")
        _bench_runs(runs, plot, fmt, output)
        return

    names = _model_names(models, all_models)
    if not (params or flops or throughput):
        params, flops, throughput = True, True, not all_models
    run_device = resolve_device(device.value)
    rows = _bench_models(
        names,
        img_size=img_size,
        num_classes=num_classes,
        in_chans=in_chans,
        params=params,
        flops=flops,
        throughput=throughput,
        batch_size=batch_size,
        device=run_device,
        warmup=warmup,
        repeats=repeats,
    )
    _emit(_render(rows, fmt, _MODEL_COLUMNS, _models_title(batch_size, run_device, throughput)), output)


def register(app: typer.Typer) -> None:
    """Add ``astro bench`` to the CLI."""
    app.command("bench")(bench_command)
