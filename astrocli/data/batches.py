"""The interface between the data and the engine: what a batch source is.

Both data pipelines implement it: the loader pipeline (:class:`astrocli.data.loader.LoaderBatches`,
a torch ``DataLoader`` over PIL transforms) and the tensor pipeline
(:mod:`astrocli.data.tensor_pipeline`, a decoded uint8 cache augmented batch-wide on the device). The
trainer, the evaluation code and the calibration fit only ever see a :class:`BatchSource`.
Both seed an epoch's random draws with :func:`epoch_seed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class BatchSource(Protocol):
    """Batches of ``(images, targets)`` on the training device, one epoch per iteration.

    ``images`` are normalised float ``[B, C, H, W]``; ``targets`` are class indices ``[B]``, or soft
    targets ``[B, K]`` when ``mixup`` is set. A training source reshuffles and re-augments per
    epoch from seeds alone, so that a run resumed mid-epoch sees exactly the batches it would have.
    """

    #: the batch mixer (a ``timm.data.Mixup``) a training source applies, or None: the trainer picks
    #: a soft-target loss when it is set.
    mixup: Any

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Prepare epoch ``epoch`` (0-based); the next iteration starts after ``skip_batches``
        batches of it (a run resumed mid-epoch). Evaluation sources ignore both."""
        ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int:
        """Batches per epoch (after any ``train.max_steps_per_epoch`` cap)."""
        ...


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch's random draws on one rank (augmentation parameters, DataLoader worker
    seeds): a function of ``train.seed``, the epoch and the rank alone, so an epoch's data does not
    depend on what ran before it, and every rank draws its own."""
    return (seed * 1_000_003 + epoch) * 1_009 + rank
