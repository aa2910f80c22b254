"""``astro report RUN_DIR | CV_DIR | AUDIT_JSON``: one self-contained ``report.html``.

A run's page: the protocol (what selected the checkpoint, what scored it), learning curves, the
confusion matrix whose cells open onto their images, per-class precision/recall/F1, the reliability
diagram before and after calibration, the most confident mistakes, and the resolved recipe. A cv's
page adds the per-fold table with its intervals and shows out-of-fold predictions; an audit's page
shows the duplicate pairs side by side and the suspected label errors.

Images are inlined as small JPEG ``data:`` URIs (:mod:`astrocli.experiments.dataview`), at most
``max_thumbs`` per page (the page says how many it left out), read in one pass over the chosen ones:
a report of a 100,000-image run costs about what one of 1,000 does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astrocli.calibration import reliability
from astrocli.engine.run_dir import RunDir
from astrocli.errors import AstroError
from astrocli.experiments.cv import PLAN_FILE, is_cv_parent, read_cv
from astrocli.experiments.dataview import DataView, open_view
from astrocli.experiments.predictions import (
    OOF_NPZ,
    PREDICTIONS_NPZ,
    Predictions,
    read_predictions,
    write_predictions,
)
from astrocli.experiments.report_html import (
    Section,
    confusion_table,
    esc,
    figure,
    page,
    reliability_chart,
    table,
)
from astrocli.experiments.report_sections import audit_sections, cv_table_section, run_overview
from astrocli.files import atomic_write_text
from astrocli.metrics import classification_metrics, expected_calibration_error
from astrocli.recipe import recipe_from_dict

REPORT_FILE = "report.html"
MAX_THUMBS = 300  # thumbnails in one page: about 1.5 MB of HTML, quick to open on any laptop
GALLERY = 48  # the most confident mistakes shown
PER_CELL = 12  # thumbnails under an off-diagonal cell of the confusion matrix (6 under a diagonal one)


@dataclass
class Budget:
    """How many thumbnails the page may still hold, and how many it left out."""

    left: int
    left_out: int = 0

    def __post_init__(self) -> None:
        self.total = self.left

    def take(self, wanted: int) -> int:
        granted = max(0, min(wanted, self.left))
        self.left -= granted
        self.left_out += wanted - granted
        return granted


def write_report(target: str | Path, out: str | Path | None = None, max_thumbs: int = MAX_THUMBS) -> Path:
    """Write ``report.html`` for a run folder, a cv folder or an audit (``audit.json`` or its folder)."""

    target = Path(target)
    budget = Budget(max_thumbs)
    if target.is_file() and target.suffix == ".json" or (target / "audit.json").is_file():
        path = target if target.is_file() else target / "audit.json"
        html_text, where = audit_page(path, budget), path.parent
    elif is_cv_parent(target):
        html_text, where = cv_page(target, budget), target
    elif (target / "recipe.yaml").is_file():
        html_text, where = run_page(target, budget), target
    else:
        raise AstroError(
            f"'{target}' is not a run folder (recipe.yaml), a cv folder (cv_plan.json) or an audit "
            "(audit.json); pass one of those"
        )
    destination = Path(out) if out is not None else where / REPORT_FILE
    atomic_write_text(destination, html_text)
    return destination


def open_data(data: dict[str, Any]) -> tuple[DataView | None, str]:
    """The data a page shows thumbnails of, or None and the reason (the page still renders)."""

    try:
        cfg = recipe_from_dict({"data": {**data, "folds": 0}}).data
        return open_view(cfg), ""
    except AstroError as exc:
        return None, f"thumbnails left out: the data could not be opened ({exc})"


def footer(budget: Budget, note: str) -> str:
    kept = budget.total - budget.left
    parts = ["Written by astro report. Self-contained: opens from disk, fetches nothing."]
    if budget.left_out:
        parts.append(f"{budget.left_out} thumbnail(s) left out to keep the page small ({kept} shown).")
    if note:
        parts.append(note)
    return " ".join(esc(p) for p in parts)


# ---------------------------------------------------------------------------------------------
# A run
# ---------------------------------------------------------------------------------------------


def run_page(run_dir: Path, budget: Budget) -> str:
    """The page of one finished run (predictions computed now when an older run lacks them)."""
    import yaml

    run = RunDir(run_dir)
    summary = run.read_summary()
    if summary is None:
        raise AstroError(f"'{run_dir}' has not finished (no summary.json); report it when training ends")
    recipe_text = (run_dir / "recipe.yaml").read_text()
    recipe = yaml.safe_load(recipe_text)
    if not (run_dir / PREDICTIONS_NPZ).is_file():
        write_predictions(run_dir)
    preds = read_predictions(run_dir / PREDICTIONS_NPZ)
    split = "test" if len(preds.rows("test")) else "val"
    rows = preds.rows(split)
    # data.split=test: the "val" rows are the test split, which also selected the checkpoint
    shown = "test" if split == "val" and summary.get("selected_on") == "test" else split
    view, note = open_data(recipe.get("data", {}))
    sections = [run_overview(summary, recipe, shown, len(rows), run.read_metrics())]
    sections += prediction_sections(preds, rows, view, budget, f"the {shown} split")
    sections.append(recipe_section(recipe_text))
    top1 = 100.0 * float((preds.predicted[rows] == preds.target[rows]).mean()) if len(rows) else 0.0
    cards = [
        (f"{shown} top-1", f"{top1:.2f}%"),
        ("images scored", str(len(rows))),
        ("selected on", summary.get("selected_on", "val")),
        ("model", summary.get("model", "?")),
    ]
    title = f"{run_dir.name}: {summary.get('model', '')}"
    return page(title, f"astro run report: {run_dir}", cards, sections, footer(budget, note))


def recipe_section(recipe_text: str) -> Section:
    return Section(
        "recipe",
        "Recipe",
        f"<details><summary>the resolved recipe</summary><pre>{esc(recipe_text)}</pre></details>",
    )


def prediction_sections(
    preds: Any, rows: np.ndarray, view: DataView | None, budget: Budget, what: str
) -> list[Section]:
    """Confusion matrix (cells linked to their images), per class, calibration, mistakes, the cells."""

    names = preds.class_names
    probs, targets, keys = preds.probs[rows], preds.target[rows], preds.key[rows]
    if not len(rows):
        return [Section("predictions", "Predictions", "<p>No held-out predictions to show.</p>")]
    report = classification_metrics(probs, targets, names)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    mistakes = np.nonzero(predicted != targets)[0]
    mistakes = mistakes[np.argsort(-confidence[mistakes], kind="stable")]
    shown = mistakes[: budget.take(min(GALLERY, len(mistakes)))]
    cells = cell_members(targets, predicted, confidence)
    gallery = "".join(
        _thumb(view, keys[i], names[targets[i]], names[predicted[i]], confidence[i]) for i in shown
    )
    gallery_body = (
        f'<p class="muted">{len(mistakes)} mistake(s) on {esc(what)}; '
        f"the {len(shown)} the model was surest of "
        f'(highest predicted probability) first.</p><div class="grid" id="mistakes-grid">{gallery}</div>'
    )
    per_class = table(
        ["class", "precision", "recall", "F1", "support"],
        [
            (r["label"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", r["support"])
            for r in report["per_class"]
        ],
    )
    matrix = confusion_table(report["confusion_matrix"], names, set(cells))
    averages = f"macro-F1 {report['macro_f1']:.2f}%, balanced accuracy {report['balanced_accuracy']:.2f}%"
    blocks = cell_blocks(cells, keys, targets, predicted, confidence, names, view, budget)
    return [
        Section("confusion", "Confusion matrix", f'<p class="muted">Rows: true class; columns: predicted, on '
                f"{esc(what)} ({len(rows)} images). Click a count to see its images.</p>{matrix}"),
        Section("per-class", "Per class", f'{per_class}<p class="muted">{averages}</p>'),
        Section("calibration", "Calibration", calibration_chart(probs, targets, preds.temperature)),
        Section("mistakes", "Most confident mistakes", gallery_body),
        Section("cells", "Images by cell", blocks),
    ]  # fmt: skip


def calibration_chart(probs: np.ndarray, targets: np.ndarray, temperature: float) -> str:
    """The reliability diagram of the raw probabilities and, when the run fitted one, at its temperature."""

    curves = [("raw", reliability(probs, targets), expected_calibration_error(probs, targets))]
    if temperature != 1.0:
        calibrated = _calibrated(probs, temperature)
        ece = expected_calibration_error(calibrated, targets)
        curves.append((f"T = {temperature:.3g}", reliability(calibrated, targets), ece))
    return '<div class="charts">' + reliability_chart(curves, "reliability") + "</div>"


def _calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same as softmax(logits / T)."""
    logits = np.log(np.clip(probs, 1e-300, None)) / max(temperature, 1e-6)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def cell_members(
    targets: np.ndarray, predicted: np.ndarray, confidence: np.ndarray
) -> dict[tuple[int, int], np.ndarray]:
    """Rows of each non-empty confusion cell, surest prediction first; errors before correct cells,
    larger cells first (the order thumbnails are granted in)."""
    cells: dict[tuple[int, int], np.ndarray] = {}
    for i, j in sorted(set(zip(targets.tolist(), predicted.tolist(), strict=True))):
        members = np.nonzero((targets == i) & (predicted == j))[0]
        cells[(i, j)] = members[np.argsort(-confidence[members], kind="stable")]
    return dict(sorted(cells.items(), key=lambda kv: (kv[0][0] == kv[0][1], -len(kv[1]), kv[0])))


def cell_blocks(
    cells: dict,
    keys: np.ndarray,
    targets: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    names: list[str],
    view: DataView | None,
    budget: Budget,
) -> str:
    """One block per cell (the anchor its matrix count links to): thumbnails, then the other paths."""
    blocks = []
    for (i, j), members in cells.items():
        granted = budget.take(min(PER_CELL if i != j else PER_CELL // 2, len(members)))
        thumbs = "".join(_thumb(view, keys[r], names[i], names[j], confidence[r]) for r in members[:granted])
        rest = [str(keys[r]) for r in members[granted : granted + 30]]
        more = len(members) - granted - len(rest)
        listing = (
            f'<p class="muted">also: {esc(", ".join(rest))}{f" and {more} more" if more > 0 else ""}</p>'
            if rest
            else ""
        )
        tag = "tag" if i == j else "tag bad"
        blocks.append(
            f'<div class="cell" id="cell-{i}-{j}"><h3><span class="{tag}">{len(members)}</span> true '
            f'{esc(names[i])} → predicted {esc(names[j])}</h3><div class="grid">{thumbs}</div>{listing}</div>'
        )
    return "".join(blocks)


def _thumb(view: DataView | None, key: str, true: str, pred: str, probability: float) -> str:
    uri = view.thumbnail(str(key)) if view is not None else None
    caption = (
        f'<span class="k">{esc(key)}</span>true <span class="t">{esc(true)}</span><br>'
        f'predicted <span class="p">{esc(pred)}</span> '
        f"({probability:.2f})"
    )
    return figure(uri, caption, f"{key}")


# ---------------------------------------------------------------------------------------------
# A cv, an audit
# ---------------------------------------------------------------------------------------------


def cv_page(parent: Path, budget: Budget) -> str:
    """The per-fold table with intervals, and the out-of-fold predictions of every training image."""
    import yaml

    report = read_cv(parent)
    plan = json.loads((parent / PLAN_FILE).read_text())
    sections = [cv_table_section(parent, report)]
    note = ""
    if (parent / OOF_NPZ).is_file():
        oof = mean_per_key(read_predictions(parent / OOF_NPZ))
        view, note = open_data(plan["recipe"].get("data", {}))
        sections += prediction_sections(oof, np.arange(len(oof.key)), view, budget, "out-of-fold predictions")
    sections.append(recipe_section(yaml.safe_dump(plan["recipe"], sort_keys=False)))
    top1 = report["metrics"].get("top1", {})
    ci = top1.get("ci95")
    cards = [
        ("val top-1 (mean)", f"{top1.get('mean', float('nan')):.2f}%"),
        ("95% interval", f"{ci[0]:.1f}–{ci[1]:.1f}%" if ci else "n/a"),
        ("runs", str(len(report["runs"]))),
        ("model", str(report.get("model"))),
    ]
    subtitle = f"{report['folds']}-fold x {report['repeats']} repeat(s) x {report['seeds']} seed(s): {parent}"
    return page(f"{parent.name}: cross-validation", subtitle, cards, sections, footer(budget, note))


def mean_per_key(oof: Any) -> Any:
    """One row per image: its out-of-fold probabilities averaged over repeats and seeds."""

    keys, first, inverse = np.unique(oof.key, return_index=True, return_inverse=True)
    probs = np.zeros((len(keys), oof.probs.shape[1]))
    np.add.at(probs, inverse, oof.probs)
    probs /= np.bincount(inverse, minlength=len(keys))[:, None]
    return Predictions(
        np.full(len(keys), "val"), oof.index[first], keys, oof.target[first], probs, oof.class_names
    )


def audit_page(path: Path, budget: Budget) -> str:
    """Files, classes, the duplicate pairs side by side, the suspected label errors."""
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AstroError(
            f"cannot read {path} as an audit ({exc}); pass the audit.json `astro audit` wrote"
        ) from None
    if not isinstance(result, dict) or result.get("format") != "astro-audit/1":
        raise AstroError(f"{path} is not an audit.json written by `astro audit`")
    view, note = open_data(result["data"])
    dups, files = result["duplicates"], result["files"]
    issues = result.get("label_issues", {})
    cards = [
        ("images", str(result["images"])),
        ("unreadable", str(len(files["unreadable"]))),
        ("duplicate pairs", str(dups["total"])),
        ("across splits", str(dups["cross_split"])),
    ]
    if issues:
        cards.append(("suspected label errors", str(issues["flagged"])))
    sections = audit_sections(result, view, budget.take)
    return page(
        f"Data audit: {result['data'].get('root', '')}",
        f"astro audit of {path}",
        cards,
        sections,
        footer(budget, note),
    )
