"""Per-image predictions a run keeps, and the out-of-fold probabilities a cv assembles from them.

``RUN_DIR/predictions.npz`` (and the same rows as ``predictions.csv``) hold the selected checkpoint's
(``best.safetensors``) probabilities on every held-out image, from one forward pass after training:

- ``split``: ``val`` (the split that selected the checkpoint) or ``test`` (scored once at the end);
- ``index``: the image's position in the source split it comes from (for a held-out split carved out
  of ``train``, its position in ``train``; ``split.json`` lists the members in that order);
- ``key``: the image's path under ``data.root``, or ``<split>:<row>`` for arrays (docs/audit.md);
- ``target``: the given label; ``predicted``: the arg-max class; ``confidence``: its probability;
- ``probs`` (npz) / ``prob_0 .. prob_<K-1>`` (csv): the softmax of the logits, before calibration
  (``temperature`` in the npz and the checkpoint gives the calibrated ones: softmax(log p / T));
- ``class_names`` (npz) and ``split.json``: the class of each column.

``astro cv`` writes, in its folder, ``oof.npz`` / ``oof.csv``: the ``val`` rows of every fold run (the
fold model never trained on them) with ``fold``, ``repeat`` and ``seed``, so every training image has
probabilities from a model that did not see it (one row per repeat x seed).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from astrocli.errors import AstroError
from astrocli.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from astrocli.data.sources import DatasetBundle

PREDICTIONS_NPZ = "predictions.npz"
PREDICTIONS_CSV = "predictions.csv"
OOF_NPZ = "oof.npz"
OOF_CSV = "oof.csv"


@dataclass
class Predictions:
    """Rows of predictions (``predictions.npz`` or ``oof.npz``); ``extra`` holds fold/repeat/seed."""

    split: np.ndarray
    index: np.ndarray
    key: np.ndarray
    target: np.ndarray
    probs: np.ndarray
    class_names: list[str]
    temperature: float = 1.0
    extra: dict[str, np.ndarray] | None = None

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def rows(self, split: str) -> np.ndarray:
        """Positions of the rows of ``split``."""
        return np.nonzero(self.split == split)[0]


def heldout_sets(bundle: DatasetBundle) -> list[tuple[str, Any, str, list[int]]]:
    """(name, dataset, source split, index per image) of a bundle's held-out splits: val, then test."""
    info = bundle.split_info
    heldout = info.get("heldout_split", "val")
    val_source = "train" if heldout in ("stratified", "fold") else heldout
    val_index = info.get("members", {}).get("val_positions") or list(range(len(bundle.val)))
    sets = [("val", bundle.val, val_source, list(val_index))]
    if bundle.test is not None:
        sets.append(("test", bundle.test, "test", list(range(len(bundle.test)))))
    return sets


def write_predictions(run_dir: str | Path, device: str = "auto", force: bool = False) -> Path:
    """Score the run's ``best.safetensors`` on its held-out images once; write predictions.npz/.csv.

    Kept when already there (``force`` rewrites), so a resumed ``astro cv`` does not redo it.
    """
    from astrocli.data import build_datasets  # lazy: keeps torch out of cv aggregation and oof files
    from astrocli.data.exclude import image_keys
    from astrocli.inference.evaluate import collect_probabilities, eval_recipe
    from astrocli.inference.runner import load_runner

    run_dir = Path(run_dir)
    out = run_dir / PREDICTIONS_NPZ
    if out.is_file() and not force:
        return out
    checkpoint = run_dir / "best.safetensors"
    if not checkpoint.is_file():
        raise AstroError(f"'{run_dir}' has no best.safetensors; pass a finished run directory")
    runner = load_runner(checkpoint, device=device)
    recipe = eval_recipe(runner.meta)
    bundle = build_datasets(recipe.data)
    parts = []
    for name, dataset, source_split, index in heldout_sets(bundle):
        log_probs, targets = collect_probabilities(runner, dataset, batch_size=256)
        keys = image_keys(dataset, recipe.data.root, source_split)
        parts.append((name, index, keys, targets, np.exp(log_probs)))
    preds = Predictions(
        split=np.concatenate([np.full(len(p[1]), p[0]) for p in parts]).astype(str),
        index=np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts]),
        key=np.concatenate([np.asarray(p[2], dtype=str) for p in parts]),
        target=np.concatenate([np.asarray(p[3], dtype=np.int64) for p in parts]),
        probs=np.concatenate([p[4] for p in parts]).astype(np.float32),
        class_names=list(runner.class_names),
        temperature=float(getattr(runner.meta, "temperature", 1.0) or 1.0),
    )
    save_predictions(preds, run_dir / PREDICTIONS_NPZ, run_dir / PREDICTIONS_CSV)
    return out


def save_predictions(preds: Predictions, npz_path: Path, csv_path: Path) -> None:
    """Both files, atomically (strings stored as fixed-width unicode: no pickle needed to read them)."""
    arrays = {
        "split": preds.split.astype(str),
        "index": preds.index,
        "key": preds.key.astype(str),
        "target": preds.target,
        "probs": preds.probs,
        "class_names": np.asarray(preds.class_names, dtype=str),
        "temperature": np.float64(preds.temperature),
        **(preds.extra or {}),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(npz_path, buffer.getvalue())
    atomic_write_text(csv_path, predictions_csv(preds))


def predictions_csv(preds: Predictions) -> str:
    """The rows as CSV: split, index, key, target, predicted, confidence, [fold, repeat, seed,] prob_i."""
    extra = list(preds.extra or {})
    k = preds.probs.shape[1]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "split",
            "index",
            "key",
            "target",
            "predicted",
            "confidence",
            *extra,
            *(f"prob_{i}" for i in range(k)),
        ]
    )
    predicted = preds.predicted
    for row in range(len(preds.key)):
        probs = preds.probs[row]
        writer.writerow(
            [
                preds.split[row],
                int(preds.index[row]),
                preds.key[row],
                int(preds.target[row]),
                int(predicted[row]),
                f"{probs[predicted[row]]:.6g}",
                *(int(preds.extra[name][row]) for name in extra),  # type: ignore[index]
                *(f"{p:.6g}" for p in probs),
            ]
        )
    return buffer.getvalue()


def read_predictions(path: str | Path) -> Predictions:
    """``predictions.npz`` or ``oof.npz`` (raises AstroError when it is missing or damaged)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise AstroError(f"cannot read {path} ({exc}); re-create it with the command that wrote it") from None
    base = ("split", "index", "key", "target", "probs", "class_names", "temperature")
    missing = [name for name in base if name not in arrays]
    if missing:
        raise AstroError(f"{path} lacks {', '.join(missing)}; re-create it with the command that wrote it")
    extra = {name: arrays[name] for name in arrays if name not in base}
    return Predictions(
        arrays["split"],
        arrays["index"],
        arrays["key"],
        arrays["target"],
        arrays["probs"].astype(np.float64),
        [str(c) for c in arrays["class_names"]],
        float(arrays["temperature"]),
        extra or None,
    )


class FoldRun(Protocol):
    """What write_oof needs of a cv run (astrocli.cv.CvRun has it)."""

    name: str
    fold: int
    repeat: int
    seed: int


def write_oof(parent: str | Path, runs: Sequence[FoldRun]) -> Path | None:
    """``PARENT/oof.npz`` + ``oof.csv`` from the fold runs' predictions (None when no run has them)."""
    parent = Path(parent)
    parts = []
    for run in runs:
        path = parent / run.name / PREDICTIONS_NPZ
        if not path.is_file():
            continue
        preds = read_predictions(path)
        rows = preds.rows("val")
        parts.append((run, preds, rows))
    if not parts:
        return None
    extra = {
        name: np.concatenate(
            [np.full(len(rows), getattr(run, name), dtype=np.int64) for run, _, rows in parts]
        )
        for name in ("fold", "repeat", "seed")
    }
    oof = Predictions(
        split=np.concatenate([p.split[rows] for _, p, rows in parts]),
        index=np.concatenate([p.index[rows] for _, p, rows in parts]),
        key=np.concatenate([p.key[rows] for _, p, rows in parts]),
        target=np.concatenate([p.target[rows] for _, p, rows in parts]),
        probs=np.concatenate([p.probs[rows] for _, p, rows in parts]).astype(np.float32),
        class_names=parts[0][1].class_names,
        temperature=1.0,
        extra=extra,
    )
    save_predictions(oof, parent / OOF_NPZ, parent / OOF_CSV)
    return parent / OOF_NPZ


def read_oof(cv_dir: str | Path) -> Predictions:
    """A cv folder's out-of-fold probabilities (one line naming the fix when there are none)."""
    path = Path(cv_dir) / OOF_NPZ
    if not Path(cv_dir).is_dir():
        raise AstroError(f"--cv '{cv_dir}' is not a folder; pass the folder `astro cv` wrote (runs/NAME-cv)")
    if not path.is_file():
        raise AstroError(
            f"'{cv_dir}' has no {OOF_NPZ} (out-of-fold probabilities); run `astro cv` with astro 0.4 or "
            "later (re-running the same `astro cv` command on this folder adds it without retraining)"
        )
    return read_predictions(path)
