"""Sections of ``report.html`` that read a run's, a cv's or an audit's own records (no predictions)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from astrocli.engine.run_dir import RunDir
from astrocli.experiments.cv import VAL_METRICS
from astrocli.experiments.dataview import DataView
from astrocli.experiments.report_html import Section, esc, figure, line_chart, table

PAIRS_SHOWN = 60  # duplicate pairs with thumbnails (two each); the rest are listed as text
ISSUES_SHOWN = 60  # suspected label errors with thumbnails
LISTED = 200  # rows of a text list (unreadable files, further pairs) before "and N more"


def run_overview(
    summary: dict[str, Any], recipe: dict[str, Any], split: str, scored: int, rows: list[dict[str, Any]]
) -> Section:
    """The protocol in words, the headline numbers, and the learning curves."""
    selected = summary.get("selected_on", "val")
    metric = summary.get("select_metric", "top1")
    data = recipe.get("data", {})
    words = (
        f"Trained {summary.get('model', '?')} ({summary.get('params', 0):,} parameters) on "
        f"{data.get('source', '?')} data ({data.get('root', '')}) "
        f"for {summary.get('epochs', '?')} epoch(s) on "
        f"{summary.get('device', '?')}. The checkpoint was selected on the <b>{esc(selected)}</b> split by "
        f"{esc(metric)} (epoch {summary.get('best_epoch', '?')})"
    )
    words = esc(words).replace("&lt;b&gt;", "<b>").replace("&lt;/b&gt;", "</b>")  # our own bold only
    words += "; the images below are the " + esc(split) + f" split ({scored} images)."
    warn = ""
    if selected == "test":
        warn = (
            '<p class="note">The test split selected the checkpoint (data.split=test, the papers\' '
            "protocol): its score is optimistic.</p>"
        )
    numbers = [
        ("val top-1 %", summary.get("best_top1")),
        ("test top-1 %", summary.get("test_top1")),
        ("val macro-F1 %", (summary.get("best_metrics") or {}).get("macro_f1")),
        ("ECE (raw / calibrated)", _pair(summary.get("ece"), summary.get("ece_calibrated"))),
        ("temperature", summary.get("temperature")),
        ("training time (s)", summary.get("total_seconds")),
    ]
    shown = [(k, _number(k, v)) for k, v in numbers if v is not None]
    charts = _curves(rows)
    body = f"<p>{words}</p>{warn}" + table(["", "value"], shown) + charts
    return Section("overview", "Run and protocol", body)


def _number(label: str, value: Any) -> str:
    """Percentages with two decimals, seconds with one, the rest with four significant digits."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.2f}" if "%" in label else f"{value:.1f}" if "(s)" in label else f"{value:.4g}"


def _pair(a: float | None, b: float | None) -> str | None:
    return None if a is None or b is None else f"{a:.4f} / {b:.4f}"


def _curves(rows: list[dict[str, Any]]) -> str:
    """Loss and accuracy per epoch (metrics.csv), as inline SVG."""
    if not rows:
        return ""

    def series(column: str) -> list[tuple[float, float]]:
        return [(r["epoch"], r[column]) for r in rows if r.get(column) is not None]

    loss = line_chart(
        [("train loss", series("train_loss")), ("val loss", series("val_loss"))], "loss", "loss"
    )
    acc = line_chart([("val top-1", series("val_top1")), ("val top-5", series("val_top5"))], "accuracy", "%")
    return f'<h3>Learning curves</h3><div class="charts">{loss}{acc}</div>'


def cv_table_section(parent: Path, report: dict[str, Any]) -> Section:
    """Each run's held-out metrics, then mean, std and the Student-t 95% interval."""

    metrics = [m for m in VAL_METRICS if m in report["metrics"]]
    rows: list[list[Any]] = []
    for name in report["runs"]:
        best = (RunDir(parent / name).read_summary() or {}).get("best_metrics", {})
        rows.append([name, *(_fmt(best.get(m), m) for m in metrics)])
    for label, field in (("mean", "mean"), ("std", "std")):
        rows.append([label, *(_fmt(report["metrics"][m][field], m) for m in metrics)])
    intervals = [report["metrics"][m]["ci95"] for m in metrics]
    rows.append(["95% interval", *(f"{c[0]:.3g} to {c[1]:.3g}" if c else "n/a" for c in intervals)])
    body = table(["run", *metrics], rows)
    if report.get("missing"):
        body += f'<p class="note">Not finished yet: {esc(", ".join(report["missing"]))}</p>'
    if report.get("selected_on") == "test":
        body += '<p class="note">Checkpoints were selected on the test split (data.split=test).</p>'
    return Section("folds", "Folds", body)


def _fmt(value: Any, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if metric == "loss" else f"{value:.2f}"


def audit_sections(
    result: dict[str, Any], view: DataView | None, take: Callable[[int], int]
) -> list[Section]:
    """Files and classes, duplicate pairs side by side, suspected label errors."""
    sections = [
        _files_section(result),
        _pairs_section(result["duplicates"], result["class_names"], view, take),
    ]
    if "label_issues" in result:
        sections.append(_issues_section(result["label_issues"], view, take))
    return sections


def _files_section(result: dict[str, Any]) -> Section:
    files, classes = result["files"], result["classes"]
    counts = classes["counts"]
    roles = list(counts)
    rows = [[name, *(counts[r].get(name, 0) for r in roles)] for name in result["class_names"]]
    ratio = classes["imbalance_ratio"]
    body = (
        f"<p>{files['decoded']} of {files['scanned']} images decoded. Modes: {esc(_join(files['modes']))}; "
        f"channels: {esc(_join(files['channels']))}; sizes: {esc(_join(files['sizes']))}"
        f"{' and more' if files['distinct_sizes'] > len(files['sizes']) else ''}. "
        f"Imbalance (largest / smallest training class): {esc(ratio if ratio else 'n/a')}.</p>"
    )
    body += "<h3>Images per class</h3>" + table(["class", *roles], rows)
    for title, items in (("Unreadable", files["unreadable"]), ("Skipped by the recipe", files["skipped"])):
        if items:
            body += f"<h3>{title} ({len(items)})</h3>" + table(
                ["file", "reason"], [(i["key"], i["reason"]) for i in items[:LISTED]], left=2
            )
    return Section("files", "Files and classes", body)


def _join(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "none"


def _pairs_section(
    dups: dict[str, Any], names: list[str], view: DataView | None, take: Callable[[int], int]
) -> Section:
    pairs = dups["pairs"]
    shown = take(2 * min(PAIRS_SHOWN, len(pairs))) // 2
    cards = []
    for pair in pairs[:shown]:
        tag = (
            '<span class="tag bad">across splits</span>'
            if pair["cross_split"]
            else '<span class="tag">same split</span>'
        )
        two = "".join(
            figure(
                view.thumbnail(pair[k]) if view else None,
                f'<span class="k">{esc(pair[k])}</span>'
                f"{esc(pair['split_' + k])} · {esc(names[pair['label_' + k]])}",
                pair[k],
            )
            for k in ("a", "b")
        )
        cards.append(
            f'<div class="pair">{tag} <span class="muted">{esc(pair["kind"])}, distance '
            f'{pair["distance"]:g}</span><div class="two">{two}</div></div>'
        )
    rest = [
        (p["a"], p["split_a"], p["b"], p["split_b"], p["kind"], f"{p['distance']:g}")
        for p in pairs[shown:][:LISTED]
    ]
    body = (
        f"<p>{dups['total']} pair(s): {dups['exact']} exact, {dups['near']} near, "
        f"{dups['embedding']} by embedding; "
        f"<b>{dups['cross_split']} across splits</b> (the held-out copy on the left). "
        f"{esc(dups['method'])}.</p>"
        f'<div class="pairs" id="pairs-grid">{"".join(cards)}</div>'
    )
    if rest:
        body += "<h3>More pairs</h3>" + table(["a", "split", "b", "split", "kind", "distance"], rest, left=5)
    return Section("duplicates", "Duplicates and leaks", body)


def _issues_section(issues: dict[str, Any], view: DataView | None, take: Callable[[int], int]) -> Section:
    flagged = [e for e in issues["ranking"] if e["flagged"]]
    entries = flagged or issues["ranking"][:ISSUES_SHOWN]
    shown = take(min(ISSUES_SHOWN, len(entries)))
    figures = "".join(
        figure(
            view.thumbnail(e["key"]) if view else None,
            f'<span class="k">#{e["rank"]} {esc(e["key"])}</span>given'
            f' <span class="p">{esc(e["given"])}</span><br>suggested '
            f'<span class="t">{esc(e["suggested"])}</span> ({e["suggested_probability"]:.2f})',
            e["key"],
        )
        for e in entries[:shown]
    )
    body = (
        f"<p>{issues['flagged']} of {issues['images']} images flagged by {esc(issues['method'])}, "
        "from the out-of-fold "
        f"probabilities of {esc(issues['cv'])}; most suspect first "
        "(lowest probability of the given label).</p>"
        f'<div class="grid" id="issues-grid">{figures}</div>'
    )
    return Section("labels", "Suspected label errors", body)
