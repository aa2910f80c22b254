"""Compare two runs, two cv parents (paired per-run differences), or a cv parent with its paper target.

compare_paths("runs/a", "runs/b")["metrics"]["top1"]   # {"difference", "ci95", "p", "a", "b"}: paired
                                                      # over the held-out images both runs scored
compare_paths("runs/a-cv", "runs/b-cv")["metrics"]["top1"]["difference"]["ci95"]
compare_paths("runs/galaxy10-cv")["position"]     # where the recipe's target falls: below/inside/above

A paired comparison means something only on the same images: two cvs must share the data (source,
root, classes, image count), ``data.split_seed`` and every paired run's held-out images; two runs must
have held out the same images. Anything else is refused in one line. Nothing is written into the
folders compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from astrocli.engine.run_dir import RunDir
from astrocli.errors import AstroError
from astrocli.experiments.cv import TEST_METRICS, VAL_METRICS, aggregate, is_cv_parent
from astrocli.experiments.predictions import PREDICTIONS_NPZ, read_predictions
from astrocli.stats import (
    BOOTSTRAP_METRICS,
    image_scores,
    paired_bootstrap,
    paired_difference,
    parse_target_percent,
    where_in_interval,
)


def _per_run_values(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{run name: {metric: value}}`` from a cv report (values are in the order of ``runs``)."""
    out: dict[str, dict[str, float]] = {name: {} for name in report["runs"]}
    for metric, stats in report["metrics"].items():
        for name, value in zip(report["runs"], stats["values"], strict=True):
            out[name][metric] = value
    return out


def _data_identity(split: dict[str, Any]) -> dict[str, Any]:
    """What must agree for two runs to have seen the same images: source, root, classes, image count."""
    count = sum(split.get(k) or 0 for k in ("num_train", "num_val", "num_test"))
    return {
        "data source": split.get("source"),
        "data root": split.get("root"),
        "class names": split.get("class_names"),
        "image count": count,
        "data.split_seed": split.get("split_seed"),
    }


def _held_out_members(split: dict[str, Any]) -> Any:
    """The held-out images of a run (file paths or rows), None when split.json predates the lists."""
    members = split.get("members") or {}
    return members.get("val_positions", members.get("val"))


def _first_split(parent: Path, runs: list[str]) -> dict[str, Any]:
    for name in runs:
        split = RunDir(parent / name).read_split()
        if split is not None:
            return split
    raise AstroError(f"no finished run of {parent} has a split.json; is it a folder `astro cv` made?")


def check_same_data(a: Path, b: Path, split_a: dict[str, Any], split_b: dict[str, Any]) -> None:
    """Refuse, in one line, two runs (or cvs) whose data, classes, image count or split seed differ."""
    ia, ib = _data_identity(split_a), _data_identity(split_b)
    for what in ia:
        if ia[what] != ib[what]:
            va, vb = ia[what], ib[what]
            if what == "class names":  # the first few of each: enough to see which data it is
                va, vb = (", ".join(v[:3]) + (", ..." if len(v) > 3 else "") for v in (va or [], vb or []))
            raise AstroError(
                f"{a} and {b} differ in {what} ({va} vs {vb}): a paired comparison needs the same "
                "images in the same folds; run both on the same data with the same data.split_seed"
            )


def _check_same_folds(a: Path, b: Path, shared: list[str]) -> None:
    """Each paired run must hold out exactly the same images in both cvs (the fold assignment)."""
    for name in shared:
        ma = _held_out_members(RunDir(a / name).read_split() or {})
        mb = _held_out_members(RunDir(b / name).read_split() or {})
        if ma is None or mb is None or ma != mb:
            raise AstroError(
                f"{name} of {a} and of {b} hold out different images (the fold assignment differs): "
                "a paired comparison needs the same folds; run both with the same --folds/--repeats "
                "and data.split_seed"
            )


def compare_cv(a: Path, b: Path, partial: bool = False) -> dict[str, Any]:
    """Paired differences ``a - b`` per metric over the runs both cv parents finished (same fold and seed).

    Refuses cvs of other data, another split seed or other folds, and (unless ``partial``) a cv that
    has not finished every run. Reads the folders without writing into them.
    """
    ra, rb = aggregate(a, write=False), aggregate(b, write=False)
    if (ra["folds"], ra["repeats"]) != (rb["folds"], rb["repeats"]):
        raise AstroError(
            f"{a} and {b} use different folds ({ra['folds']}x{ra['repeats']} vs "
            f"{rb['folds']}x{rb['repeats']}); a paired comparison needs the same folds: "
            "run both with the same --folds/--repeats and data.split_seed"
        )
    check_same_data(a, b, _first_split(a, ra["runs"]), _first_split(b, rb["runs"]))
    planned = sorted(set(ra["runs"] + ra["missing"]) | set(rb["runs"] + rb["missing"]))
    unfinished = [(p, r["missing"]) for p, r in ((a, ra), (b, rb)) if r["missing"]]
    if unfinished and not partial:
        where, missing = unfinished[0]
        raise AstroError(
            f"{where} has not finished {len(missing)} of its {len(planned)} runs ({', '.join(missing)}); "
            "finish it (re-run the same `astro cv` command) or pass --partial to pair the finished runs"
        )
    va, vb = _per_run_values(ra), _per_run_values(rb)
    shared = [name for name in ra["runs"] if name in vb]
    if len(shared) < 2:
        raise AstroError(
            f"{a} and {b} share {len(shared)} finished run(s); a paired interval needs 2 or more"
        )
    _check_same_folds(a, b, shared)
    metrics = {}
    for metric in (*VAL_METRICS, *TEST_METRICS):
        if all(metric in va[n] and metric in vb[n] for n in shared):
            xs, ys = [va[n][metric] for n in shared], [vb[n][metric] for n in shared]
            metrics[metric] = {
                "a_mean": sum(xs) / len(xs),
                "b_mean": sum(ys) / len(ys),
                "difference": paired_difference(xs, ys),
            }
    return {
        "kind": "cv",
        "a": str(a),
        "b": str(b),
        "paired_runs": shared,
        "planned_runs": len(planned),
        "partial": len(shared) < len(planned),
        "metrics": metrics,
    }


def _predictions(run: Path) -> tuple[Any, Any, list[str]]:
    """Top-1 predictions of ``run``'s best.safetensors on its held-out split, the labels, the classes:
    the ``val`` rows of the run's ``predictions.npz`` (written by ``astro train`` from the same
    checkpoint, in the held-out split's order), else computed once here (runs of astro < 0.4)."""
    saved = run / PREDICTIONS_NPZ
    if saved.is_file():
        predictions = read_predictions(saved)
        rows = predictions.rows("val")
        if len(rows):
            return predictions.predicted[rows], predictions.target[rows], predictions.class_names
    from astrocli.data import build_datasets  # lazy: keeps start-up torch-free
    from astrocli.inference.evaluate import collect_probabilities, eval_recipe  # lazy: the same
    from astrocli.inference.runner import load_runner  # lazy: the same

    runner = load_runner(run / "best.safetensors", device="cpu")
    recipe = eval_recipe(runner.meta)
    recipe.data.download = False
    held_out = build_datasets(recipe.data).val
    log_probs, targets = collect_probabilities(runner, held_out, batch_size=64)
    return log_probs.argmax(axis=1), targets, list(runner.class_names)


def compare_runs(a: Path, b: Path, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Two finished runs scored on the same held-out images: per metric ``a - b`` with a paired-bootstrap
    95% interval and a p-value (astrocli/stats.py), from predictions of each run's best checkpoint."""
    splits = []
    for path in (a, b):
        if RunDir(path).read_summary() is None or not (path / "best.safetensors").is_file():
            raise AstroError(
                f"'{path}' is not a finished run (no summary.json or best.safetensors): "
                "pass a finished run directory or a cv folder"
            )
        splits.append(RunDir(path).read_split())
    if splits[0] is None or splits[1] is None:
        missing = a if splits[0] is None else b
        raise AstroError(f"{missing} has no split.json: cannot tell which images it held out")
    check_same_data(a, b, *splits)
    if _held_out_members(splits[0]) is None or _held_out_members(splits[0]) != _held_out_members(splits[1]):
        raise AstroError(
            f"{a} and {b} held out different images, so their scores cannot be paired; train both "
            "with the same data, data.split and data.split_seed (or compare two cvs)"
        )
    preds_a, targets, classes = _predictions(a)
    preds_b, targets_b, _ = _predictions(b)
    if len(targets) != len(targets_b) or (targets != targets_b).any():
        raise AstroError(f"{a} and {b} read their held-out images in another order or number; cannot pair")
    paired = paired_bootstrap(preds_a, preds_b, targets, len(classes), resamples=resamples, seed=seed)
    scores_a = image_scores(preds_a, targets, len(classes))
    scores_b = image_scores(preds_b, targets, len(classes))
    metrics = {
        name: {"a": scores_a[i], "b": scores_b[i], **paired[name]} for i, name in enumerate(BOOTSTRAP_METRICS)
    }
    return {
        "kind": "runs",
        "a": str(a),
        "b": str(b),
        "num_images": int(len(targets)),
        "method": f"paired percentile bootstrap over the images ({resamples} resamples, seed {seed}); "
        "p: exact McNemar (top-1), paired permutation (macro-F1, balanced accuracy)",
        "selected_on": {p: (s.get("selected_on") or "val") for p, s in (("a", splits[0]), ("b", splits[1]))},
        "metrics": metrics,
    }


def compare_target(parent: Path) -> dict[str, Any]:
    """Where the recipe's ``target`` number falls against the cv interval (test top-1 when scored)."""
    report = aggregate(parent, write=False)
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


def compare_paths(a: str | Path, b: str | Path | None = None, partial: bool = False) -> dict[str, Any]:
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
        return compare_cv(a, b, partial)
    if is_cv_parent(a) or is_cv_parent(b):
        raise AstroError("compare two runs or two cv folders, not one of each")
    return compare_runs(a, b)


def dumps(report: dict[str, Any]) -> str:
    """The comparison as JSON text."""
    return json.dumps(report, indent=2) + "\n"
