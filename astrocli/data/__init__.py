"""Data: sources (image folders, Galaxy10, CIFAR, ...), downloads, transforms and batch pipelines.

bundle = build_datasets(recipe.data)          # train / val datasets of (PIL.Image, int)
train_tf = build_train_transform(recipe)      # timm / torchvision augmentation
eval_tf = build_eval_transform(size, crop_pct, interpolation, bundle.mean, bundle.std, in_chans)

The engine takes its batches from :mod:`astrocli.data.pipeline` (``build_train_batches(bundle, ...)``,
``build_eval_batches(dataset, ..., mean=bundle.mean, std=bundle.std)``), each a
:class:`astrocli.data.batches.BatchSource`. The normalisation statistics are resolved once, by
``build_datasets`` (``DatasetBundle.mean/std``, also recorded in ``recipe.data.mean/std``).
"""

from astrocli.data.sources import SOURCES, DatasetBundle, build_datasets
from astrocli.data.transforms import build_eval_transform, build_train_transform

__all__ = ["SOURCES", "DatasetBundle", "build_datasets", "build_eval_transform", "build_train_transform"]
