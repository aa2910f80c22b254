"""``astro audit``: what is wrong with a data set before a number is trusted (docs/audit.md).

    result = run_audit(load_recipe("quickstart").data, out_dir=Path("runs/quickstart-audit"))
    result["duplicates"]["pairs"][0]     # {"a", "b", "split_a", "split_b", "distance", "kind", ...}

One pass decodes every image (:mod:`astrocli.experiments.scan`): unreadable, empty and truncated
files, modes, channels and sizes, class counts and imbalance; exact and near duplicates within and
across splits (:mod:`astrocli.experiments.duplicates`), with a checkpoint also its embedding
neighbours; with ``--cv DIR`` the suspected label errors ranked from out-of-fold probabilities
(:mod:`astrocli.experiments.label_issues`). ``--fix`` writes ``exclude.txt`` and ``relabel.csv``
beside ``audit.json``; nothing in the data folder is ever written.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from astrocli.data.exclude import read_exclude
from astrocli.errors import AstroError
from astrocli.experiments.dataview import DataView, open_view
from astrocli.experiments.duplicates import DEFAULT_MAX_BITS, Pair, exact_pairs, near_pairs
from astrocli.experiments.embeddings import embedding_neighbours
from astrocli.experiments.label_issues import rank_label_issues
from astrocli.experiments.predictions import read_oof
from astrocli.experiments.scan import ImageFacts, scan_images, skipped_files
from astrocli.files import atomic_write_text
from astrocli.images.hashing import HASH_BITS
from astrocli.recipe import DataConfig

AUDIT_FILE = "audit.json"
MAX_PAIRS = 5000  # pairs kept in audit.json (cross-split first); the counts cover them all
ROLE_ORDER = {"test": 0, "val": 1, "train": 2}  # --fix keeps the held-out copy of a leaked image


def run_audit(
    cfg: DataConfig,
    out_dir: Path,
    *,
    cv_dir: Path | None = None,
    checkpoint: Path | None = None,
    fix: bool = False,
    max_bits: int = DEFAULT_MAX_BITS,
    min_cosine: float = 0.98,
    label_method: str = "auto",
    on_image: Any = None,
) -> dict[str, Any]:
    """Audit ``cfg``'s data; write ``out_dir/audit.json`` (and the ``--fix`` lists); return the result."""

    oof = _read_oof(cv_dir) if cv_dir is not None else None
    view = open_view(cfg)
    facts, hashes = scan_images(view, on_image)
    excluded = _excluded(cfg)
    pairs = exact_pairs([f.digest for f in facts])
    decoded = np.array([f.digest is not None for f in facts], dtype=bool)
    pairs += near_pairs(hashes, max_bits, skip={(p.a, p.b) for p in pairs}, valid=decoded)
    if checkpoint is not None:
        pairs += embedding_neighbours(checkpoint, view, facts, min_cosine, skip={(p.a, p.b) for p in pairs})
    folds = _folds(oof)
    result: dict[str, Any] = {
        "format": "astro-audit/1",
        "data": _data_record(cfg),
        "class_names": view.class_names,
        "images": len(facts),
        "files": _file_report(facts, skipped_files(view, excluded)),
        "classes": _class_report(facts, view.class_names),
        "duplicates": _duplicate_report(pairs, facts, folds, max_bits, checkpoint, min_cosine),
    }
    if oof is not None:
        result["label_issues"] = _label_report(oof, view, rank_label_issues, label_method, cv_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fix:
        result["fix"] = write_fix_lists(result, out_dir)
    atomic_write_text(out_dir / AUDIT_FILE, json.dumps(result, indent=2) + "\n")
    return result


def _read_oof(cv_dir: Path) -> Any:

    return read_oof(cv_dir)


def _excluded(cfg: DataConfig) -> set[str]:

    return read_exclude(cfg.exclude) if cfg.exclude else set()


def _data_record(cfg: DataConfig) -> dict[str, Any]:
    """The data configuration, so `astro report` can open the same images again."""
    return asdict(cfg)


def _file_report(facts: list[ImageFacts], skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """Unreadable and skipped files; modes, channel counts and sizes of the rest."""
    good = [f for f in facts if f.error is None]
    sizes = Counter(f"{f.width}x{f.height}" for f in good)
    return {
        "scanned": len(facts),
        "decoded": len(good),
        "unreadable": [{"key": f.key, "split": f.split, "reason": f.error} for f in facts if f.error],
        "skipped": skipped,
        "modes": dict(Counter(f.mode for f in good).most_common()),
        "channels": {str(k): v for k, v in Counter(f.channels for f in good).most_common()},
        "sizes": dict(sizes.most_common(10)),
        "distinct_sizes": len(sizes),
    }


def _class_report(facts: list[ImageFacts], class_names: list[str]) -> dict[str, Any]:
    """Images per class in each role (train / val / test) and the training imbalance ratio."""
    counts: dict[str, dict[str, int]] = {}
    for role in ("train", "val", "test"):
        per = Counter(f.label for f in facts if f.role == role)
        if per:
            counts[role] = {name: per.get(i, 0) for i, name in enumerate(class_names)}
    train = list(counts.get("train", {}).values())
    ratio = (max(train) / min(train) if min(train) else math.inf) if train else None
    return {
        "counts": counts,
        "imbalance_ratio": None if ratio is None or math.isinf(ratio) else round(ratio, 3),
        "empty_classes": [n for n, c in counts.get("train", {}).items() if c == 0],
    }


def _folds(oof: Any) -> dict[str, int]:
    """key -> fold of the first repeat and seed (which fold model held the image out)."""
    if oof is None:
        return {}
    rows = (oof.extra["repeat"] == 0) & (oof.extra["seed"] == 0)
    return {str(k): int(f) for k, f in zip(oof.key[rows], oof.extra["fold"][rows], strict=True)}


def _pair_record(pair: Pair, facts: list[ImageFacts], folds: dict[str, int]) -> dict[str, Any]:
    a, b = facts[pair.a], facts[pair.b]
    if ROLE_ORDER[b.role] < ROLE_ORDER[a.role]:  # the held-out copy first: `a` is the one to keep
        a, b = b, a
    record: dict[str, Any] = {
        "a": a.key,
        "b": b.key,
        "split_a": a.role,
        "split_b": b.role,
        "label_a": a.label,
        "label_b": b.label,
        "kind": pair.kind,
        "distance": pair.distance,
        "cross_split": a.role != b.role,
    }
    if a.key in folds and b.key in folds:
        record.update(fold_a=folds[a.key], fold_b=folds[b.key], cross_fold=folds[a.key] != folds[b.key])
    return record


def _duplicate_report(
    pairs: list[Pair],
    facts: list[ImageFacts],
    folds: dict[str, int],
    max_bits: int,
    checkpoint: Path | None,
    min_cosine: float,
) -> dict[str, Any]:
    records = [_pair_record(p, facts, folds) for p in pairs]
    records.sort(key=lambda r: (not r["cross_split"], r["kind"] != "exact", r["distance"], r["a"]))
    kinds = Counter(r["kind"] for r in records)
    return {
        "method": f"pixel SHA-1 (exact); pHash {HASH_BITS} bits <= {max_bits} apart (near)"
        + (f"; embedding cosine >= {min_cosine} ({checkpoint})" if checkpoint else ""),
        "total": len(records),
        "exact": kinds.get("exact", 0),
        "near": kinds.get("near", 0),
        "embedding": kinds.get("embedding", 0),
        "cross_split": sum(r["cross_split"] for r in records),
        "cross_fold": sum(bool(r.get("cross_fold")) for r in records),
        "images_in_cross_split_pairs": len({r["b"] for r in records if r["cross_split"]}),
        "pairs": records[:MAX_PAIRS],
        "left_out": max(0, len(records) - MAX_PAIRS),
    }


def _label_report(oof: Any, view: DataView, rank: Any, method: str, cv_dir: Path | None) -> dict[str, Any]:
    """The ranking of every image with out-of-fold probabilities (mean over repeats and seeds)."""
    keys, inverse = np.unique(oof.key, return_inverse=True)
    probs = np.zeros((len(keys), oof.probs.shape[1]))
    np.add.at(probs, inverse, oof.probs)
    probs /= np.bincount(inverse, minlength=len(keys))[:, None]
    labels = np.zeros(len(keys), dtype=np.int64)
    labels[inverse] = oof.target
    if list(oof.class_names) != view.class_names:
        raise AstroError(
            f"--cv {cv_dir} was trained on classes {oof.class_names[:5]}... but the data has "
            f"{view.class_names[:5]}...; audit the cv's own data (drop --recipe)"
        )
    ranking = rank(labels, probs, method)
    names = view.class_names
    top = max(100, int(ranking.flagged.sum()), math.ceil(0.05 * len(keys)))
    entries = []
    for rank_index, i in enumerate(ranking.order[:top]):
        entries.append(
            {
                "rank": rank_index + 1,
                "key": str(keys[i]),
                "given": names[labels[i]],
                "suggested": names[ranking.suggested[i]],
                "self_confidence": round(float(ranking.self_confidence[i]), 6),
                "suggested_probability": round(float(probs[i, ranking.suggested[i]]), 6),
                "flagged": bool(ranking.flagged[i]),
            }
        )
    return {
        "method": ranking.method,
        "cv": str(cv_dir),
        "images": int(len(keys)),
        "flagged": int(ranking.flagged.sum()),
        "ranking": entries,
        "left_out": int(len(keys) - len(entries)),
    }


def write_fix_lists(result: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``exclude.txt`` (the training copy of each duplicate pair, undecodable images) and ``relabel.csv``
    (flagged label errors, with the suggested label): lists for ``data.exclude`` / ``data.relabel``."""
    exclude: dict[str, str] = {}
    for pair in result["duplicates"]["pairs"]:
        if pair["kind"] != "embedding":  # embedding neighbours are leads to look at, not certain copies
            exclude.setdefault(pair["b"], f"{pair['kind']} duplicate of {pair['a']} ({pair['split_a']})")
    for item in result["files"]["unreadable"]:
        exclude.setdefault(item["key"], item["reason"])
    lines = ["# written by `astro audit --fix`; use it with data.exclude=<this file>"]
    for key, why in exclude.items():  # the reason on its own line: a file name may hold a '#'
        lines += [f"# {why}".replace("\n", " "), key]
    atomic_write_text(out_dir / "exclude.txt", "\n".join(lines) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "label", "given", "self_confidence"])
    flagged = [e for e in result.get("label_issues", {}).get("ranking", []) if e["flagged"]]
    for entry in flagged:
        writer.writerow([entry["key"], entry["suggested"], entry["given"], entry["self_confidence"]])
    atomic_write_text(out_dir / "relabel.csv", buffer.getvalue())
    return {
        "exclude": str(out_dir / "exclude.txt"),
        "excluded": len(exclude),
        "relabel": str(out_dir / "relabel.csv"),
        "relabelled": len(flagged),
    }
