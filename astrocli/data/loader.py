"""The loader pipeline: a torch DataLoader over ``(PIL.Image, label)`` datasets, timm/torchvision
transforms in worker processes, a DistributedSampler for DDP and timm's Mixup/CutMix applied to
whole batches on the device.

It is a :class:`~astrocli.data.batches.BatchSource`: iterate it for ``(images, targets)`` already on
the device; ``len()`` is batches per epoch for this rank, ``set_epoch`` reshuffles (and skips the
batches a resumed run already trained), ``num_samples`` is the number of images this rank sees per
epoch.

Determinism: the sampler shuffles by ``seed + epoch`` and every epoch's worker seeds come from a
generator seeded by :func:`~astrocli.data.batches.epoch_seed` ``(seed, epoch, rank)``, so an epoch's
data does not depend on what ran before it (which is what makes resume exact at epoch boundaries).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from astrocli.data.balance import BalancedSampler
from astrocli.data.batches import epoch_seed

if TYPE_CHECKING:
    from timm.data import Mixup


class TransformedDataset(Dataset):
    """Apply ``transform`` to the image of each ``(image, label)`` item of ``dataset``."""

    def __init__(self, dataset: Any, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return self.transform(image), int(label)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a worker from torch's per-worker seed (torch seeds only itself)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _SkipSampler(torch.utils.data.Sampler):
    """The indices of ``sampler`` after the first ``skip``: resumes an epoch without reading its start."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class LoaderBatches:
    """A batch source over a DataLoader.

    Args:
        dataset: items ``(PIL.Image, int)``.
        transform: image -> normalised float tensor ``[C, H, W]``.
        batch_size: images per batch for this process.
        device: where batches are delivered.
        train: shuffle, drop the ragged last batch and apply ``mixup``; else ordered, every image once.
        rank, world_size: this process's shard (DDP).
        seed: base seed for shuffling and worker seeds.
        num_workers: DataLoader worker processes (0: load in this process).
        mixup: a ``timm.data.Mixup`` applied to each batch on the device (train only), or None.
        mixup_off_epoch: from this epoch on (0-based count ``>=``), mixup/cutmix are off (0: never).
        channels_last: deliver images in channels-last memory format.
        balanced: draw classes equally often (``data.sampler: balanced``) instead of a shuffle.
    """

    def __init__(
        self,
        dataset: Any,
        transform: Callable[[Any], torch.Tensor],
        batch_size: int,
        device: torch.device,
        *,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        mixup: Mixup | None = None,
        mixup_off_epoch: int = 0,
        channels_last: bool = False,
        balanced: bool = False,
    ) -> None:
        self.device = device
        self.train = train
        self.rank = rank
        self.seed = seed
        self.mixup = mixup if train else None
        self.mixup_off_epoch = mixup_off_epoch
        self.channels_last = channels_last
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.epoch = 0
        self.skip_batches = 0
        data = TransformedDataset(dataset, transform)
        if train:
            # DistributedSampler also serves a world of one: it shuffles by seed + epoch, not by the
            # global RNG, so the order of an epoch is reproducible on its own.
            self.sampler = DistributedSampler(
                data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
            )
            if balanced:  # data.sampler=balanced: classes drawn equally often (astrocli/data/balance.py)
                self.sampler = BalancedSampler(dataset.targets, world_size, rank, seed)
            self.dataset = data
            self.num_samples = len(self.sampler)
            # Dropping the ragged last batch keeps batch statistics and Mixup (even batches) sane,
            # but never drop everything on a dataset smaller than one batch.
            self.drop_last = self.num_samples >= batch_size
        else:
            # Evaluation: every image exactly once across ranks (DistributedSampler would pad).
            self.sampler = None
            self.dataset = Subset(data, list(range(rank, len(data), world_size)))
            self.num_samples = len(self.dataset)
            self.drop_last = False

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Prepare epoch ``epoch`` (0-based): reshuffle, switch mixup off at its off-epoch, and
        optionally start ``skip_batches`` batches in (resuming an interrupted epoch)."""
        self.epoch = epoch
        self.skip_batches = skip_batches
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.mixup is not None and self.mixup_off_epoch and epoch >= self.mixup_off_epoch:
            self.mixup.mixup_enabled = False

    def _loader(self) -> DataLoader:
        generator = torch.Generator()
        generator.manual_seed(epoch_seed(self.seed, self.epoch, self.rank))  # seeds the workers
        sampler = self.sampler
        if sampler is not None and self.skip_batches:
            sampler = _SkipSampler(sampler, self.skip_batches * self.batch_size)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=seed_worker,
            generator=generator,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for images, targets in self._loader():
            images = images.to(self.device, non_blocking=non_blocking)
            targets = targets.to(self.device, non_blocking=non_blocking)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.mixup is not None:
                if len(images) % 2:  # timm's batch Mixup pairs images, so it needs an even batch
                    images, targets = images[:-1], targets[:-1]
                images, targets = self.mixup(images, targets)
            yield images, targets
        self.skip_batches = 0
