"""One pass over every image of a recipe's data: what each file is, and its hashes.

:func:`scan_images` decodes every image once (a truncated file fails here, as it would mid-run),
records its mode, size and channel count, and computes its pixel digest and perceptual hashes.
:func:`skipped_files` walks ``data.root`` and names the files the source leaves out, with the reason
(empty, not an image PIL can identify, not an image file, listed in ``data.exclude``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from astrocli.experiments.dataview import DataView
from astrocli.images.arrays import is_array_file
from astrocli.images.hashing import TRIMS, perceptual_hashes, pixel_digest
from astrocli.images.pil import IMAGE_EXTENSIONS
from astrocli.images.thumbs import to_pil


@dataclass
class ImageFacts:
    """One audited image: where it is, its label, what it is, and (when it decodes) its digest."""

    key: str
    split: str  # the source's split (train / val / test)
    role: str  # where a run puts it: train, val (held out to select the model) or test
    position: int  # in the source split
    label: int
    mode: str = ""
    width: int = 0
    height: int = 0
    channels: int = 0
    digest: str | None = None
    error: str | None = None


def decode(view: DataView, split: str, position: int) -> tuple[Image.Image, str, int]:
    """(8-bit picture, the file's own mode, channels) of one image; raises when it cannot be decoded."""
    dataset = view.splits[split]
    if hasattr(dataset, "load") and hasattr(dataset, "samples"):  # 8-bit image files: the file's own mode
        with Image.open(dataset.samples[position][0]) as img:
            mode, bands = img.mode, len(img.getbands())
            img.load()
        return to_pil(dataset.load(position)), mode, bands
    item = view.item(split, position)
    if isinstance(item, Image.Image):
        return to_pil(item), item.mode, len(item.getbands())
    array = np.asarray(item)
    channels = array.shape[0] if array.ndim == 3 else 1
    return to_pil(array), f"float32 ({channels} band{'s' if channels > 1 else ''}, scaled)", channels


def scan_images(
    view: DataView, on_image: Callable[[int], None] | None = None
) -> tuple[list[ImageFacts], np.ndarray]:
    """Facts for every image of every split, and their perceptual hashes ``[N, len(TRIMS), W]``
    (zeros for images that did not decode; their ``error`` says why)."""
    facts: list[ImageFacts] = []
    hashes: list[np.ndarray] = []
    blank = np.zeros((len(TRIMS), 4), dtype=np.uint64)
    for split, dataset in view.splits.items():
        for position, key in enumerate(view.keys[split]):
            fact = ImageFacts(
                key, split, view.roles[split][position], position, int(dataset.targets[position])
            )
            try:
                img, fact.mode, fact.channels = decode(view, split, position)
                fact.width, fact.height = img.size
                fact.digest = pixel_digest(img)
                hashes.append(perceptual_hashes(img))
            except Exception as exc:  # any decoder's failure is this file's fact, not the audit's end
                fact.error = f"cannot be decoded ({type(exc).__name__}: {str(exc)[:160]})"
                hashes.append(blank)
            facts.append(fact)
            if on_image is not None:
                on_image(1)
    return facts, np.stack(hashes) if hashes else np.zeros((0, len(TRIMS), 4), dtype=np.uint64)


def skipped_files(view: DataView, excluded: set[str]) -> list[dict[str, Any]]:
    """Files under ``data.root`` that no split holds, each with the reason (for image-file sources)."""

    if not any(hasattr(d, "samples") for d in view.splits.values()):
        return []  # arrays (h5, npz, torchvision): no files to list
    root = Path(view.cfg.root).expanduser()
    held = {key for keys in view.keys.values() for key in keys}
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            key = path.relative_to(root).as_posix()
            if key in held or name.startswith("."):
                continue
            out.append(
                {"key": key, "reason": skip_reason(path, key, excluded, IMAGE_EXTENSIONS, is_array_file)}
            )
    return out


def skip_reason(path: Path, key: str, excluded: set[str], extensions: Any, is_array: Callable) -> str:
    """Why the source does not read ``path``."""
    if key in excluded:
        return "listed in data.exclude"
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    if not (path.suffix.lower() in extensions or is_array(path)):
        return f"not an image file ({path.suffix or 'no extension'})"
    if len(Path(key).parts) < 2:
        return "not inside a class folder"
    return "not an image PIL can identify (corrupt, or another format with an image extension)"
