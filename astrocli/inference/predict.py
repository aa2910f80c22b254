"""Predict labels for image files: ``astro predict``.

Inputs are files, directories (walked for images) or glob patterns (expanded here, for shells
that do not). Each image goes through the model's own evaluation transform (for ``.onnx`` models
numpy + Pillow only, so predicting needs no PyTorch); a file that cannot
be read becomes an error row and the rest are still predicted.

    runner = load_runner("runs/galaxy10/best.safetensors")
    inputs = collect_inputs(["images/", "more/*.png"])
    rows = predict_files(runner, inputs.files, top_k=3)
    write_predictions(rows, "predictions.csv")
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astrocli.errors import AstroError, first_line
from astrocli.files import atomic_write_text, check_writable
from astrocli.images.arrays import FITS_EXTENSIONS
from astrocli.images.pil import is_image_file
from astrocli.inference.runner import Runner
from astrocli.metrics import softmax

CHECKPOINT_NAME = "best.safetensors"
OUTPUT_FORMATS = (".json", ".csv")


@dataclass
class Inputs:
    """What the PATHS arguments expanded to.

    Attributes:
        files: image files to predict, in argument order (directories sorted), without duplicates.
        missing: arguments that matched nothing, with the reason (reported as error rows).
        empty_dirs: directories that hold no image.
    """

    files: list[Path] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    empty_dirs: list[Path] = field(default_factory=list)


def is_predictable(path: Path) -> bool:
    """Whether a file found while walking a directory looks like an image (FITS included)."""
    name = path.name.lower()
    return is_image_file(path) or name.endswith(FITS_EXTENSIONS) or name.endswith(".npy")


def _walk(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and is_predictable(p))


def collect_inputs(paths: Sequence[str]) -> Inputs:
    """Expand files, directories and glob patterns into a list of image files.

    A file named explicitly is always tried (it gets an error row if it is not an image);
    files found by walking a directory or matching a glob are kept only with image extensions.
    """
    inputs = Inputs()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            inputs.files.append(path)

    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = _walk(path)
            if not found:
                inputs.empty_dirs.append(path)
            for p in found:
                add(p)
        elif path.is_file():
            add(path)
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and is_predictable(Path(m))]
            for d in (Path(m) for m in matches if Path(m).is_dir()):
                files.extend(_walk(d))
            if not files:
                inputs.missing.append({"path": arg, "error": "pattern matched no image files"})
            for p in files:
                add(p)
        else:
            inputs.missing.append({"path": arg, "error": "no such file or directory"})
    return inputs


def find_latest_checkpoint(output_dir: str | Path) -> Path:
    """``best.safetensors`` of the most recently modified run under ``output_dir``.

    Raises:
        AstroError: no run directory with a best checkpoint exists there.
    """
    root = Path(output_dir)
    candidates = [p for p in root.glob(f"*/{CHECKPOINT_NAME}") if p.is_file()] if root.is_dir() else []
    if not candidates:
        raise AstroError(
            f"no --checkpoint given and no run with {CHECKPOINT_NAME} under '{root}/'; "
            "train one with `astro train` or pass --checkpoint FILE"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def _error_reason(exc: Exception) -> str:
    """``Type: first line of the message``, or just the type when there is no message."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name


def predict_files(
    runner: Runner,
    files: Sequence[Path],
    top_k: int = 5,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Predict every file; unreadable ones become ``{"path", "error"}`` rows, in input order.

    Args:
        runner: the loaded model.
        files: image paths.
        top_k: how many classes each ``topk`` list holds (capped at the class count).
        batch_size: images per forward pass.
        on_batch: called with the number of files processed after each batch (progress bars).
    """
    if top_k < 1:
        raise AstroError(f"--top-k must be at least 1, got {top_k}")
    names = runner.class_names
    k = min(top_k, len(names))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        tensors, ok_rows = [], []
        for path in chunk:
            row: dict[str, Any] = {"path": str(path)}
            rows.append(row)
            try:
                tensors.append(runner.transform(runner.load_input(path)))
                ok_rows.append(row)
            except AstroError:
                raise
            except Exception as exc:  # PIL / astropy / OS errors: this file only
                row["error"] = _error_reason(exc)
        if tensors:
            # The checkpoint's calibration temperature (1.0 when never calibrated; ONNX carries it too).
            probs = softmax(runner.logits(runner.stack(tensors)) / runner.meta.temperature)
            for row, p in zip(ok_rows, probs, strict=True):
                row.update(_prediction(p, names, k))
        if on_batch is not None:
            on_batch(len(chunk))
    return rows


def _prediction(probs: np.ndarray, names: Sequence[str], k: int) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")[:k]
    topk = [{"label": names[i], "class_index": int(i), "score": float(probs[i])} for i in order]
    return {
        "label": topk[0]["label"],
        "class_index": topk[0]["class_index"],
        "score": topk[0]["score"],
        "topk": topk,
    }


def check_output_path(output: str | Path) -> Path:
    """Validate ``--output`` before any work: it must end in .json or .csv."""
    path = Path(output)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise AstroError(
            f"--output '{output}' must end in .json or .csv (the format is chosen by the extension)"
        )
    if path.is_dir():
        raise AstroError(f"--output '{output}' is a directory; give a file name ending in .json or .csv")
    check_writable(path)
    return path


def predictions_csv(rows: Iterable[dict[str, Any]], top_k: int) -> str:
    """CSV text: ``path,label,class_index,score,top1_label,top1_index,top1_score,...,error``."""
    columns = ["path", "label", "class_index", "score"]
    for i in range(1, top_k + 1):
        columns += [f"top{i}_label", f"top{i}_index", f"top{i}_score"]
    columns.append("error")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {key: row.get(key, "") for key in ("path", "label", "class_index", "score", "error")}
        for i, entry in enumerate(row.get("topk", []), start=1):
            flat.update(
                {
                    f"top{i}_label": entry["label"],
                    f"top{i}_index": entry["class_index"],
                    f"top{i}_score": entry["score"],
                }
            )
        writer.writerow(flat)
    return buffer.getvalue()


def write_predictions(rows: Sequence[dict[str, Any]], output: str | Path) -> None:
    """Atomically write the rows as JSON (a list of objects) or CSV, chosen by the extension."""
    path = check_output_path(output)
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(list(rows), indent=2) + "\n")
    else:
        top_k = max((len(r.get("topk", [])) for r in rows), default=0)
        atomic_write_text(path, predictions_csv(rows, top_k))
