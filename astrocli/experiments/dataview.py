"""Every image of a recipe's data, by key, as audits and reports see it.

:func:`open_view` builds each split the source offers (``data.exclude``/``data.relabel`` applied, the
float path's scaling too), names every image by its key (:mod:`astrocli.data.exclude`) and says which
split a run would put it in (a held-out split carved out of ``train`` is labelled ``val``).
:func:`to_pil` turns what a dataset yields into an 8-bit picture: thumbnails of FITS, 16-bit and
multi-band images go through the recipe's own scaling, as the model sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from astrocli.data import arrays
from astrocli.data.exclude import image_keys
from astrocli.data.sources import choose_heldout, load_source, stratified_split
from astrocli.images.thumbs import THUMB_SIDE, data_uri, to_pil
from astrocli.recipe import DataConfig


@dataclass
class DataView:
    """The splits of one data configuration: datasets, keys and where a run puts each image."""

    cfg: DataConfig
    class_names: list[str]
    splits: dict[str, Any]
    keys: dict[str, list[str]]
    roles: dict[str, list[str]] = field(default_factory=dict)  # per split: train / val / test per image
    _where: dict[str, tuple[str, int]] = field(default_factory=dict)

    def locate(self, key: str) -> tuple[str, int] | None:
        """(split, position) of the image named ``key``, or None."""
        if not self._where:
            self._where = {k: (s, i) for s, keys in self.keys.items() for i, k in enumerate(keys)}
        return self._where.get(key)

    def item(self, split: str, position: int) -> Any:
        """The decoded image (PIL, or a scaled float ``[C, H, W]`` array); raises on a bad file."""
        dataset = self.splits[split]
        if hasattr(dataset, "load"):  # image files: load() raises, __getitem__ would skip to the next
            return dataset.load(position)
        return dataset[position][0]

    def thumbnail(self, key: str, side: int = THUMB_SIDE) -> str | None:
        """A ``data:`` URI of the image ``key`` (None when it cannot be read: the page says so)."""
        where = self.locate(key)
        if where is None:
            return None
        try:
            return data_uri(to_pil(self.item(*where)), side)
        except Exception:  # a thumbnail is never worth failing a report over; the page marks it missing
            return None


def open_view(cfg: DataConfig) -> DataView:
    """Build every split of ``cfg``'s source (raises DataError when the data is missing)."""

    source = load_source(cfg)
    splits = {name: build() for name, build in source.splits.items()}
    if arrays.wants_float(cfg, splits["train"]):
        reader = arrays.ArrayReader.from_config(cfg)
        splits = {n: arrays.to_float_dataset(d, reader, cfg, n) for n, d in splits.items()}
    keys = {name: image_keys(d, cfg.root, name) for name, d in splits.items()}
    roles = {name: [name if name in ("train", "test") else "val"] * len(d) for name, d in splits.items()}
    if not cfg.folds and choose_heldout(cfg.split, splits, cfg.source) == "stratified":
        try:  # the run's own seeded split: which training images it would hold out
            _, val_idx = stratified_split(
                splits["train"].targets, cfg.val_fraction, cfg.split_seed, cfg.source
            )
            for position in val_idx:
                roles["train"][position] = "val"
        except Exception:  # too few images to split: every image stays "train" (the audit lists counts)
            pass
    return DataView(cfg, list(source.class_names), splits, keys, roles)
