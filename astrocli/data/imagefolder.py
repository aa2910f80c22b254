"""Image-file sources: ``imagefolder`` and ``tiny_imagenet``.

``imagefolder`` reads ``root/train/<class>/*`` and, when present, ``root/val/<class>/*`` or
``root/test/<class>/*``. A root holding class folders directly (no ``train/``) is used as the
training set with a seeded stratified held-out split. Files PIL cannot identify are listed by path
in one warning at index time and left out; files that fail later (a truncated body) are replaced
at read time by :class:`~astrocli.data.base.ImageFileDataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from astrocli.data.base import ImageFileDataset, SourceData, is_image_file
from astrocli.data.download import download_and_extract
from astrocli.errors import DataError
from astrocli.images.arrays import is_array_file
from astrocli.images.channels import IMAGENET_MEAN, IMAGENET_STD
from astrocli.images.pil import UNREADABLE_IMAGE_ERRORS
from astrocli.notices import skipped_images_line, warn_user
from astrocli.recipe import DataConfig

HELDOUT_FOLDERS = ("val", "test")
MAX_LISTED_BAD_FILES = 10

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
# Tiny ImageNet training-set statistics (as used by the Astroformer and CCT code bases).
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)


def list_class_folders(folder: Path) -> list[str]:
    """Sub-folder names of ``folder``, sorted (the class order, as torchvision's ImageFolder)."""
    return sorted(
        entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")
    )


def find_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, links followed), sorted for a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f) or is_array_file(f)
        )
    return found


def unreadable_reason(path: str) -> str | None:
    """Why PIL cannot identify ``path`` (None: it can; reads the header only, cheap for every file)."""
    if is_array_file(path):  # FITS / .npy: the float path reads them, and reports a bad one by name
        return None
    try:
        with Image.open(path):
            return None
    except UNREADABLE_IMAGE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"


def is_readable_image(path: str) -> bool:
    """Whether PIL identifies ``path``."""
    return unreadable_reason(path) is None


def drop_unreadable(
    samples: list[tuple[str, int]], where: Path
) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """``samples`` without the files PIL cannot identify, and those files as ``(path, reason)``; the
    bad paths go to one ``warning:`` line (printed directly: no warnings filter can hide it)."""
    good, bad = [], []
    for sample in samples:
        reason = unreadable_reason(sample[0])
        if reason is None:
            good.append(sample)
        else:
            bad.append((sample[0], reason))
    if bad:
        warn_user(skipped_images_line([path for path, _ in bad], where, limit=MAX_LISTED_BAD_FILES))
    return good, bad


def index_folder(folder: Path, class_names: list[str], in_chans: int) -> ImageFileDataset:
    """Index ``folder/<class>/*`` against ``class_names``; a class unknown to training is an error."""
    class_index = {name: i for i, name in enumerate(class_names)}
    samples: list[tuple[str, int]] = []
    for name in list_class_folders(folder):
        if name not in class_index:
            raise DataError(
                f"{folder / name}: class '{name}' is not among the training classes "
                f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})"
            )
        samples.extend((path, class_index[name]) for path in find_images(folder / name))
    if not samples:
        raise DataError(f"{folder}: no images found (expected {folder}/<class>/<image>.jpg)")
    good, bad = drop_unreadable(samples, folder)
    return _with_unreadable(ImageFileDataset(good, in_chans), bad)


def _with_unreadable(dataset: ImageFileDataset, bad: list[tuple[str, str]]) -> ImageFileDataset:
    dataset.unreadable = bad  # a run lists them in RUN_DIR/skipped-images.txt (engine/build.py)
    return dataset


def imagefolder_source(cfg: DataConfig) -> SourceData:
    """``root/train/<class>/*`` (+ ``root/val`` or ``root/test``), or ``root/<class>/*`` alone."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root '{root}' is not a folder; imagefolder expects {root}/train/<class>/<image> "
            f"(and optionally {root}/val/ or {root}/test/)"
        )
    train_dir = root / "train" if (root / "train").is_dir() else root
    class_names = [c for c in list_class_folders(train_dir) if c not in HELDOUT_FOLDERS or train_dir != root]
    if not class_names:
        raise DataError(f"{train_dir}: no class folders found (expected {train_dir}/<class>/<image>.jpg)")
    splits = {"train": lambda: index_folder(train_dir, class_names, cfg.in_chans)}
    if train_dir != root:
        for name in HELDOUT_FOLDERS:
            if (root / name).is_dir():
                splits[name] = lambda folder=root / name: index_folder(folder, class_names, cfg.in_chans)
    return SourceData(splits, class_names, IMAGENET_MEAN, IMAGENET_STD)


# --------------------------------------------------------------------------------------------
# Tiny ImageNet
# --------------------------------------------------------------------------------------------


def find_tiny_imagenet(cfg: DataConfig) -> Path:
    """The ``tiny-imagenet-200`` folder: ``data.root`` itself or inside it (downloaded if allowed)."""
    root = Path(cfg.root).expanduser()
    for candidate in (root, root / "tiny-imagenet-200"):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return candidate
    if cfg.download:
        download_and_extract(cfg.url or TINY_IMAGENET_URL, root, sha256=cfg.sha256)
        if (root / "tiny-imagenet-200" / "train").is_dir():
            return root / "tiny-imagenet-200"
    raise DataError(
        f"tiny_imagenet: {root}/tiny-imagenet-200/ not found; download {TINY_IMAGENET_URL} "
        f"and extract it into {root} (it holds train/, val/, wnids.txt)"
    )


def tiny_imagenet_classes(base: Path) -> tuple[list[str], list[str]]:
    """(wnids in class order, readable class names): ``words.txt`` names when they are unique."""
    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        wnids = sorted(line.strip() for line in wnids_file.read_text().splitlines() if line.strip())
    else:
        wnids = list_class_folders(base / "train")
    words: dict[str, str] = {}
    if (base / "words.txt").is_file():
        for line in (base / "words.txt").read_text().splitlines():
            wnid, _, names = line.partition("\t")
            words[wnid] = names.split(",")[0].strip()
    readable = [words.get(w) or w for w in wnids]
    return wnids, readable if len(set(readable)) == len(readable) else wnids


def tiny_imagenet_val(base: Path, wnids: list[str], in_chans: int) -> ImageFileDataset:
    """The validation images, labelled by ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box``)."""
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(f"tiny_imagenet: {annotations} is missing; it labels the validation images")
    index = {w: i for i, w in enumerate(wnids)}
    samples = []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in index:
            raise DataError(f"{annotations}: unknown class '{fields[1]}' for {fields[0]}")
        samples.append((str(base / "val" / "images" / fields[0]), index[fields[1]]))
    good, bad = drop_unreadable(samples, base / "val")
    return _with_unreadable(ImageFileDataset(good, in_chans), bad)


def tiny_imagenet_source(cfg: DataConfig) -> SourceData:
    """The standard ``tiny-imagenet-200`` layout: ``train/<wnid>/images/*.JPEG`` and labelled ``val/``."""
    base = find_tiny_imagenet(cfg)
    wnids, class_names = tiny_imagenet_classes(base)
    splits = {
        "train": lambda: index_folder(base / "train", wnids, cfg.in_chans),
        "val": lambda: tiny_imagenet_val(base, wnids, cfg.in_chans),
    }
    return SourceData(splits, class_names, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, {"wnids": wnids})
