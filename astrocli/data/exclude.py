"""``data.exclude`` and ``data.relabel``: the lists ``astro audit --fix`` writes, applied to every split.

An image is named by a *key* that does not depend on how a run splits the data: its path relative to
``data.root`` for image files (``train/cat/0001.jpg``), else ``<split>:<row>`` for arrays (``train:17``,
the row of the source's own array). ``exclude.txt`` holds one key a line (a line starting with ``#``
is a comment);
``relabel.csv`` has the columns ``key,label`` (a class name or index; other columns are ignored).
The lists are applied when a source's split is built (:func:`astrocli.data.sources.load_source`),
so training, ``astro cv``, ``astro eval``, ``astro audit`` and ``astro report`` all see the same data;
the files on disk are never moved, renamed or edited.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from astrocli.errors import DataError


def image_keys(dataset: Any, root: str | Path, split: str) -> list[str]:
    """The key of every sample of ``dataset`` (a split as its source built it, or a subset of one)."""
    if hasattr(dataset, "samples"):
        base = Path(root).expanduser()
        keys = []
        for path, _ in dataset.samples:
            try:
                keys.append(Path(path).relative_to(base).as_posix())
            except ValueError:  # outside data.root (tiny_imagenet's own folder): the full path
                keys.append(str(path))
        return keys
    rows = dataset.indices if hasattr(dataset, "indices") else range(len(dataset))
    return [f"{split}:{int(row)}" for row in rows]


def read_exclude(path: str | Path) -> set[str]:
    """The keys listed in an ``exclude.txt`` (blank lines and lines starting with ``#`` skipped; a ``#``
    inside a line is part of the file name)."""
    text = _read(path, "data.exclude")
    keys = (line.strip() for line in text.splitlines())
    return {key for key in keys if key and not key.startswith("#")}


def read_relabel(path: str | Path, class_names: Sequence[str]) -> dict[str, int]:
    """``key -> class index`` from a ``relabel.csv`` whose ``label`` column names a class (or its index)."""
    rows = list(csv.DictReader(_read(path, "data.relabel").splitlines()))
    if rows and not {"key", "label"} <= set(rows[0]):
        raise DataError(f"data.relabel: {path} needs the columns key,label (as `astro audit --fix` writes)")
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[str, int] = {}
    for number, row in enumerate(rows, 2):
        label = (row.get("label") or "").strip()
        if label in index:
            out[row["key"].strip()] = index[label]
        elif label.isdigit() and int(label) < len(class_names):
            out[row["key"].strip()] = int(label)
        else:
            raise DataError(f"data.relabel: {path} line {number}: '{label}' is not a class of this data")
    return out


def _read(path: str | Path, key: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{key}: '{file}' does not exist; give the file `astro audit --fix` wrote")
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{key}: cannot read '{file}' ({exc})") from None


def apply_lists(dataset: Any, cfg: Any, split: str, class_names: Sequence[str]) -> Any:
    """``dataset`` without the excluded images and with the relabelled ones changed (a new dataset)."""
    if not cfg.exclude and not cfg.relabel:
        return dataset
    keys = image_keys(dataset, cfg.root, split)
    if cfg.exclude:
        excluded = read_exclude(cfg.exclude)
        keep = [i for i, key in enumerate(keys) if key not in excluded]
        if len(keep) < len(keys):
            dataset = dataset.subset(keep)
            keys = [keys[i] for i in keep]
    if cfg.relabel:
        labels = read_relabel(cfg.relabel, class_names)
        changes = {i: labels[key] for i, key in enumerate(keys) if key in labels}
        if changes:
            dataset = _relabelled(dataset, changes)
    return dataset


def _relabelled(dataset: Any, changes: dict[int, int]) -> Any:
    """A copy of ``dataset`` (via ``subset``) whose samples at ``changes``' positions get new labels."""
    copy = dataset.subset(list(range(len(dataset))))
    for position, label in changes.items():
        copy.targets[position] = label
        if hasattr(copy, "samples"):  # file datasets rebuild targets from samples in subset()
            copy.samples[position] = (copy.samples[position][0], label)
    return copy
