"""Compare two runs, two cv parents (paired per-run differences), or a cv parent with its paper target.

compare_paths("runs/a-cv", "runs/b-cv")["metrics"]["top1"]["difference"]["ci95"]
compare_paths("runs/galaxy10-cv")["position"]     # where the recipe's target falls: below/inside/above
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from astrocli.engine.run_dir import RunDir
from astrocli.errors import AstroError
from astrocli.experiments.cv import TEST_METRICS, VAL_METRICS, is_cv_parent, read_cv, run_metrics
from astrocli.stats import paired_difference, parse_target_percent, where_in_interval


def _per_run_values(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{run name: {metric: value}}`` from a cv report (values are in the order of ``runs``)."""
    out: dict[str, dict[str, float]] = {name: {} for name in report["runs"]}
    for metric, stats in report["metrics"].items():
        for name, value in zip(report["runs"], stats["values"], strict=True):
            out[name][metric] = value
    return out


def compare_cv(a: Path, b: Path) -> dict[str, Any]:
    """Paired differences ``a - b`` per metric over the runs both cv parents finished (same fold and seed)."""
    ra, rb = read_cv(a), read_cv(b)
    if (ra["folds"], ra["repeats"]) != (rb["folds"], rb["repeats"]):
        raise AstroError(
            f"{a} and {b} use different folds ({ra['folds']}x{ra['repeats']} vs "
            f"{rb['folds']}x{rb['repeats']}); a paired comparison needs the same folds: "
            "run both with the same --folds/--repeats and data.split_seed"
        )
    va, vb = _per_run_values(ra), _per_run_values(rb)
    shared = [name for name in ra["runs"] if name in vb]
    if len(shared) < 2:
        raise AstroError(
            f"{a} and {b} share {len(shared)} finished run(s); a paired interval needs 2 or more"
        )
    metrics = {}
    for metric in (*VAL_METRICS, *TEST_METRICS):
        if all(metric in va[n] and metric in vb[n] for n in shared):
            xs, ys = [va[n][metric] for n in shared], [vb[n][metric] for n in shared]
            metrics[metric] = {
                "a_mean": sum(xs) / len(xs),
                "b_mean": sum(ys) / len(ys),
                "difference": paired_difference(xs, ys),
            }
    return {"kind": "cv", "a": str(a), "b": str(b), "paired_runs": shared, "metrics": metrics}


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """Two finished runs side by side (one number each: no interval; use cv for one)."""
    sa, sb = RunDir(a).read_summary(), RunDir(b).read_summary()
    for path, summary in ((a, sa), (b, sb)):
        if summary is None:
            raise AstroError(f"'{path}' has no summary.json: pass a finished run directory or a cv folder")
    ma, mb = run_metrics(sa), run_metrics(sb)
    metrics = {
        m: {"a": ma[m], "b": mb[m], "difference": ma[m] - mb[m]}
        for m in (*VAL_METRICS, *TEST_METRICS)
        if m in ma and m in mb
    }
    return {
        "kind": "runs",
        "a": str(a),
        "b": str(b),
        "selected_on": {"a": sa.get("selected_on", "val"), "b": sb.get("selected_on", "val")},
        "metrics": metrics,
    }


def compare_target(parent: Path) -> dict[str, Any]:
    """Where the recipe's ``target`` number falls against the cv interval (test top-1 when scored)."""
    report = read_cv(parent)
    value = parse_target_percent(report.get("target", ""))
    if value is None:
        raise AstroError(
            f"the recipe of {parent} has no number in its target ({report.get('target')!r}); "
            "compare two cv folders instead: astro compare A B"
        )
    metric = "test_top1" if "test_top1" in report["metrics"] else "top1"
    stats = report["metrics"][metric]
    return {
        "kind": "target",
        "cv": str(parent),
        "target": report.get("target", ""),
        "target_value": value,
        "metric": metric,
        "mean": stats["mean"],
        "ci95": stats["ci95"],
        "position": where_in_interval(value, stats["ci95"]),
    }


def compare_paths(a: str | Path, b: str | Path | None = None) -> dict[str, Any]:
    """Dispatch on what ``a`` and ``b`` are (run directories or cv parents)."""
    a = Path(a)
    if not a.is_dir():
        raise AstroError(f"'{a}' is not a folder: pass a run directory or a cv folder")
    if b is None:
        if not is_cv_parent(a):
            raise AstroError(
                f"'{a}' is not a cv folder; one argument compares a cv folder with its recipe target"
            )
        return compare_target(a)
    b = Path(b)
    if not b.is_dir():
        raise AstroError(f"'{b}' is not a folder: pass a run directory or a cv folder")
    if is_cv_parent(a) and is_cv_parent(b):
        return compare_cv(a, b)
    if is_cv_parent(a) or is_cv_parent(b):
        raise AstroError("compare two runs or two cv folders, not one of each")
    return compare_runs(a, b)


def dumps(report: dict[str, Any]) -> str:
    """The comparison as JSON text."""
    return json.dumps(report, indent=2) + "\n"
