"""The two dataset shapes every source produces, the image-mode conversion they share, and
:class:`SourceData`, what every source returns (the bottom of ``data/``: sources import it).

* :class:`ImageFileDataset`: one image file per sample (image folders, Tiny ImageNet, Flowers-102).
* :class:`ArrayImageDataset`: samples are rows of a uint8 ``[N, H, W, C]`` array held by a store
  (an h5 file read lazily, a memory-mapped CIFAR binary, an in-memory array). It exposes
  ``uint8_array()`` so the tensor pipeline can cache pixels without a PIL round trip.

Both yield ``(PIL.Image, int)`` in mode ``RGB`` (or ``L`` when ``in_chans == 1``), expose ``targets``
(a list of ints, available without decoding any image) and ``subset(indices)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

# Defined in the torch-free astrocli.images.pil (ONNX predict runs without torch); re-exported here.
from astrocli.images.pil import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from astrocli.images.pil import UNREADABLE_IMAGE_ERRORS
from astrocli.images.pil import convert_image as convert_image
from astrocli.images.pil import image_mode as image_mode
from astrocli.images.pil import is_image_file as is_image_file
from astrocli.notices import SkipLog, skipped_images_line, warn_user

# PIL's ITU-R 601-2 luma weights, so array and PIL conversions to grayscale agree.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def convert_array_channels(array: np.ndarray, in_chans: int) -> np.ndarray:
    """Convert a uint8 ``[N, H, W, C]`` array (C = 1 or 3) to ``in_chans`` channels, like PIL does."""
    channels = array.shape[-1]
    if channels == in_chans:
        return array
    if channels == 1 and in_chans == 3:
        return np.repeat(array, 3, axis=-1)
    if channels == 3 and in_chans == 1:
        luma = array.astype(np.float32) @ _LUMA
        return np.clip(luma.round(), 0, 255).astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {channels}-channel images to {in_chans} channels")


class ImageFileDataset(Dataset):
    """Samples stored as image files: ``samples`` is a list of ``(path, class_index)``.

    A file that cannot be decoded at read time is reported (once, by path) and replaced by the
    next readable sample, so one corrupt file never kills a long run. The report goes to
    ``skip_log`` when a run sets one (the trainer prints one line per epoch, also for skips in
    DataLoader workers), else straight to stderr as one ``warning:`` line (``notices.warn_user``).
    """

    skip_log: SkipLog | None = None

    def __init__(self, samples: Sequence[tuple[str, int]], in_chans: int = 3) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.in_chans = in_chans
        # Other band counts are read by the float path (astrocli.data.arrays), which takes the samples.
        self.mode = image_mode(in_chans) if in_chans in (1, 3) else None
        self._reported: dict[str, str] = {}  # path -> reason, in this process
        self.unreadable: list[tuple[str, str]] = []  # left out when the folder was indexed

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        """Decode sample ``index`` as a PIL image in this dataset's mode (raises on a bad file)."""
        path = self.samples[index][0]
        with Image.open(path) as img:
            img.load()
            return convert_image(img, self.mode)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            try:
                return self.load(candidate), self.targets[candidate]
            except UNREADABLE_IMAGE_ERRORS as exc:
                self.report_skip(self.samples[candidate][0], exc)
        raise OSError("no readable image in this dataset")

    def report_skip(self, path: str, exc: Exception | str) -> None:
        """Tell about a skipped file once: to the run's skip log, else as a ``warning:`` line on stderr
        (never through the warnings filter, which ``PYTHONWARNINGS=ignore`` empties)."""
        if path in self._reported:
            return
        self._reported[path] = str(exc)
        if self.skip_log is not None:
            self.skip_log.add(path, str(exc))
        else:
            warn_user(f"{skipped_images_line([path])} ({exc})")

    def skipped(self) -> dict[str, str]:
        """The files skipped while reading in this process, with the reason."""
        return dict(self._reported)

    def subset(self, indices: Sequence[int]) -> ImageFileDataset:
        """The samples at ``indices`` as a new dataset."""
        subset = ImageFileDataset([self.samples[i] for i in indices], self.in_chans)
        subset.skip_log, subset.unreadable = self.skip_log, self.unreadable
        return subset


class ArrayStore(Protocol):
    """Where the uint8 rows of an :class:`ArrayImageDataset` live."""

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` as uint8 ``[n, H, W, C]`` (in the order given)."""
        ...


class NumpyStore:
    """An array in memory or memory-mapped; ``[N, H, W]`` arrays get a channel axis."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def read(self, indices: np.ndarray) -> np.ndarray:
        rows = np.asarray(self.array[indices])
        return rows[..., None] if rows.ndim == 3 else rows


class ArrayImageDataset(Dataset):
    """Samples that are rows ``indices`` of a uint8 image store, with integer ``targets``."""

    def __init__(
        self, store: ArrayStore, indices: Sequence[int], targets: Sequence[int], in_chans: int = 3
    ) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = [int(t) for t in targets]
        if len(self.targets) != len(self.indices):
            raise ValueError("one target per index expected")
        self.in_chans = in_chans
        self.mode = image_mode(in_chans) if in_chans in (1, 3) else None  # else: the float path reads it

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        row = self.store.read(self.indices[index : index + 1])
        row = convert_array_channels(row, self.in_chans)[0]
        img = Image.fromarray(row[..., 0] if self.in_chans == 1 else row, mode=self.mode)
        return img, self.targets[index]

    def uint8_array(self) -> np.ndarray:
        """All samples as one uint8 ``[N, H, W, in_chans]`` array, read now (no PIL decoding)."""
        return convert_array_channels(self.store.read(self.indices), self.in_chans)

    def subset(self, indices: Sequence[int]) -> ArrayImageDataset:
        """The samples at ``indices`` (positions in this dataset) as a new dataset."""
        positions = np.asarray(indices, dtype=np.int64)
        return ArrayImageDataset(
            self.store, self.indices[positions], [self.targets[i] for i in positions], self.in_chans
        )


@dataclass
class SourceData:
    """What a source offers: named splits (built on demand), class names and pixel statistics.

    ``mean``/``std`` describe the source's native channels (3 for colour, 1 for MNIST-like data);
    :func:`build_datasets` adapts them to ``data.in_chans``.
    """

    splits: dict[str, Callable[[], Any]]
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)  # extra facts recorded in split.json
