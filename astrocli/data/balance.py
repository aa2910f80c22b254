"""Class imbalance: class weights for the loss and a class-balanced training order.

- ``train.class_weights: balanced``: scikit-learn's ``compute_class_weight("balanced")``
  (``n_samples / (n_classes * count)``) as the cross-entropy's per-class weights.
- ``data.sampler: balanced``: every class drawn equally often. Each epoch draws as many indices
  as there are training images, with replacement, with probability ``1 / count(class)`` per image
  (what torch's ``WeightedRandomSampler`` does with ``torch.multinomial``). Both pipelines use
  :func:`balanced_indices`, seeded by ``(seed, epoch)`` and shared by all ranks before sharding,
  so an epoch's order does not depend on what ran before it: resume stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from astrocli.errors import DataError


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's balanced class weights, float32 ``[num_classes]`` (absent classes: weight 0)."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(targets, dtype=np.int64)
    present = np.unique(labels)
    if len(present) == 0:
        raise DataError("train.class_weights=balanced needs training images")
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def sample_weights(targets: Sequence[int]) -> torch.Tensor:
    """Per-image weight ``1 / count(its class)`` (float64, so sums stay exact for large sets)."""
    labels = torch.as_tensor(list(targets), dtype=torch.int64)
    counts = torch.bincount(labels).double()
    return 1.0 / counts[labels]


def balanced_indices(weights: torch.Tensor, num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """``num_samples`` indices drawn with replacement proportionally to ``weights``, for ``epoch``."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.multinomial(weights, num_samples, replacement=True, generator=generator)


class BalancedSampler(torch.utils.data.Sampler):
    """A class-balanced, DDP-aware sampler: :func:`balanced_indices` sharded ``rank::world_size``.

    torch's ``WeightedRandomSampler`` has no ``set_epoch`` and no sharding; this is the same
    draw, reseeded per epoch and split across processes like ``DistributedSampler``.
    """

    def __init__(self, targets: Sequence[int], num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.weights = sample_weights(targets)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.num_samples = -(-len(self.weights) // num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        drawn = balanced_indices(self.weights, self.num_samples * self.num_replicas, self.seed, self.epoch)
        return iter(drawn[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
