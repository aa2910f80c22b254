"""Choose how batches reach the model: the loader pipeline or the tensor pipeline (``data.pipeline``).

- ``loader``: :class:`astrocli.data.loader.LoaderBatches` (DataLoader, PIL transforms in workers).
- ``tensor``: :mod:`astrocli.data.tensor_pipeline` (decoded uint8 cache, batched augmentation on the
  device), when that module is installed.
- ``auto``: the tensor pipeline when the dataset fits in memory by its own judgement, else the loader.

Both return a :class:`~astrocli.data.batches.BatchSource`: iterate for ``(images, targets)`` on the
device; ``len()``, ``set_epoch(epoch, skip_batches=0)``, ``mixup`` (None for evaluation sources), and
``num_samples``. The normalisation ``mean``/``std`` always come from the caller: the data bundle's
(resolved once by :func:`~astrocli.data.sources.build_datasets`, which records them in the recipe)
or a checkpoint's.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch

from astrocli.data.batches import BatchSource
from astrocli.data.loader import LoaderBatches
from astrocli.data.sources import DatasetBundle
from astrocli.data.tensor_cache import fits_in_memory
from astrocli.data.transforms import build_eval_transform, build_mixup, build_train_transform
from astrocli.errors import AstroError
from astrocli.recipe import Recipe


def _tensor_pipeline_module() -> Any:
    """The tensor pipeline module, or None while it is not part of this install."""
    try:
        return importlib.import_module("astrocli.data.tensor_pipeline")
    except ModuleNotFoundError as exc:
        if exc.name == "astrocli.data.tensor_pipeline":
            return None
        raise


def choose_pipeline(recipe: Recipe, dataset: Any) -> str:
    """``loader`` or ``tensor`` for this recipe and dataset (resolving ``data.pipeline: auto``)."""
    wanted = recipe.data.pipeline
    module = _tensor_pipeline_module()
    if getattr(dataset, "pixels", "uint8") == "float":  # float arrays: timm's PIL transforms do not apply
        if wanted == "loader" or module is None:
            raise AstroError(
                "float / multi-band images (data.pixels=float) are fed by the tensor pipeline; "
                "set data.pipeline=auto or tensor"
            )
        return "tensor"
    if wanted == "loader":
        return "loader"
    if wanted == "tensor":
        if module is None:
            raise AstroError(
                "data.pipeline=tensor, but astrocli.data.tensor_pipeline is not installed; "
                "use data.pipeline=loader"
            )
        return "tensor"
    if module is not None and fits_in_memory(dataset, recipe):
        return "tensor"
    return "loader"


def build_train_batches(
    bundle: DatasetBundle, recipe: Recipe, device: torch.device, rank: int = 0, world_size: int = 1
) -> BatchSource:
    """The training batch source for ``bundle.train`` (shuffled, augmented, mixup on the device)."""
    mixup = build_mixup(recipe, bundle.num_classes)
    if choose_pipeline(recipe, bundle.train) == "tensor":
        module = _tensor_pipeline_module()
        return module.TensorBatches(
            bundle.train,
            recipe,
            device,
            train=True,
            rank=rank,
            world_size=world_size,
            mean=bundle.mean,
            std=bundle.std,
            mixup=mixup,
            num_classes=bundle.num_classes,
        )

    return LoaderBatches(
        bundle.train,
        build_train_transform(recipe, mean=bundle.mean, std=bundle.std),
        recipe.train.batch_size,
        device,
        train=True,
        rank=rank,
        world_size=world_size,
        seed=recipe.train.seed,
        num_workers=recipe.data.num_workers,
        mixup=mixup,
        mixup_off_epoch=recipe.augment.mixup_off_epoch,
        channels_last=recipe.train.channels_last,
        balanced=recipe.data.sampler == "balanced",
    )


def build_eval_batches(
    dataset: Any,
    recipe: Recipe,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    *,
    mean: Sequence[float],
    std: Sequence[float],
) -> BatchSource:
    """The evaluation batch source: every image of ``dataset`` once across ranks, in order.

    ``mean``/``std``: the normalisation of the data bundle (``DatasetBundle.mean/std``) or of the
    checkpoint being evaluated.
    """
    if mean is None or std is None:  # a caller's bug: the bundle and checkpoints always have them
        raise ValueError("build_eval_batches needs mean/std: pass the data bundle's or the checkpoint's")
    if choose_pipeline(recipe, dataset) == "tensor":
        module = _tensor_pipeline_module()
        return module.TensorBatches(
            dataset,
            recipe,
            device,
            train=False,
            rank=rank,
            world_size=world_size,
            mean=mean,
            std=std,
            mixup=None,
        )

    data = recipe.data
    transform = build_eval_transform(
        data.img_size, data.crop_pct, data.interpolation, mean, std, data.in_chans
    )
    return LoaderBatches(
        dataset,
        transform,
        recipe.train.batch_size,
        device,
        train=False,
        rank=rank,
        world_size=world_size,
        seed=recipe.train.seed,
        num_workers=recipe.data.num_workers,
        channels_last=recipe.train.channels_last,
    )
