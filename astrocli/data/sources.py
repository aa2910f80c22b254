"""Data sources: turn ``recipe.data`` into train and held-out datasets plus what describes them.

Each source (``imagefolder``, ``galaxy10_decals``, ``cifar10``, ...) is a function
``(DataConfig) -> SourceData`` listing its named splits lazily; :func:`build_datasets` picks the
held-out split that selects the model (``data.split``: auto = val, else a seeded stratified split of
train; a k-fold fold under ``astro cv``), keeps any test split apart for one final score, resolves
the normalisation statistics and records the split for the run (``split.json``).

The protocol: model selection never sees test images unless ``data.split: test`` asks for the
papers' protocol (select on the test split), which the run then labels ``selected_on: test``.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astrocli.data import arrays
from astrocli.data.base import SourceData
from astrocli.data.exclude import apply_lists
from astrocli.errors import DataError
from astrocli.images.channels import adapt_channels
from astrocli.recipe import DataConfig


@dataclass
class DatasetBundle:
    """Train and held-out datasets of ``(PIL.Image, int)`` with the facts the engine records.

    ``mean``/``std`` are the normalisation, one value per input channel, resolved once by
    :func:`build_datasets`: the batch pipelines (:mod:`astrocli.data.pipeline`) take them from here.
    """

    train: Any
    val: Any
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    split_info: dict[str, Any]
    test: Any = None  # the source's test split, scored once at the end (None: none, or it selects)

    @property
    def selected_on(self) -> str:
        """``test`` when the held-out split that selects the model is the test split, else ``val``."""
        return "test" if self.split_info.get("heldout_split") == "test" else "val"

    @property
    def num_classes(self) -> int:
        """How many classes the model must predict."""
        return len(self.class_names)


# source name -> "module:function" (imported on use, so one source's dependencies never slow another)
SOURCES: dict[str, str] = {
    "imagefolder": "astrocli.data.imagefolder:imagefolder_source",
    "tiny_imagenet": "astrocli.data.imagefolder:tiny_imagenet_source",
    "galaxy10_decals": "astrocli.data.galaxy10:galaxy10_decals_source",
    "galaxy10_sdss": "astrocli.data.galaxy10:galaxy10_sdss_source",
    "cifar10": "astrocli.data.torchvision_sources:cifar10_source",
    "cifar100": "astrocli.data.torchvision_sources:cifar100_source",
    "mnist": "astrocli.data.torchvision_sources:mnist_source",
    "fashion_mnist": "astrocli.data.torchvision_sources:fashion_mnist_source",
    "flowers102": "astrocli.data.torchvision_sources:flowers102_source",
    "digits": "astrocli.data.digits:digits_source",
    "h5": "astrocli.data.arrays:h5_source",
    "npz": "astrocli.data.arrays:npz_source",
}


def load_source(cfg: DataConfig) -> SourceData:
    """Run the source named by ``cfg.source``."""
    if cfg.source not in SOURCES:
        raise DataError(f"unknown data.source '{cfg.source}'; choose one of: {', '.join(SOURCES)}")
    module_name, function_name = SOURCES[cfg.source].split(":")
    source_fn = getattr(importlib.import_module(module_name), function_name)
    source = source_fn(cfg)
    if cfg.exclude or cfg.relabel:  # `astro audit --fix` lists, applied to every split as it is built
        source.splits = {
            name: (lambda build=build, name=name: apply_lists(build(), cfg, name, source.class_names))
            for name, build in source.splits.items()
        }
    return source


def build_datasets(cfg: DataConfig, follow_bands: bool = False) -> DatasetBundle:
    """Build the train and held-out datasets for ``recipe.data``.

    ``follow_bands``: the recipe left ``data.in_chans`` unset, so float-path data sets it to the
    images' band count (recorded in ``cfg``, hence in recipe.yaml and the checkpoints).

    Resolves the normalisation statistics (the one place that does: ``data.mean``/``data.std`` when
    set, else the source's, or those measured on float data) into ``DatasetBundle.mean/std``, and
    records them in ``cfg.mean``/``cfg.std``, so that recipe.yaml and the checkpoints keep them.

    Raises:
        DataError: missing or unreadable data, an unknown split, or a split too small to stratify.
    """
    if cfg.in_chans < 1:
        raise DataError(f"data.in_chans must be at least 1, got {cfg.in_chans}")
    source = load_source(cfg)
    heldout = "fold" if cfg.folds else choose_heldout(cfg.split, source.splits, cfg.source)
    full_train = source.splits["train"]()
    # The float path (astrocli.data.arrays): FITS, 16-bit, N bands, scaling; else 8-bit PIL images.

    floating = arrays.wants_float(cfg, full_train)
    if floating and follow_bands:
        arrays.follow_bands(cfg, full_train)
    cfg.pixels = "float" if floating else "uint8"  # recorded in recipe.yaml and the checkpoints
    reader = arrays.ArrayReader.from_config(cfg) if floating else None
    if floating:
        cfg.scaling_params = dict(reader.scaling_params)  # with its defaults, as the checkpoint keeps them
        full_train = arrays.to_float_dataset(full_train, reader, cfg, "train")
    train_idx = val_idx = None
    if heldout in ("stratified", "fold"):
        if heldout == "fold":
            train_idx, val_idx = kfold_split(
                full_train.targets, cfg.folds, cfg.fold, cfg.fold_repeat, cfg.split_seed, cfg.source
            )
        else:
            train_idx, val_idx = stratified_split(
                full_train.targets, cfg.val_fraction, cfg.split_seed, cfg.source
            )
        train, val = full_train.subset(train_idx), full_train.subset(val_idx)
    else:
        train, val = full_train, source.splits[heldout]()
        val = arrays.to_float_dataset(val, reader, cfg, "eval") if floating else val
    # The test split never selects anything unless it is the held-out split itself.
    test = source.splits["test"]() if "test" in source.splits and heldout != "test" else None
    if floating:
        test = arrays.to_float_dataset(test, reader, cfg, "test") if test is not None else None
        mean, std, stats_from = arrays.float_stats(cfg, train)
        arrays.announce_layout(train, cfg)
        source.info.update(pixels="float", stats=stats_from, layout=train.layout_assumed or cfg.layout)
        if stats_from != "recipe":  # the cache was built (and is kept) to measure them
            source.info.update(cache_dtype=str(train.cache_array().dtype))
    else:
        if cfg.in_chans not in (1, 3):
            raise DataError(f"data.in_chans must be 1 or 3 for 8-bit images, got {cfg.in_chans}")
        mean, std = resolve_stats(cfg, source)
    # Record the resolved normalisation in the recipe itself, so recipe.yaml, checkpoints and
    # build_train_transform(recipe) all agree on it.
    cfg.mean, cfg.std = list(mean), list(std)
    split_info = describe_split(cfg, source, heldout, train, val, test)
    split_info["members"] = split_members(train, val, test, train_idx, val_idx, cfg.root)
    return DatasetBundle(train, val, list(source.class_names), mean, std, split_info, test)


def choose_heldout(requested: str, splits: dict[str, Any], source_name: str) -> str:
    """The held-out split that selects the model: a split name, or ``"stratified"`` (carved out of train).

    ``auto`` takes the source's val split, else a stratified split of train; never the test split,
    which is scored once at the end instead (``data.split: test`` selects on it, the papers' way).
    """
    held = [name for name in splits if name != "train"]
    if requested == "auto":
        return "val" if "val" in splits else "stratified"
    if requested == "stratified" or requested in held:
        return requested
    options = ", ".join(["auto", *held, "stratified"])
    raise DataError(f"data.split '{requested}' does not exist for {source_name}; use one of: {options}")


def kfold_split(
    targets: list[int], folds: int, fold: int, repeat: int, seed: int, source_name: str
) -> tuple[list[int], list[int]]:
    """Train / held-out indices of fold ``fold`` in repeat ``repeat`` of seeded stratified k-fold.

    scikit-learn's RepeatedStratifiedKFold draws each repeat from one seeded generator in turn, so
    repeat r's folds do not depend on how many repeats follow: asking for ``repeat + 1`` repeats and
    taking split ``repeat * folds + fold`` gives the same folds as any longer cv.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    check_folds(targets, folds, source_name)
    if not 0 <= fold < folds:
        raise DataError(f"data.fold must be between 0 and {folds - 1} for {folds} folds, got {fold}")
    if repeat < 0:
        raise DataError(f"data.fold_repeat must be 0 or more, got {repeat}")
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeat + 1, random_state=seed)
    y = np.asarray(targets)
    for index, (train_idx, val_idx) in enumerate(splitter.split(np.zeros(len(y)), y)):
        if index == repeat * folds + fold:
            return sorted(train_idx.tolist()), sorted(val_idx.tolist())
    raise AssertionError("unreachable: the splitter yields folds * repeats splits")


def check_folds(targets: list[int], folds: int, source_name: str) -> None:
    """Refuse fewer than 2 folds, or more folds than the smallest class has images."""
    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {folds}; use --folds 5 (or 10)")
    counts = Counter(targets)
    smallest = min(counts.values()) if counts else 0
    if folds > smallest:
        label = min(counts, key=counts.get) if counts else "?"
        raise DataError(
            f"{source_name}: {folds} folds but class {label} has only {smallest} training images; "
            f"use at most --folds {smallest}"
        )


def stratified_split(
    targets: list[int], fraction: float, seed: int, source_name: str
) -> tuple[list[int], list[int]]:
    """Seeded stratified train/held-out indices (each sorted, so h5 reads stay sequential)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1, got {fraction}")
    indices = np.arange(len(targets))
    try:
        train_idx, val_idx = train_test_split(
            indices, test_size=fraction, random_state=seed, stratify=np.asarray(targets)
        )
    except ValueError as exc:
        raise DataError(
            f"{source_name}: cannot make a stratified {fraction:g} held-out split of "
            f"{len(targets)} images ({exc}); add images or a val/ folder, or change data.val_fraction"
        ) from None
    return sorted(train_idx.tolist()), sorted(val_idx.tolist())


def resolve_stats(cfg: DataConfig, source: SourceData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean``/``data.std`` when set, else the source's, with one value per input channel."""
    mean = tuple(cfg.mean) if cfg.mean is not None else adapt_channels(source.mean, cfg.in_chans)
    std = tuple(cfg.std) if cfg.std is not None else adapt_channels(source.std, cfg.in_chans)
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != cfg.in_chans:
            raise DataError(
                f"data.{name} has {len(values)} values but data.in_chans is {cfg.in_chans}; "
                f"give one value per channel"
            )
    if any(s <= 0 for s in std):
        raise DataError(f"data.std values must be positive, got {list(std)}")
    return mean, std


def class_counts(targets: list[int], class_names: list[str]) -> dict[str, int]:
    """Images per class, by class name, in class order."""
    counts = Counter(targets)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names)}


def describe_split(
    cfg: DataConfig, source: SourceData, heldout: str, train: Any, val: Any, test: Any = None
) -> dict[str, Any]:
    """The JSON-able record of how the data was split (``split.json`` in the run)."""
    info: dict[str, Any] = {
        "source": cfg.source,
        "root": str(Path(cfg.root).expanduser()),
        "train_split": "train",
        "heldout_split": heldout,
        "selected_on": "test" if heldout == "test" else "val",
        "test_split": "test" if test is not None else None,
        "class_names": list(source.class_names),
        "num_train": len(train),
        "num_val": len(val),
        "counts": {
            "train": class_counts(train.targets, source.class_names),
            "val": class_counts(val.targets, source.class_names),
        },
    }
    if test is not None:
        info["num_test"] = len(test)
        info["counts"]["test"] = class_counts(test.targets, source.class_names)
    if heldout in ("stratified", "fold"):
        info["split_seed"] = cfg.split_seed
    if heldout == "stratified":
        info["val_fraction"] = cfg.val_fraction
    if heldout == "fold":
        info.update(folds=cfg.folds, fold=cfg.fold, fold_repeat=cfg.fold_repeat)
    info.update(source.info)
    return info


def split_members(train: Any, val: Any, test: Any, train_idx: Any, val_idx: Any, root: str) -> dict[str, Any]:
    """Which images went where: file paths (relative to ``data.root``) for image files, else row
    indices of the source's arrays; plus, for a split carved out of train, the positions in it."""
    members: dict[str, Any] = {}
    for name, dataset in (("train", train), ("val", val), ("test", test)):
        if dataset is not None:
            members[name] = dataset_members(dataset, root)
    if train_idx is not None:
        members["train_positions"] = list(train_idx)
        members["val_positions"] = list(val_idx)
    return members


def dataset_members(dataset: Any, root: str) -> list[Any]:
    """A dataset's files (relative to ``root`` when inside it) or its rows in the source's array."""
    if hasattr(dataset, "samples"):
        base = Path(root).expanduser()
        out = []
        for path, _ in dataset.samples:
            try:
                out.append(str(Path(path).relative_to(base)))
            except ValueError:
                out.append(str(path))
        return out
    if hasattr(dataset, "indices"):
        return [int(i) for i in dataset.indices]
    return list(range(len(dataset)))
