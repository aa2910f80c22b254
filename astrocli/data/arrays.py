"""The float path of the data layer: scientific images as float arrays, and the ``h5``/``npz`` sources.

:func:`prepare_float_path` (called by :func:`astrocli.data.sources.build_datasets`) decides whether a
run uses 8-bit PIL images (``data.pixels: uint8``, the historical path) or float32 ``[C, H, W]``
arrays (``float``): FITS, 16-bit PNG/TIFF, float TIFF, ``.npy`` files, h5/npz arrays, any band
count, intensity scaling. Float-path datasets yield ``(float32 [C, H, W] scaled array, label)`` and
offer what the tensor pipeline needs:

- ``cache_array()``: every image once, ``[N, C, H, W]``: uint8 when all images are 8-bit and unscaled,
  else float16 (float32 when float16 would lose the values: physical units beyond its range);
  file datasets keep it in ``<cache_dir>/science-<split>-<key>.safetensors`` with its statistics;
- ``cache_nbytes()``: its size in bytes (the ``data.pipeline: auto`` memory estimate);
- ``channel_stats()``: per-channel mean/std of the cache (the normalisation when the recipe has none).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from astrocli.data.base import ArrayImageDataset, ImageFileDataset, NumpyStore, SourceData
from astrocli.data.galaxy10 import H5Store
from astrocli.data.tensor_cache import default_cache_dir
from astrocli.errors import DataError, OutputError, RecipeError
from astrocli.files import atomic_write_bytes
from astrocli.images.arrays import (
    ArrayReader,
    is_array_file,
    preprocess_for,
    read_raw,
    reader_for,
    resize_short_center_crop,
    to_chw,
)
from astrocli.recipe import DataConfig

CACHE_FORMAT = "astro-science-cache/1"  # bump when decoding or the layout of the file changes
READ_BLOCK_ROWS = 256  # h5/npz rows converted at a time while building the cache
PROBE_FILES = 8  # files looked at (evenly spread) to decide whether a folder is 8-bit
FLOAT16_REL_ERROR = 2.0**-10  # float16 keeps values within this share of the largest one


def stored_side(cfg: DataConfig) -> int:
    """The side images of differing sizes are stored at (as the tensor pipeline's uint8 cache)."""
    return max(cfg.img_size, int(round(cfg.img_size / cfg.crop_pct)))


def compact(values: np.ndarray) -> np.ndarray:
    """float16 when it keeps ``values`` (about 3 significant digits), else float32."""
    half = values.astype(np.float16)
    top = float(np.abs(values).max()) if values.size else 0.0
    if np.isfinite(half).all() and np.abs(half.astype(np.float32) - values).max(initial=0.0) <= (
        FLOAT16_REL_ERROR * top
    ):
        return half
    return values.astype(np.float32, copy=False)


def channel_stats(cache: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of an ``[N, C, H, W]`` cache (uint8 read as /255), float64 sums."""
    channels = cache.shape[1]
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(cache), 64):  # 64 images at a time bounds the float64 copy
        block = cache[start : start + 64].astype(np.float64)
        if cache.dtype == np.uint8:
            block /= 255.0
        total += block.sum(axis=(0, 2, 3))
        total_sq += np.square(block).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
    mean = total / max(count, 1)
    var = np.maximum(total_sq / max(count, 1) - mean**2, 0.0)
    # A constant band would divide by zero: leave it unscaled (std 1).
    std = np.where(var > 0, np.sqrt(var), 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class _FloatDataset(Dataset):
    """What both float-path datasets share: the memoised cache and its statistics."""

    pixels = "float"

    def __init__(self, targets: Sequence[int], reader: ArrayReader, cfg: DataConfig) -> None:
        self.targets = [int(t) for t in targets]
        self.reader = reader
        self.cfg = cfg
        self.in_chans = reader.in_chans
        self.layout_assumed: str | None = None
        self._cache: np.ndarray | None = None
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std of this dataset's images (computed with, and cached beside, its cache)."""
        if self._stats is None:
            self._stats = channel_stats(self.cache_array())
        return self._stats

    def cache_array(self) -> np.ndarray:
        """All images ``[N, C, H, W]`` (uint8 or float16/32), built once."""
        if self._cache is None:
            self._cache = self._build_cache()
        return self._cache

    def _build_cache(self) -> np.ndarray:
        raise NotImplementedError

    def _stack(self, raws: list[np.ndarray], wheres: list[str]) -> np.ndarray:
        """Raw ``[C, H, W]`` images -> the cache: uint8 if all 8-bit and unscaled, else float."""
        sizes = {raw.shape[1:] for raw in raws}
        if self.reader.scaling == "none" and len(sizes) == 1 and all(r.dtype == np.uint8 for r in raws):
            return np.stack(raws)
        side = stored_side(self.cfg)
        values = []
        for raw, where in zip(raws, wheres, strict=True):
            value = self.reader.to_float(raw, where)
            if len(sizes) > 1:  # mixed sizes: store all at one size, room for the crops
                value = resize_short_center_crop(value, side, side, self.cfg.interpolation)
            values.append(value)
        return compact(np.stack(values))


class ScienceFileDataset(_FloatDataset):
    """One file per sample (FITS, ``.npy``, TIFF, PNG, JPEG...), read as scaled float arrays."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], reader: ArrayReader, cfg: DataConfig, split: str = "train"
    ) -> None:
        super().__init__([label for _, label in samples], reader, cfg)
        self.samples = list(samples)
        self.split = split

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.reader.read(self.samples[index][0]), self.targets[index]

    def subset(self, indices: Sequence[int]) -> ScienceFileDataset:
        """The samples at ``indices`` as a new dataset."""
        return ScienceFileDataset([self.samples[i] for i in indices], self.reader, self.cfg, self.split)

    def read_all_raw(self) -> list[np.ndarray]:
        """Every file's checked ``[C, H, W]`` pixels in its own dtype (notes the layout assumed)."""
        raws = []
        for path, _ in self.samples:
            raw, layout = self.reader.read_chw(path)
            if self.layout_assumed in (None, "single_band"):  # a cube's band axis is the news
                self.layout_assumed = layout
            raws.append(raw)
        return raws

    def cache_nbytes(self) -> int:
        """Bytes of the cache, from the first file (uint8 or float16 per sample)."""
        if not self.samples:
            return 0
        raw, _ = self.reader.read_chw(self.samples[0][0])
        itemsize = 1 if raw.dtype == np.uint8 and self.reader.scaling == "none" else 2
        return len(self.samples) * raw.size * itemsize

    def _cache_file(self) -> Path:
        digest = hashlib.blake2b(digest_size=16)
        for path, label in self.samples:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
        r, c = self.reader, self.cfg
        settings = [CACHE_FORMAT, r.in_chans, r.scaling, r.scaling_params, r.fits_hdu, r.layout, r.nan_fill]
        digest.update(json.dumps([*settings, stored_side(c), c.interpolation]).encode())

        root = Path(c.cache_dir).expanduser() if c.cache_dir else default_cache_dir()
        return root / f"science-{self.split}-{digest.hexdigest()}.safetensors"

    def _build_cache(self) -> np.ndarray:
        try:
            path = self._cache_file()
        except OSError:  # a file vanished since indexing: read (and fail) below with its name
            path = None
        if path is not None and path.is_file():
            loaded = _load_cache(path, len(self.samples))
            if loaded is not None:
                cache, self._stats, self.layout_assumed = loaded
                return cache
        cache = self._stack(self.read_all_raw(), [p for p, _ in self.samples])
        if path is not None:
            self._stats = channel_stats(cache)
            _save_cache(path, cache, self._stats, self.layout_assumed)
        return cache


def _load_cache(path: Path, count: int) -> tuple[np.ndarray, Any, str | None] | None:
    """(cache, stats, layout) from a cache file, or None when it is unreadable or stale."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            images = handle.get_tensor("images")
        stats = json.loads(meta["stats"])
    except Exception:  # truncated or foreign: rebuild and overwrite
        return None
    if meta.get("format") != CACHE_FORMAT or len(images) != count:
        return None
    return images, (tuple(stats["mean"]), tuple(stats["std"])), meta.get("layout") or None


def _save_cache(path: Path, cache: np.ndarray, stats: Any, layout: str | None) -> None:
    """Atomic write; an unwritable cache folder only costs the next run the decoding."""
    from safetensors.numpy import save

    meta = {
        "format": CACHE_FORMAT,
        "stats": json.dumps({"mean": list(stats[0]), "std": list(stats[1])}),
        "layout": layout or "",
    }
    try:
        atomic_write_bytes(path, save({"images": np.ascontiguousarray(cache)}, metadata=meta))
    except (OSError, OutputError):  # a read-only or full cache folder only costs the next run time
        pass


class ArrayRowsDataset(_FloatDataset):
    """Rows of an array store (h5 read lazily, npz, a uint8 array source) as scaled float arrays."""

    def __init__(
        self, store: Any, indices: Sequence[int], targets: Sequence[int], reader: ArrayReader, cfg: DataConfig
    ) -> None:
        super().__init__(targets, reader, cfg)
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)

    def _row(self, row: np.ndarray, where: str) -> np.ndarray:
        chw, layout = to_chw(row, self.reader.layout, where)
        self.layout_assumed = self.layout_assumed or layout
        return self.reader.match_bands(chw, where)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        row = self.store.read(self.indices[index : index + 1])[0]
        where = f"{self.cfg.root} row {int(self.indices[index])}"
        return self.reader.to_float(self._row(row, where), where), self.targets[index]

    def subset(self, indices: Sequence[int]) -> ArrayRowsDataset:
        """The samples at ``indices`` (positions in this dataset) as a new dataset."""
        positions = np.asarray(indices, dtype=np.int64)
        return ArrayRowsDataset(
            self.store, self.indices[positions], [self.targets[i] for i in positions], self.reader, self.cfg
        )

    def cache_nbytes(self) -> int:
        """Bytes of the cache, from the first row."""
        if len(self.indices) == 0:
            return 0
        row = self._row(self.store.read(self.indices[:1])[0], str(self.cfg.root))
        itemsize = 1 if row.dtype == np.uint8 and self.reader.scaling == "none" else 2
        return len(self.indices) * row.size * itemsize

    def _build_cache(self) -> np.ndarray:
        parts = []
        for start in range(0, len(self.indices), READ_BLOCK_ROWS):
            block = self.indices[start : start + READ_BLOCK_ROWS]
            wheres = [f"{self.cfg.root} row {int(i)}" for i in block]
            raws = [self._row(row, where) for row, where in zip(self.store.read(block), wheres, strict=True)]
            parts.append(self._stack(raws, wheres))  # one array: every block has the same dtype
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


# ------------------------------------------------------------------------------------------------
# Choosing the path (called by build_datasets)
# ------------------------------------------------------------------------------------------------


def _folder_is_8bit(dataset: ImageFileDataset) -> bool:
    """Whether a few evenly spread files of an image folder are all 8-bit PIL images."""
    samples = dataset.samples
    if any(is_array_file(path) for path, _ in samples):
        return False
    picks = np.unique(np.linspace(0, len(samples) - 1, num=min(len(samples), PROBE_FILES)).astype(int))
    for i in picks:
        try:
            raw = read_raw(samples[int(i)][0])
        except DataError:
            continue  # an unreadable file is skipped (and reported) by the 8-bit path too
        if raw.dtype != np.uint8 or (raw.ndim == 3 and raw.shape[-1] not in (1, 3, 4)):
            return False
    return True


def wants_float(cfg: DataConfig, train: Any) -> bool:
    """Resolve ``data.pixels`` for this training set (see the module docstring)."""
    needs = cfg.scaling != "none" or cfg.in_chans not in (1, 3)
    if cfg.pixels == "uint8":
        if needs:
            raise RecipeError(
                f"data.pixels=uint8 takes 1 or 3 channel 8-bit images without data.scaling "
                f"(got in_chans={cfg.in_chans}, scaling={cfg.scaling}); use data.pixels=auto"
            )
        return False
    if cfg.pixels == "float" or needs or getattr(train, "pixels", "uint8") == "float":
        return True
    if isinstance(train, ImageFileDataset) and train.samples:
        return not _folder_is_8bit(train)
    return False


def to_float_dataset(dataset: Any, reader: ArrayReader, cfg: DataConfig, split: str) -> Any:
    """``dataset`` on the float path (datasets already there are returned as they are)."""
    if getattr(dataset, "pixels", "uint8") == "float":
        return dataset
    if isinstance(dataset, ImageFileDataset):
        return ScienceFileDataset(dataset.samples, reader, cfg, split)
    if isinstance(dataset, ArrayImageDataset):
        return ArrayRowsDataset(dataset.store, dataset.indices, dataset.targets, reader, cfg)
    raise DataError(
        f"data.source {cfg.source} cannot feed the float path (data.pixels=float, data.scaling, "
        f"in_chans={cfg.in_chans}); use imagefolder, h5 or npz"
    )


def float_stats(cfg: DataConfig, train: Any) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """``data.mean``/``std`` when given, else measured on the training images; and where they came from."""
    if cfg.mean is not None and cfg.std is not None:
        for name, values in (("mean", cfg.mean), ("std", cfg.std)):
            if len(values) != cfg.in_chans:
                raise DataError(
                    f"data.{name} has {len(values)} values but data.in_chans is {cfg.in_chans}; "
                    "give one value per band, or leave it out to measure it on the training images"
                )
        if any(s <= 0 for s in cfg.std):
            raise DataError(f"data.std values must be positive, got {list(cfg.std)}")
        return tuple(cfg.mean), tuple(cfg.std), "recipe"
    mean, std = train.channel_stats()
    return mean, std, f"computed from the {len(train)} training images"


def follow_bands(cfg: DataConfig, train: Any) -> None:
    """``data.in_chans`` left unset follows the data: the band count of the first readable file (a
    grayscale 16-bit PNG trains on 1 channel, a 5-band FITS cube on 5), said in one line."""
    bands = None
    for path, _ in (getattr(train, "samples", None) or [])[:PROBE_FILES]:
        try:
            bands = to_chw(read_raw(path, cfg.fits_hdu), cfg.layout, str(path))[0].shape[0]
            break
        except DataError:
            continue  # an unreadable file is reported when it is read
    if bands is not None and bands != cfg.in_chans:
        print(
            f"data: data.in_chans={bands}, the images' band count (data.in_chans was not set)",
            file=sys.stderr,
        )
        cfg.in_chans = bands


def announce_layout(train: Any, cfg: DataConfig) -> None:
    """One console line saying which band axis was assumed for 3-D arrays (layout auto)."""
    layout = getattr(train, "layout_assumed", None)
    if cfg.layout == "auto" and layout in ("channels_first", "channels_last"):
        print(
            f"data: band axis read as {layout} ({cfg.in_chans} bands); set data.layout to change it",
            file=sys.stderr,
        )


# ------------------------------------------------------------------------------------------------
# h5 and npz sources
# ------------------------------------------------------------------------------------------------


def _class_names(cfg: DataConfig, labels: np.ndarray, where: str) -> list[str]:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{where}: '{cfg.labels_key}' must be a 1-D integer array of class indices, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: '{cfg.labels_key}' holds negative labels; classes are numbered from 0")
    count = int(labels.max()) + 1 if labels.size else 0
    if cfg.class_names is not None:
        if len(cfg.class_names) < count:
            raise DataError(
                f"{where}: labels go up to {count - 1} but data.class_names names "
                f"{len(cfg.class_names)} classes"
            )
        return list(cfg.class_names)
    return [f"class_{i}" for i in range(count)]


def _check_images(cfg: DataConfig, shape: tuple[int, ...], dtype: Any, labels: int, where: str) -> None:
    if len(shape) not in (3, 4) or shape[0] != labels or np.dtype(dtype).kind not in "biuf":
        raise DataError(
            f"{where}: '{cfg.images_key}' must be a numeric [N, H, W], [N, H, W, C] or [N, C, H, W] array "
            f"with one '{cfg.labels_key}' entry per image, got {dtype} {shape} and {labels} labels"
        )


def _missing_key(cfg: DataConfig, where: str, available: list[str]) -> None:
    for setting, key in (("data.images_key", cfg.images_key), ("data.labels_key", cfg.labels_key)):
        if key not in available:
            raise DataError(
                f"{where}: no array '{key}' ({setting}); the file has: {', '.join(available) or 'nothing'}"
            )


def _array_source(cfg: DataConfig, store: Any, labels: np.ndarray, where: str) -> SourceData:
    names = _class_names(cfg, labels, where)
    reader = ArrayReader.from_config(cfg)
    rows = np.arange(len(labels))

    def train() -> ArrayRowsDataset:
        return ArrayRowsDataset(store, rows, labels.tolist(), reader, cfg)

    # mean/std here are placeholders: the float path measures the training images (float_stats).
    return SourceData({"train": train}, names, (0.0,), (1.0,), {"file": where})


def _data_file(cfg: DataConfig, kind: str) -> Path:
    path = Path(cfg.root).expanduser()
    if not path.is_file():
        raise DataError(
            f"data.root '{path}' is not a file; data.source={kind} reads one .{kind} file holding "
            f"'{cfg.images_key}' and '{cfg.labels_key}' arrays (data.images_key / data.labels_key)"
        )
    return path


def h5_source(cfg: DataConfig) -> SourceData:
    """An HDF5 file (``data.root``) with an images array and a labels array, read lazily."""
    import h5py

    path = _data_file(cfg, "h5")
    try:
        with h5py.File(path, "r") as handle:
            available: list[str] = []
            handle.visititems(
                lambda name, obj: available.append(name) if isinstance(obj, h5py.Dataset) else None
            )
            _missing_key(cfg, str(path), available)
            images = handle[cfg.images_key]
            labels = np.asarray(handle[cfg.labels_key][()])
            _check_images(cfg, images.shape, images.dtype, len(labels), str(path))
    except OSError as exc:
        raise DataError(f"{path}: not a readable h5 file ({exc})") from None
    return _array_source(cfg, H5Store(path, key=cfg.images_key, in_memory=cfg.in_memory), labels, str(path))


def npz_source(cfg: DataConfig) -> SourceData:
    """A NumPy ``.npz`` file (``data.root``) with an images array and a labels array (read into memory)."""
    path = _data_file(cfg, "npz")
    try:
        with np.load(path, allow_pickle=False) as archive:
            _missing_key(cfg, str(path), list(archive.files))
            images, labels = archive[cfg.images_key], archive[cfg.labels_key]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    _check_images(cfg, images.shape, images.dtype, len(labels), str(path))
    return _array_source(cfg, _RowStore(images), labels, str(path))


class _RowStore(NumpyStore):
    """Rows of an in-memory array as they are (no channel axis added: the float path finds it)."""

    def read(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[indices])


def float_eval_io(meta: Any) -> tuple[Any, Any]:
    """(load(path) -> scaled array, transform(array) -> normalised tensor) of a float-path checkpoint.

    What ``astro export`` feeds its real-image checks: the same numbers ``astro predict`` uses.
    """
    reader, preprocess = reader_for(meta), preprocess_for(meta)
    return reader.read, lambda array: torch.from_numpy(preprocess(np.asarray(array)))
