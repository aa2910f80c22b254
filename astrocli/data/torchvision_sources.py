"""The classic benchmark sets: ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``flowers102``.

MNIST, Fashion-MNIST and Flowers-102 use torchvision's dataset classes (download, checksums,
parsing). CIFAR is read from the *binary* version of the official archives
(``cifar-10-batches-bin/``, ``cifar-100-binary/``), memory-mapped, because torchvision's CIFAR
classes read the Python version, which is pickled, and astro never unpickles.
Offline, each source fails with one line naming the file to place where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision import datasets
from torchvision.datasets.utils import extract_archive as tv_extract_archive

from astrocli.data.base import ArrayImageDataset, ImageFileDataset, NumpyStore, SourceData
from astrocli.data.download import download_and_extract, extract_archive
from astrocli.errors import DataError, first_line
from astrocli.images.channels import IMAGENET_MEAN, IMAGENET_STD
from astrocli.recipe import DataConfig

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class CifarSpec:
    """Layout of one CIFAR binary archive."""

    name: str
    url: str
    folder: str  # what the archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int  # CIFAR-10: 1 (label); CIFAR-100: 2 (coarse, fine)
    names_file: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[1]


CIFAR10 = CifarSpec(
    name="cifar10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    label_bytes=1,
    names_file="batches.meta.txt",
    mean=(0.4914, 0.4822, 0.4465),  # CIFAR-10 training-set statistics (as in the CCT code)
    std=(0.2470, 0.2435, 0.2616),
)

CIFAR100 = CifarSpec(
    name="cifar100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_files=("test.bin",),
    label_bytes=2,
    names_file="fine_label_names.txt",
    mean=(0.5071, 0.4867, 0.4408),  # CIFAR-100 training-set statistics (as in the CCT code)
    std=(0.2675, 0.2565, 0.2761),
)

CIFAR_PIXELS = 3 * 32 * 32


class CifarBinaryStore:
    """Records ``<label byte(s)><3072 pixel bytes, channel-major>`` across files, memory-mapped."""

    def __init__(self, files: list[Path], label_bytes: int) -> None:
        self.label_bytes = label_bytes
        record = np.dtype([("labels", np.uint8, (label_bytes,)), ("pixels", np.uint8, (3, 32, 32))])
        self.maps = []
        for path in files:
            size = path.stat().st_size
            if size == 0 or size % record.itemsize:
                raise DataError(
                    f"{path} is {size:,} bytes, not a whole number of {record.itemsize}-byte CIFAR records; "
                    f"the file is truncated or not the binary version: delete it and download again"
                )
            self.maps.append(np.memmap(path, dtype=record, mode="r"))
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])

    def labels(self) -> np.ndarray:
        """The fine label of every record (the last label byte)."""
        return np.concatenate([np.asarray(m["labels"][:, -1]) for m in self.maps]).astype(np.int64)

    def read(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), 32, 32, 3), dtype=np.uint8)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        for file_index in np.unique(which):
            mask = which == file_index
            rows = indices[mask] - self.starts[file_index]
            out[mask] = self.maps[file_index]["pixels"][rows].transpose(0, 2, 3, 1)
        return out

    def __getstate__(self) -> dict:
        # Workers re-map the files rather than receive the mapped pages.
        state = self.__dict__.copy()
        state["maps"] = [m.filename for m in self.maps]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.maps = [np.memmap(f, dtype=self._record(), mode="r") for f in self.maps]

    def _record(self) -> np.dtype:
        return np.dtype([("labels", np.uint8, (self.label_bytes,)), ("pixels", np.uint8, (3, 32, 32))])


def find_cifar(cfg: DataConfig, spec: CifarSpec) -> Path:
    """The extracted binary folder, downloading and extracting the archive when missing and allowed."""
    root = Path(cfg.root).expanduser()
    for candidate in (root / spec.folder, root):
        if all((candidate / f).is_file() for f in spec.train_files + spec.test_files):
            return candidate
    place = (
        f"download {spec.url} and place it at {root / spec.archive} (astro extracts it), or extract it "
        f"so that {root / spec.folder}/{spec.train_files[0]} exists"
    )
    archive = root / spec.archive
    try:
        if archive.is_file():
            extract_archive(archive, root)
        elif cfg.download:
            download_and_extract(cfg.url or spec.url, root, sha256=cfg.sha256)
        else:
            raise DataError(
                f"{spec.name}: {root / spec.folder} not found and data.download is false; {place}"
            )
    except DataError as exc:
        if "data.download is false" in str(exc):
            raise
        raise DataError(f"{spec.name}: {exc}; {place}") from None
    if not (root / spec.folder / spec.train_files[0]).is_file():
        raise DataError(f"{spec.name}: {root / spec.folder} is incomplete after extraction; {place}")
    return root / spec.folder


def cifar_source(cfg: DataConfig, spec: CifarSpec) -> SourceData:
    """CIFAR from its binary archive: ``train`` and ``test`` splits as memory-mapped arrays."""
    folder = find_cifar(cfg, spec)
    names_path = folder / spec.names_file
    names = (
        [n.strip() for n in names_path.read_text().splitlines() if n.strip()] if names_path.is_file() else []
    )
    if spec is CIFAR10 and not names:
        names = list(CIFAR10_CLASSES)

    def split(files: tuple[str, ...]):
        def build() -> ArrayImageDataset:
            store = CifarBinaryStore([folder / f for f in files], spec.label_bytes)
            labels = store.labels()
            return ArrayImageDataset(store, np.arange(len(labels)), labels.tolist(), cfg.in_chans)

        return build

    if not names:
        raise DataError(f"{spec.name}: {names_path} (the class names) is missing; extract the whole archive")
    return SourceData(
        {"train": split(spec.train_files), "test": split(spec.test_files)},
        names,
        spec.mean,
        spec.std,
        {"folder": str(folder)},
    )


def cifar10_source(cfg: DataConfig) -> SourceData:
    """CIFAR-10: 50,000 train / 10,000 test, 32x32 RGB, 10 classes."""
    return cifar_source(cfg, CIFAR10)


def cifar100_source(cfg: DataConfig) -> SourceData:
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test, 32x32 RGB, 100 classes."""
    return cifar_source(cfg, CIFAR100)


# --------------------------------------------------------------------------------------------
# torchvision-backed sources
# --------------------------------------------------------------------------------------------


def _torchvision(cfg: DataConfig, name: str, build, place: str):
    """Call a torchvision constructor, turning its download/not-found errors into one line."""
    try:
        return build()
    except (RuntimeError, OSError) as exc:
        reason = first_line(exc)
        how = "the download failed" if cfg.download else "data.download is false"
        raise DataError(f"{name}: data not found in {cfg.root} and {how} ({reason}); {place}") from None


def _gunzip_placed_files(raw: Path, resources: list[tuple[str, str]]) -> None:
    """Decompress ``<name>.gz`` files placed in ``raw`` whose decompressed twin is missing.

    torchvision only looks for the decompressed idx files when ``download=False``, so the ``.gz``
    files the error message tells users to place would otherwise be ignored.
    """
    for url, _ in resources:
        packed = raw / Path(url).name
        if packed.suffix == ".gz" and packed.is_file() and not packed.with_suffix("").is_file():
            try:
                tv_extract_archive(str(packed), str(raw))
            except (OSError, EOFError) as exc:
                raise DataError(
                    f"{packed} cannot be decompressed ({exc}); delete it and place it again"
                ) from None


def mnist_like_source(cfg: DataConfig, name: str, mean: float, std: float) -> SourceData:
    """MNIST or Fashion-MNIST through torchvision (idx files; no pickle), held as uint8 arrays."""
    dataset_cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    root = Path(cfg.root).expanduser()
    raw = root / dataset_cls.__name__ / "raw"
    place = (
        f"place {', '.join(Path(url).name for url, _ in dataset_cls.resources)} "
        f"(from {dataset_cls.mirrors[0]}, gzipped or not) in {raw}"
    )
    _gunzip_placed_files(raw, dataset_cls.resources)

    def split(train: bool):
        def build() -> ArrayImageDataset:
            ds = _torchvision(
                cfg, name, lambda: dataset_cls(str(root), train=train, download=cfg.download), place
            )
            images = ds.data.numpy()
            return ArrayImageDataset(
                NumpyStore(images), np.arange(len(images)), ds.targets.tolist(), cfg.in_chans
            )

        return build

    # Fail early (and once) when the files are missing, rather than inside the first split.
    classes = list(
        _torchvision(
            cfg, name, lambda: dataset_cls(str(root), train=False, download=cfg.download), place
        ).classes
    )
    return SourceData({"train": split(True), "test": split(False)}, classes, (mean,), (std,))


def mnist_source(cfg: DataConfig) -> SourceData:
    """MNIST: 60,000 train / 10,000 test, 28x28 grayscale digits."""
    return mnist_like_source(cfg, "mnist", 0.1307, 0.3081)


def fashion_mnist_source(cfg: DataConfig) -> SourceData:
    """Fashion-MNIST: 60,000 train / 10,000 test, 28x28 grayscale clothing, 10 classes."""
    return mnist_like_source(cfg, "fashion_mnist", 0.2860, 0.3530)


def flowers102_source(cfg: DataConfig) -> SourceData:
    """Oxford Flowers-102 through torchvision: the official train / val / test splits (1020/1020/6149)."""
    root = Path(cfg.root).expanduser()
    place = (
        f"place 102flowers.tgz (extracted as jpg/), imagelabels.mat and setid.mat from "
        f"{datasets.Flowers102._download_url_prefix} in {root / 'flowers-102'}"
    )

    def split(name: str):
        def build() -> ImageFileDataset:
            ds = _torchvision(
                cfg,
                "flowers102",
                lambda: datasets.Flowers102(str(root), split=name, download=cfg.download),
                place,
            )
            return ImageFileDataset(
                [(str(p), int(y)) for p, y in zip(ds._image_files, ds._labels, strict=True)], cfg.in_chans
            )

        return build

    probe = _torchvision(
        cfg, "flowers102", lambda: datasets.Flowers102(str(root), split="val", download=cfg.download), place
    )
    classes = list(getattr(probe, "classes", [str(i) for i in range(102)]))
    return SourceData(
        {"train": split("train"), "val": split("val"), "test": split("test")},
        classes,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
