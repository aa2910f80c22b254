"""The tensor pipeline: a decoded uint8 cache held on the device, augmented batch-wide there.

Public API (used by ``astrocli/data/pipeline.py``):

- The cache (``fits_in_memory``, ``build_tensor_cache``, ``TensorCache``): astrocli/data/tensor_cache.py.
- ``TensorTrainBatches(cache, recipe, device, *, mean, std, num_classes=None, mixup=None, rank=0,
  world_size=1)`` and ``TensorEvalBatches(cache, recipe, device, *, mean, std, rank=0, world_size=1)``:
  :class:`~astrocli.data.batches.BatchSource` s (``__len__``, ``set_epoch(epoch, skip_batches=0)``,
  ``mixup``, ``num_samples``, ``__iter__`` yielding ``(images float [B, C, H, W] normalised on the
  device, targets)``). ``mean``/``std`` are the data bundle's (or a checkpoint's): the pipeline has
  no default of its own.
  Train: seeded per-epoch permutation shared by all ranks, sharded ``rank::world_size``, drop_last;
  crop / flips (``tensor_crop.py``), RandAugment (``rand_augment.py``) or colour jitter, normalise,
  random erasing (``tensor_erase.py``) per ``recipe.augment``, every draw from generators seeded by
  :func:`~astrocli.data.batches.epoch_seed`; then timm's ``Mixup`` in batch mode: targets are int64
  ``[B]``, or float ``[B, K]`` whenever mixup/cutmix is configured (also after ``mixup_off_epoch``,
  where timm's Mixup keeps returning smoothed one-hot targets, so the loss stays the same).
  Within a batch the samples come in an arbitrary order (RandAugment sorts the batch by op; the
  targets follow their images).
  Eval: resize + centre-crop per batch (timm's eval geometry), every sample of the shard, in order,
  no drop; targets int64; ``mixup`` is None. ``num_samples`` counts this rank's samples per epoch.
- ``TensorBatches(dataset, recipe, device, *, train, mean, std, rank, world_size, mixup, num_classes)``:
  builds the cache and returns one of the two sources (the call ``pipeline.py`` makes).
- ``keep_freed_batch_buffers() -> bool``: glibc ``mallopt`` so freed batch-sized CPU buffers are
  reused, not unmapped and page-faulted back every batch; called by the sources on a CPU device.

No host syncs inside an epoch: random parameters are drawn on the host from a seeded generator
and copied to the device from pinned memory without blocking (``tensor_draws.py``); the cache sits
on the device.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from astrocli.data.balance import balanced_indices, sample_weights
from astrocli.data.batches import BatchSource, epoch_seed
from astrocli.data.rand_augment import BatchRandAugment
from astrocli.data.tensor_cache import TensorCache, build_tensor_cache
from astrocli.data.tensor_crop import (
    crop_resize,
    pad_crop,
    resize_center_crop,
    resize_square,
    sample_rrc_boxes,
)
from astrocli.data.tensor_draws import to_device
from astrocli.data.tensor_erase import box_mask, color_jitter, random_erase, sample_erase_boxes
from astrocli.data.transforms import build_mixup
from astrocli.devices import resolve_device
from astrocli.errors import AstroError, RecipeError
from astrocli.recipe import Recipe

if TYPE_CHECKING:
    from timm.data import Mixup

# glibc mallopt parameters (malloc.h) and the values keep_freed_batch_buffers sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
_TRIM_THRESHOLD_BYTES = 256 * 2**20


@functools.cache
def keep_freed_batch_buffers() -> bool:
    """Make glibc keep freed batch-sized CPU buffers for reuse instead of unmapping them.

    By default glibc serves every block over 128 KiB with mmap and unmaps it on free, so each
    batch-sized tensor page-faults back in on the next batch: on a CPU that cost the batched
    pipeline about a third of its time. PyTorch's CPU allocator has no cache of its own (its CPU
    tuning guide recommends jemalloc/tcmalloc for this reason); raising glibc's mmap and trim
    thresholds with ``mallopt`` gives the same reuse without an extra library or env variables.
    Process-wide and harmless to other code; a no-op (False) where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1 and ok


# ------------------------------------------------------------------------------------------------
# Batch sources
# ------------------------------------------------------------------------------------------------


def _normalisation(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> tuple[list[float], list[float]]:
    """Per-channel ``mean``/``std`` (one value serves every channel); they come from the caller,
    which takes them from the data bundle (:class:`~astrocli.data.sources.DatasetBundle`, where
    ``build_datasets`` resolves them once) or from a checkpoint: the pipeline has no default."""
    if mean is None or std is None:
        raise ValueError(
            "the tensor pipeline needs mean/std: pass the data bundle's (DatasetBundle.mean/std)"
        )
    mean, std = list(mean), list(std)
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise RecipeError(f"data.mean/data.std need {channels} values (one per channel), got {mean} / {std}")
    return mean, std


def _source_device(device: torch.device | str) -> torch.device:
    """:func:`~astrocli.devices.resolve_device`, where a bare ``cuda`` is the current CUDA device (as
    for torch tensors), not ``cuda:0``."""
    current = torch.cuda.current_device() if str(device) == "cuda" and torch.cuda.is_available() else 0
    return resolve_device(device, local_rank=current)


class _TensorSource:
    """What the train and eval sources share: the device cache and normalisation."""

    def __init__(
        self,
        cache: TensorCache,
        recipe: Recipe,
        device: torch.device | str,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.device = _source_device(device)
        if self.device.type == "cpu":
            keep_freed_batch_buffers()  # on a GPU the caching allocator already reuses buffers
        self.cache = cache.to(self.device)
        self.recipe = recipe
        self.rank, self.world_size = rank, world_size
        self.batch_size = recipe.train.batch_size
        self.channels = self.cache.images.shape[1]
        mean, std = _normalisation(mean, std, self.channels)
        self.mean = mean
        # A float cache (the float path) holds scaled values, not 0..255 levels: no /255, no rounding.
        self.float_pixels = self.cache.images.is_floating_point()
        self._centre = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        top = 1.0 if self.float_pixels else 255.0
        # Normalise x/255 with (m, s) as one fused multiply-add on the 0..255 values.
        self._scale = torch.tensor([1 / (top * s) for s in std], device=self.device).view(1, -1, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=self.device).view(
            1, -1, 1, 1
        )
        self.channels_last = recipe.train.channels_last
        self.epoch = 0
        self.skip_batches = 0
        self.mixup: Mixup | None = None  # a training source sets its batch mixer (BatchSource protocol)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch (the shuffle and the augmentation draw depend on it); the next iteration
        starts after ``skip_batches`` batches (a run resumed mid-epoch)."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self._shift, x, self._scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class TensorTrainBatches(_TensorSource):
    """Augmented, shuffled training batches from a :class:`TensorCache` (see the module docstring)."""

    def __init__(
        self,
        cache: TensorCache,
        recipe: Recipe,
        device: torch.device | str,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int | None = None,
        mixup: Mixup | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(cache, recipe, device, mean=mean, std=std, rank=rank, world_size=world_size)
        a = recipe.augment
        if (a.auto_augment or a.color_jitter) and (self.float_pixels or self.channels not in (1, 3)):
            raise RecipeError(
                f"augment.auto_augment / augment.color_jitter are colour ops for 8-bit RGB images; this data "
                f"has {self.channels} bands of {'float' if self.float_pixels else '8-bit'} pixels: "
                "set augment.auto_augment=null augment.color_jitter=null"
            )
        self.augment = a
        self.img_size = recipe.data.img_size
        self.interpolation = recipe.data.interpolation
        self.seed = recipe.train.seed
        per_rank = len(self.cache) // world_size
        if per_rank < self.batch_size:
            raise AstroError(
                f"train.batch_size={self.batch_size} is larger than the {per_rank} training images per "
                "process; lower train.batch_size"
            )
        self.num_batches = per_rank // self.batch_size
        self.num_samples = self.num_batches * self.batch_size
        self.num_classes = num_classes or int(cache.labels.max()) + 1
        self.rand_augment = (
            BatchRandAugment(a.auto_augment, self.img_size, self.mean, self.interpolation)
            if a.auto_augment
            else None
        )
        self.mixup = mixup if mixup is not None else build_mixup(recipe, self.num_classes)
        if self.mixup is not None and self.batch_size % 2:
            raise RecipeError(f"mixup/cutmix need an even train.batch_size, got {self.batch_size}")

    def __len__(self) -> int:
        return self.num_batches

    def _generators(self) -> tuple[torch.Generator, torch.Generator, np.random.RandomState]:
        """Host generator (parameters), device generator (noise), numpy state (timm Mixup)."""
        seed = epoch_seed(self.seed, self.epoch, self.rank)
        host = torch.Generator().manual_seed(seed)
        noise = torch.Generator(device=self.device).manual_seed(seed + 1)
        return host, noise, np.random.RandomState(seed % 2**32)

    def epoch_indices(self) -> torch.Tensor:
        """This rank's sample order for the current epoch (the same permutation on every rank)."""
        if self.recipe.data.sampler == "balanced":  # the loader's draw (astrocli/data/balance.py)
            per_rank = -(-len(self.cache) // self.world_size)
            weights = sample_weights(self.cache.labels.cpu())
            perm = balanced_indices(weights, per_rank * self.world_size, self.seed, self.epoch)
        else:
            perm = torch.randperm(
                len(self.cache), generator=torch.Generator().manual_seed(self.seed + self.epoch)
            )
        return perm[self.rank :: self.world_size][: self.num_samples]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip, self.skip_batches = self.skip_batches, 0  # set_epoch's skip applies to one iteration
        host, noise, mix_state = self._generators()
        order = to_device(self.epoch_indices(), self.device)
        mixing = self.mixup is not None
        if mixing:
            off = self.augment.mixup_off_epoch
            self.mixup.mixup_enabled = not (off and self.epoch >= off)
        for b in range(self.num_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            # index_select: a row copy, several times faster than advanced indexing on CPU
            images, reorder = self.augment_batch(self.cache.images.index_select(0, idx), host, noise)
            targets = self.cache.labels.index_select(0, idx if reorder is None else idx[reorder])
            if mixing:
                images, targets = self._mix(images, targets, mix_state)
            # A resumed epoch draws and drops the batches already trained: each batch's random
            # parameters come from the epoch's generators in turn, so this leaves them where the run
            # stopped (only the order of the draws is known, not where batch b's start).
            if b >= skip:
                yield images, targets

    def augment_batch(
        self, images: torch.Tensor, host: torch.Generator, noise: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 ``[B, C, H, W]`` -> augmented, normalised float ``[B, C, img_size, img_size]``.

        Also returns the order of the output samples (device tensor; output ``i`` is input
        ``order[i]``), or None when they stay in input order: RandAugment sorts the batch by op.
        """
        a = self.augment
        x = self._crop_and_flip(images, host)
        reorder = None
        if self.rand_augment is not None:
            x, host_order = self.rand_augment(x, host)
            reorder = to_device(host_order, x.device)
        elif a.color_jitter:
            x = color_jitter(x, a.color_jitter, host).round()
        x = self._finish(x)
        if a.re_prob > 0:
            x = self._erase(x, host, noise)
        return x, reorder

    def _erase(self, x: torch.Tensor, host: torch.Generator, noise: torch.Generator | None) -> torch.Tensor:
        """timm random erasing, touching only the samples that drew a box."""
        a, (h, w) = self.augment, x.shape[-2:]
        boxes = sample_erase_boxes(host, len(x), h, w, a.re_prob, a.re_count)
        chosen = torch.nonzero(boxes[:, :, 2].amax(dim=1) > 0).flatten()  # host tensor: no device sync
        if len(chosen) == 0:
            return x
        idx = to_device(chosen, x.device)
        mask = box_mask(boxes[chosen], h, w, torch.device("cpu"))  # host: random_erase counts it
        return x.index_copy_(0, idx, random_erase(x.index_select(0, idx), mask, a.re_mode, noise))

    def _crop_and_flip(self, images: torch.Tensor, host: torch.Generator) -> torch.Tensor:
        """Crop to img_size and flip, as float 0..255 rounded like PIL's uint8 output."""
        a, size = self.augment, self.img_size
        n, _, h, w = images.shape
        if a.crop == "random_resized_crop":
            boxes = sample_rrc_boxes(host, n, h, w, a.scale, a.ratio)
            hflip, vflip = self._sample_flips(host, n)  # folded into the resampling matrices
            x = self._levels(crop_resize(images, boxes, size, self.interpolation, hflip, vflip))
            # RandAugment's first sort copies the batch anyway, and makes it contiguous in passing.
            return x if self.rand_augment is not None else x.contiguous()
        x = self._levels(resize_square(images.float(), size, self.interpolation))
        if a.crop == "pad_crop":
            offsets = torch.randint(0, 2 * a.padding + 1, (n, 2), generator=host)
            offsets = to_device(offsets, x.device)
            if self.float_pixels:  # pad with the band means (0 once normalised), not 0: bands sit anywhere
                x = pad_crop(x - self._centre, offsets, a.padding, size) + self._centre
            else:
                x = pad_crop(x, offsets, a.padding, size)
        for flips, dim in zip(self._sample_flips(host, n), (-1, -2), strict=True):
            if flips is not None:
                idx = to_device(torch.nonzero(flips).flatten(), x.device)
                x.index_copy_(0, idx, x.index_select(0, idx).flip(dim))
        return x

    def _levels(self, x: torch.Tensor) -> torch.Tensor:
        """Round and clip resampled 8-bit images like PIL; float-path values stay as they are."""
        return x if self.float_pixels else x.round_().clamp_(0, 255)

    def _sample_flips(self, host: torch.Generator, n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Host bool masks (horizontal, vertical) with the recipe's probabilities, None when off."""
        a = self.augment
        hflip = torch.rand(n, generator=host) < a.hflip if a.hflip > 0 else None
        vflip = torch.rand(n, generator=host) < a.vflip if a.vflip > 0 else None
        return hflip, vflip

    def _mix(self, images, targets, mix_state: np.random.RandomState):
        # timm's Mixup draws lambda from numpy's global generator: swap in our seeded state for the
        # call so batches are reproducible, and leave the caller's global numpy state untouched.
        saved = np.random.get_state()
        np.random.set_state(mix_state.get_state())
        try:
            images, targets = self.mixup(images, targets)
        finally:
            mix_state.set_state(np.random.get_state())
            np.random.set_state(saved)
        return images, targets


class TensorEvalBatches(_TensorSource):
    """Evaluation batches in order (resize + centre-crop per batch), no drop; int64 targets."""

    @functools.cached_property
    def indices(self) -> torch.Tensor:
        """This rank's samples: every ``world_size``-th from ``rank`` (each image once across ranks)."""
        return torch.arange(self.rank, len(self.cache), self.world_size, device=self.device)

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self.recipe.data
        for start in range(0, self.num_samples, self.batch_size):
            idx = self.indices[start : start + self.batch_size]
            x = resize_center_crop(
                self.cache.images[idx], data.img_size, data.crop_pct, data.interpolation, self.float_pixels
            )
            yield self._finish(x if self.float_pixels else x.round()), self.cache.labels[idx]


def TensorBatches(
    dataset: Any,
    recipe: Recipe,
    device: torch.device | str,
    *,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    rank: int = 0,
    world_size: int = 1,
    mixup: Mixup | None = None,
    num_classes: int | None = None,
) -> BatchSource:
    """Build (or load) the cache of ``dataset`` and return its train or eval batch source.

    ``mean``/``std``: the data bundle's (or a checkpoint's). ``mixup`` (train only): the batch mixer;
    None builds it from the recipe (still None when mixup/cutmix are off).
    """
    cache = build_tensor_cache(dataset, recipe.data, "train" if train else "eval")
    if train:
        return TensorTrainBatches(
            cache,
            recipe,
            device,
            mean=mean,
            std=std,
            rank=rank,
            world_size=world_size,
            num_classes=num_classes,
            mixup=mixup,
        )
    return TensorEvalBatches(cache, recipe, device, mean=mean, std=std, rank=rank, world_size=world_size)
