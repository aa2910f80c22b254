"""Finished runs for ``astro bench --runs``: best top-1 and model cost per run (a cv folder counts once,
with its mean and interval), scaling curves (top-1 against parameters or MACs) and their plot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from astrocli.engine.run_dir import SUMMARY_FILE, RunDir
from astrocli.errors import AstroError
from astrocli.experiments.cv import read_cv
from astrocli.models.cost import model_family, params_and_macs


@dataclass
class RunResult:
    """One finished training run, as ``astro bench --runs`` reports it."""

    run: str
    model: str
    family: str
    img_size: int
    num_classes: int
    best_top1: float
    params: int | None = None
    macs: int | None = None
    dataset: str = ""  # data.source: runs on different data are never joined into one curve
    in_chans: int = 3
    top1_std: float | None = None  # a cv parent: best_top1 is the mean over its runs
    top1_ci95: list[float] | None = None
    cv_runs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (adds ``flops`` = 2 x MACs)."""
        row = asdict(self)
        row["flops"] = None if self.macs is None else 2 * self.macs
        return row


def _best_top1(run: RunDir, summary: dict[str, Any]) -> float | None:
    """Best validation top-1 of a run: ``summary.json`` if it says, else the max of ``metrics.csv``."""
    if summary.get("best_top1") is not None:
        return float(summary["best_top1"])
    values = [row["val_top1"] for row in run.read_metrics() if row.get("val_top1") is not None]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else None


def _num_classes(run_dir: Path, summary: dict[str, Any]) -> int:
    if summary.get("num_classes"):
        return int(summary["num_classes"])
    split = run_dir / "split.json"
    if split.is_file():
        names = json.loads(split.read_text()).get("class_names") or []
        if names:
            return len(names)
    return 10


def _read_run(run_dir: Path) -> RunResult | None:
    """A run directory as a RunResult; None when it is not finished (no summary or no top-1)."""
    run, recipe_path = RunDir(run_dir), run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        return None
    try:
        summary = run.read_summary()
        if summary is None:
            return None
        recipe = yaml.safe_load(recipe_path.read_text()) or {}
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise AstroError(
            f"run '{run_dir}': unreadable summary.json or recipe.yaml ({exc}); fix or remove that run"
        ) from None
    top1 = _best_top1(run, summary)
    if top1 is None:
        return None
    model_name = (recipe.get("model") or {}).get("name") or summary.get("model")
    data = recipe.get("data") or {}
    img_size = int(data.get("img_size", 32))
    return RunResult(
        run=str(run_dir),
        model=str(model_name),
        family=model_family(str(model_name)),
        img_size=img_size,
        num_classes=_num_classes(run_dir, summary),
        best_top1=top1,
        # What the run itself counted (its channels and classes), when its summary says.
        params=int(summary["params"]) if summary.get("params") is not None else None,
        dataset=str(summary.get("data_source") or data.get("source") or ""),
        in_chans=int(data.get("in_chans", 3)),
    )


def read_runs(directory: str | Path, with_cost: bool = True) -> list[RunResult]:
    """Every finished run under ``directory`` (searched recursively for ``summary.json``).

    With ``with_cost``, params and MACs are computed from the model name and image size in the
    run's ``recipe.yaml`` (the model is built on ``meta``: no weights are read).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AstroError(f"runs directory '{directory}' does not exist; pass the output.dir of `astro train`")
    runs = []
    cv_parents = {plan.parent for plan in directory.rglob("cv_plan.json")}
    for summary in sorted(directory.rglob(SUMMARY_FILE)):
        if summary.parent.parent in cv_parents:
            continue  # a cv fold: its parent stands for it, with the mean and interval
        runs.append(_read_run(summary.parent))
    runs.extend(_read_cv_parent(parent) for parent in cv_parents)
    runs = sorted((r for r in runs if r is not None), key=lambda r: r.run)
    for result in runs:
        if with_cost:
            try:
                params, result.macs = params_and_macs(
                    result.model, result.img_size, result.num_classes, result.in_chans
                )
                result.params = result.params if result.params is not None else params
            except AstroError:  # a model the zoo no longer builds: still listed, just not on the curves
                result.macs = None
    return runs


def scaling_curves(runs: Sequence[RunResult], attribute: str) -> dict[str, list[tuple[float, float, float]]]:
    """``(x, best top-1, half 95% interval)`` points sorted by x, per curve: one per model family and
    data set (the interval is a cv parent's, 0 for a single run).

    Runs on different data sets are never one curve (their accuracies are not comparable); the
    curve is named ``family (dataset)`` when the runs span several data sets, else ``family``.
    """
    several_datasets = len({run.dataset for run in runs}) > 1
    curves: dict[str, list[tuple[float, float]]] = {}
    for family, dataset in sorted({(run.family, run.dataset) for run in runs}):
        points = sorted(
            (getattr(run, attribute), run.best_top1, _ci_half(run))
            for run in runs
            if (run.family, run.dataset) == (family, dataset) and getattr(run, attribute)
        )
        if points:
            curves[f"{family} ({dataset})" if several_datasets and dataset else family] = points
    return curves


def _read_cv_parent(parent: Path) -> RunResult | None:
    """A cv parent as one RunResult: mean top-1 over its finished runs, with std and 95% interval."""
    try:
        report = read_cv(parent)
    except AstroError:  # no run finished yet
        return None
    first = _read_run(parent / report["runs"][0])
    stats = report["metrics"].get("top1")
    if first is None or stats is None:
        return None
    first.run, first.best_top1 = str(parent), float(stats["mean"])
    first.top1_std, first.top1_ci95, first.cv_runs = stats["std"], stats["ci95"], len(report["runs"])
    return first


def _ci_half(run: RunResult) -> float:
    """Half the width of a cv parent's 95% interval (0 for a single run)."""
    ci = run.top1_ci95
    return (ci[1] - ci[0]) / 2 if ci else 0.0


def plot_scaling(runs: Sequence[RunResult], path: str | Path) -> Path:
    """Draw top-1 against params and against MACs (log x), one line per family and data set; save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, NullFormatter

    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, attribute, label in ((axes[0], "params", "parameters"), (axes[1], "macs", "MACs per image")):
        for name, points in scaling_curves(runs, attribute).items():
            xs, ys, errs = zip(*points, strict=True)
            # cv parents: the mean with its 95% interval as an error bar (0 for a single run)
            axis.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name)
        axis.set_xscale("log")
        # 300k / 1M / 3G instead of crowded 3x10^5 minor labels
        axis.xaxis.set_major_formatter(EngFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel(label)
        axis.set_ylabel("best top-1 (%)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(title="family (data)" if len({run.dataset for run in runs}) > 1 else "family")
    fig.suptitle("Top-1 against model size")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
