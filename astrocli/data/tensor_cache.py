"""The tensor pipeline's cache: every image of a split decoded once into uint8 ``[N, C, H, W]``.

- ``fits_in_memory(dataset, recipe, device=None) -> bool``: whether the decoded uint8 images of
  ``dataset`` (N*C*H*W bytes) take at most half of the free memory of ``device`` (default: the GPU
  when there is one, else host RAM; :func:`astrocli.devices.free_memory_bytes`).
  ``data.pipeline: auto`` picks this pipeline when True.
- ``build_tensor_cache(dataset, cfg: DataConfig, split: str) -> TensorCache``: uint8 ``[N, C, H, W]``
  images + int64 labels, decoded once. Image-file datasets are saved with safetensors under
  ``cfg.cache_dir`` (default: the user cache folder, :func:`default_cache_dir`) keyed by a hash of
  (file paths, sizes, mtimes, labels, in_chans, stored size, split), so the second run loads
  without decoding anything.
  Array-backed datasets (``uint8_array()``: h5, CIFAR binaries) are taken as they are, no disk copy.
  Images keep their native size when all are equal (CIFAR 32 px, Galaxy 256 px); otherwise each is
  resized (shorter side) and centre-cropped to ``max(img_size, round(img_size / crop_pct))``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from astrocli.bars import track
from astrocli.checkpoint import save_tensors
from astrocli.devices import free_memory_bytes
from astrocli.errors import DataError, OutputError
from astrocli.recipe import DataConfig, Recipe

CACHE_FORMAT = 1  # bump when the cache layout or decoding changes
MEMORY_FRACTION = 0.5  # share of free memory the cache may take (the rest: model, activations)


@dataclass
class TensorCache:
    """Decoded images ``[N, C, H, W]`` uint8 and labels ``[N]`` int64 (same device)."""

    images: torch.Tensor
    labels: torch.Tensor
    key: str = ""
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> TensorCache:
        """This cache on ``device`` (the same object when already there)."""
        if self.images.device == torch.device(device):
            return self
        return TensorCache(self.images.to(device), self.labels.to(device), self.key, self.path)


# ------------------------------------------------------------------------------------------------
# Memory estimate
# ------------------------------------------------------------------------------------------------


def _first_image_shape(dataset: Any) -> tuple[int, int]:
    """(H, W) of the first sample without decoding the whole dataset."""
    samples = getattr(dataset, "samples", None)
    if samples:
        with Image.open(samples[0][0]) as img:  # reads the header only
            return img.height, img.width
    image, _ = dataset[0]
    return image.height, image.width


def estimated_cache_bytes(dataset: Any, cfg: DataConfig) -> int:
    """Bytes of the uint8 cache for ``dataset`` (from the first image's size)."""
    if len(dataset) == 0:
        return 0
    if hasattr(dataset, "cache_nbytes"):  # float path: its own dtype (uint8 or float16) and bands
        return dataset.cache_nbytes()
    h, w = _first_image_shape(dataset)
    return len(dataset) * cfg.in_chans * h * w


def fits_in_memory(
    dataset: Any, recipe: Recipe | DataConfig, device: torch.device | str | None = None
) -> bool:
    """Whether the decoded cache of ``dataset`` takes at most half the free memory of ``device``.

    ``device`` None: the current GPU when one is available, else host RAM.
    """
    cfg = recipe.data if isinstance(recipe, Recipe) else recipe
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        needed = estimated_cache_bytes(dataset, cfg)
    except (OSError, IndexError, ValueError):
        return False
    free = free_memory_bytes(torch.device(device)) or 0  # unknown: nothing to spare
    return needed <= MEMORY_FRACTION * free


# ------------------------------------------------------------------------------------------------
# Building and caching
# ------------------------------------------------------------------------------------------------


def _file_fingerprint(samples: Sequence[tuple[str, int]]) -> str:
    """Hash of every (path, size, mtime, label): any change to the files gives a new cache."""
    digest = hashlib.blake2b(digest_size=16)
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
    return digest.hexdigest()


def stored_size(img_size: int, crop_pct: float) -> int:
    """The side images are stored at when their sizes differ: room for the eval crop and RRC."""
    return max(img_size, int(round(img_size / crop_pct)))


def _decode_all(dataset: Any, cfg: DataConfig, split: str = "") -> np.ndarray:
    """Decode every sample to uint8 ``[N, H, W, C]``: native size if all agree, else resized."""
    first, _ = dataset[0]
    native = (first.height, first.width)
    arrays: list[np.ndarray] = []
    for index in track(range(len(dataset)), _decoding(dataset, split), len(dataset)):
        image, _ = dataset[index]
        if (image.height, image.width) != native:
            break  # rare: mixed sizes, decode again at one size (below, after this bar is closed)
        arrays.append(_as_hwc(image, cfg.in_chans))
    else:
        return np.stack(arrays)
    return _decode_resized(dataset, cfg, split)


def _decoding(dataset: Any, split: str) -> str:
    """The progress bar's words: decoding 60,000 JPEGs takes minutes, the user is told what runs."""
    return f"decoding {len(dataset)} {split + ' ' if split else ''}images into the tensor cache"


def _decode_resized(dataset: Any, cfg: DataConfig, split: str = "") -> np.ndarray:
    side = stored_size(cfg.img_size, cfg.crop_pct)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}.get(cfg.interpolation, Image.NEAREST)
    out = np.empty((len(dataset), side, side, cfg.in_chans), dtype=np.uint8)
    for index in track(range(len(dataset)), _decoding(dataset, split), len(dataset)):
        image, _ = dataset[index]
        scale = side / min(image.width, image.height)
        w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
        image = image.resize((w, h), resample)
        left, top = (w - side) // 2, (h - side) // 2
        out[index] = _as_hwc(image.crop((left, top, left + side, top + side)), cfg.in_chans)
    return out


def _as_hwc(image: Image.Image, in_chans: int) -> np.ndarray:
    array = np.asarray(image.convert("L" if in_chans == 1 else "RGB"), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _to_nchw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def default_cache_dir() -> Path:
    """The user's cache folder (``~/.cache/astro/tensors`` on Linux), never the dataset folder,
    which may be read-only or shared (a hidden folder there also became a "class")."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("astro")) / "tensors"


def cache_path(dataset: Any, cfg: DataConfig, split: str) -> tuple[str, Path] | None:
    """(key, file) of the disk cache for an image-file dataset; None for other datasets."""
    samples = getattr(dataset, "samples", None)
    if not samples:
        return None
    description = {
        "format": CACHE_FORMAT,
        "files": _file_fingerprint(samples),
        "in_chans": cfg.in_chans,
        "split": split,
        "resize_side": stored_size(cfg.img_size, cfg.crop_pct),
        "interpolation": cfg.interpolation,
    }
    key = hashlib.blake2b(json.dumps(description, sort_keys=True).encode(), digest_size=16).hexdigest()
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return key, root / f"tensors-{split}-{key}.safetensors"


def build_tensor_cache(dataset: Any, cfg: DataConfig, split: str) -> TensorCache:
    """Decode ``dataset`` once into a :class:`TensorCache` (on the CPU), reusing the disk cache.

    Raises:
        DataError: the dataset is empty.
    """
    if len(dataset) == 0:
        raise DataError(f"the {split} dataset has no images; check data.root ({cfg.root})")
    labels = torch.as_tensor(list(dataset.targets), dtype=torch.int64)
    if hasattr(dataset, "cache_array"):  # float path: uint8 or float16 [N, C, H, W], cached by the dataset
        return TensorCache(
            torch.from_numpy(np.ascontiguousarray(dataset.cache_array())), labels, key="science"
        )
    if hasattr(dataset, "uint8_array"):  # already uint8 rows: nothing to decode, nothing to save
        return TensorCache(_to_nchw(dataset.uint8_array()), labels, key="array")
    located = cache_path(dataset, cfg, split)
    if located is not None and located[1].is_file():
        loaded = _load_cache(located[1], len(labels))
        if loaded is not None:
            # Files the decoding skipped are told again, as a run that decodes would: the cache
            # remembers them, so a cached run still lists them in RUN_DIR/skipped-images.txt.
            for image_path, reason in loaded[1].items():
                dataset.report_skip(image_path, reason)
            return TensorCache(loaded[0], labels, located[0], located[1])
    before = set(getattr(dataset, "skipped", dict)())
    images = _to_nchw(_decode_all(dataset, cfg, split))
    skipped = {p: r for p, r in getattr(dataset, "skipped", dict)().items() if p not in before}
    if located is None:
        return TensorCache(images, labels, key="uncached")
    key, path = located
    _save_cache(path, images, labels, skipped)
    return TensorCache(images, labels, key, path)


def _load_cache(path: Path, count: int) -> tuple[torch.Tensor, dict[str, str]] | None:
    """The cached images and the files skipped when they were decoded, or None when the file is
    unreadable or stale (then it is rebuilt)."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            skipped = json.loads((handle.metadata() or {}).get("skipped", "{}"))
    except Exception:  # a truncated or foreign file: decode again and overwrite
        return None
    images = tensors.get("images")
    if images is None or images.dtype != torch.uint8 or len(images) != count:
        return None
    return images, skipped


def _save_cache(path: Path, images: torch.Tensor, labels: torch.Tensor, skipped: dict[str, str]) -> None:
    """Write atomically (temp file + rename); an unwritable location only costs the next run time."""
    meta = {"format": "astro-tensor-cache/1", "skipped": json.dumps(skipped)}
    try:
        save_tensors(path, {"images": images, "labels": labels}, meta)
    except (OSError, OutputError):  # OutputError: read-only or full (astrocli.errors.write_error)
        pass
