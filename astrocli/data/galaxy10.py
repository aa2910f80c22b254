"""Galaxy10 DECaLS and Galaxy10 SDSS: the astroNN h5 files (keys ``images`` uint8 [N,H,W,3], ``ans``).

The file is downloaded into ``data.root`` when missing (resumable, sha256-verified). There is no
official split, so the held-out set is a seeded stratified split recorded in the run. Images are
read lazily through h5py (one handle per process: h5py handles are not fork-safe) unless
``data.in_memory`` asks for the whole array up front.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astrocli.data.base import ArrayImageDataset, SourceData
from astrocli.data.download import download_file
from astrocli.errors import DataError
from astrocli.recipe import DataConfig

# Rows read per h5 request when gathering many images: large enough to stream, small enough
# (256 x 196 KB = 50 MB for DECaLS) to never hold much of the file at once.
READ_BLOCK_ROWS = 256
# Images sampled (evenly spaced over the file) to estimate the normalisation statistics.
STATS_SAMPLE = 512


@dataclass(frozen=True)
class Galaxy10Spec:
    """Facts about one Galaxy10 file (from ../shared/data/README.md and the astroNN docs)."""

    filename: str
    url: str
    sha256: str
    class_names: tuple[str, ...]


DECALS = Galaxy10Spec(
    filename="Galaxy10_DECals.h5",
    url="https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5",
    sha256="19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571",
    class_names=(
        "Disturbed",
        "Merging",
        "Round Smooth",
        "In-between Round Smooth",
        "Cigar Shaped Smooth",
        "Barred Spiral",
        "Unbarred Tight Spiral",
        "Unbarred Loose Spiral",
        "Edge-on without Bulge",
        "Edge-on with Bulge",
    ),
)

SDSS = Galaxy10Spec(
    filename="Galaxy10.h5",
    url="https://zenodo.org/records/10844811/files/Galaxy10.h5",
    sha256="969a6b1cefcc36e09fffa86febd2f699a4aa19b837ba0427f01b0bc6ded458af",
    class_names=(
        "Disk, Face-on, No Spiral",
        "Smooth, Completely round",
        "Smooth, in-between round",
        "Smooth, Cigar shaped",
        "Disk, Edge-on, Rounded Bulge",
        "Disk, Edge-on, Boxy Bulge",
        "Disk, Edge-on, No Bulge",
        "Disk, Face-on, Tight Spiral",
        "Disk, Face-on, Medium Spiral",
        "Disk, Face-on, Loose Spiral",
    ),
)


class H5Store:
    """Rows of the ``images`` dataset of an h5 file, read on demand (or all at once if ``in_memory``).

    The h5py handle is opened lazily and reopened in every new process (after a DataLoader fork
    or spawn), because an h5py handle shared across ``fork`` returns corrupt data.
    """

    def __init__(self, path: Path, key: str = "images", in_memory: bool = False) -> None:
        self.path = path
        self.key = key
        self._file = None
        self._pid: int | None = None
        self._memory: np.ndarray | None = None
        if in_memory:
            self._memory = np.asarray(self._images()[()])
            self.close()

    def _images(self):
        import h5py

        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.key]

    def close(self) -> None:
        """Close the h5 handle of this process (it reopens on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        # DataLoader workers started with spawn receive a copy: never an open handle.
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (any order) in the file's dtype (uint8 ``[n, H, W, C]`` for Galaxy10)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._memory is not None:
            return self._memory[indices]
        images = self._images()
        if len(indices) == 1:
            return images[int(indices[0])][None]
        return _gather_rows(images, indices)


def _gather_rows(images, indices: np.ndarray) -> np.ndarray:
    """Read scattered rows in sorted order: h5py fancy indexing is slow and needs increasing indices.

    Dense runs are read as one contiguous slice per block; sparse ones row by row, so a thin
    sample of a 2.5 GB file never reads the rows in between.
    """
    order = np.argsort(indices, kind="stable")
    wanted = indices[order]
    out = np.empty((len(indices), *images.shape[1:]), dtype=images.dtype)  # the generic h5 source too
    start = 0
    while start < len(wanted):
        first = int(wanted[start])
        stop = int(np.searchsorted(wanted, first + READ_BLOCK_ROWS, side="left"))
        span = int(wanted[stop - 1]) + 1 - first
        if (stop - start) * 4 >= span:
            block = images[first : first + span]
            out[order[start:stop]] = block[wanted[start:stop] - first]
        else:
            for position in range(start, stop):
                out[order[position]] = images[int(wanted[position])]
        start = stop
    return out


def ensure_file(cfg: DataConfig, spec: Galaxy10Spec) -> Path:
    """The h5 file in ``data.root``, downloaded (resumable, verified) when missing and allowed."""
    path = Path(cfg.root).expanduser() / spec.filename
    if path.is_file():
        return path
    url = cfg.url or spec.url
    if not cfg.download:
        raise DataError(f"{path} not found and data.download is false; download {url} and place it at {path}")

    return download_file(url, path, cfg.sha256 or spec.sha256)


def read_labels(path: Path, spec: Galaxy10Spec) -> np.ndarray:
    """The ``ans`` labels, checking the file has the Galaxy10 layout."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in ("images", "ans") if key not in handle]
            if missing:
                raise DataError(f"{path} lacks the Galaxy10 key(s) {missing}; is it a Galaxy10 h5 file?")
            images, labels = handle["images"], np.asarray(handle["ans"][()]).astype(np.int64)
            if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
                raise DataError(
                    f"{path}: 'images' must be uint8 [N,H,W,3] with one 'ans' label per image, "
                    f"got {images.dtype} {images.shape} and {labels.shape[0]} labels"
                )
    except OSError as exc:
        raise DataError(f"{path} is not a readable h5 file ({exc}); delete it and download again") from None
    if labels.size and (labels.min() < 0 or labels.max() >= len(spec.class_names)):
        raise DataError(f"{path}: labels outside 0..{len(spec.class_names) - 1}")
    return labels


def estimate_stats(store: H5Store, count: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std (0..1 scale) of up to ``STATS_SAMPLE`` evenly spaced images.

    The Galaxy10 papers do not publish their normalisation, so we measure the file itself; the
    sample is fixed by the file alone, so every run (and every DDP rank) gets the same numbers.
    """
    rows = np.unique(np.linspace(0, count - 1, num=min(count, STATS_SAMPLE)).round().astype(np.int64))
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    for chunk in np.array_split(rows, max(1, len(rows) // 32)):  # 32 images at a time bounds memory
        values = store.read(chunk).reshape(-1, 3).astype(np.float64) / 255.0
        total += values.sum(axis=0)
        total_sq += np.square(values).sum(axis=0)
        pixels += len(values)
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 1e-6))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def galaxy10_source(cfg: DataConfig, spec: Galaxy10Spec) -> SourceData:
    """A Galaxy10 h5 file as one ``train`` split (the held-out split is carved out, stratified)."""
    path = ensure_file(cfg, spec)
    labels = read_labels(path, spec)
    store = H5Store(path, in_memory=cfg.in_memory)
    mean, std = estimate_stats(store, len(labels))
    all_rows = np.arange(len(labels))

    def train() -> ArrayImageDataset:
        return ArrayImageDataset(store, all_rows, labels.tolist(), cfg.in_chans)

    info = {"file": str(path), "stats": f"estimated from {min(len(labels), STATS_SAMPLE)} images of the file"}
    return SourceData({"train": train}, list(spec.class_names), mean, std, info)


def galaxy10_decals_source(cfg: DataConfig) -> SourceData:
    """Galaxy10 DECaLS: 17,736 images, 256x256 RGB, 10 classes."""
    return galaxy10_source(cfg, DECALS)


def galaxy10_sdss_source(cfg: DataConfig) -> SourceData:
    """Galaxy10 SDSS: 21,785 images, 69x69 RGB, 10 classes."""
    return galaxy10_source(cfg, SDSS)
