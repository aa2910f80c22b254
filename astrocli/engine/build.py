"""The parts of a training run, each built from the recipe: seeds, autocast, batches, model,
optimizer, schedule and loss. :func:`astrocli.engine.launch.build_trainer` puts them together.

Everything the papers used comes from timm (optimizers, schedulers, losses, Mixup, EMA).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from astrocli.data.balance import class_weights
from astrocli.data.defaults import fit_warmup_cooldown
from astrocli.data.pipeline import build_eval_batches, build_train_batches
from astrocli.engine.finetune import check_finetune_config, param_groups
from astrocli.errors import AstroError
from astrocli.models import create_model
from astrocli.models.pretrained import load_pretrained
from astrocli.notices import SkipLog
from astrocli.recipe import Recipe

if TYPE_CHECKING:
    from timm.scheduler.scheduler import Scheduler

    from astrocli.data.batches import BatchSource
    from astrocli.data.sources import DatasetBundle
    from astrocli.engine.distributed import DistInfo


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed torch, numpy and ``random``; with ``deterministic`` also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None: full precision)."""
    if amp == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise AstroError("train.amp=fp16 needs a CUDA device; on the CPU use train.amp=bf16 or none")
        return torch.float16
    return None


def attach_skip_log(bundle: DatasetBundle, path: Path) -> SkipLog:
    """Send the images skipped while reading ``bundle`` (main process and DataLoader workers) to ``path``.

    Files already left out when the folders were indexed (PIL could not identify them: a truncated
    header, a decompression bomb) are written there first; their line was printed then.
    """
    log = SkipLog(path)
    known: dict[str, str] = {}
    for dataset in (bundle.train, bundle.val, bundle.test):
        known.update(getattr(dataset, "unreadable", None) or [])
        if hasattr(dataset, "skip_log"):  # image-file datasets; array datasets have nothing to skip
            dataset.skip_log = log
    listed = set(log.new_paths())  # a resumed run's file holds them already
    for image_path, reason in known.items():
        if image_path not in listed:
            log.add(image_path, reason)
    log.mark_reported(list(known))
    return log


def build_batches(
    bundle: DatasetBundle, recipe: Recipe, device: torch.device, dist: DistInfo
) -> tuple[BatchSource, BatchSource]:
    """The training and validation batch sources, sharded over the ranks."""
    train_batches = build_train_batches(bundle, recipe, device, dist.rank, dist.world_size)
    eval_batches = build_eval_batches(
        bundle.val, recipe, device, dist.rank, dist.world_size, mean=bundle.mean, std=bundle.std
    )
    if len(train_batches) == 0:
        raise AstroError("the training set gives no batch; lower train.batch_size or add images")
    return train_batches, eval_batches


def build_model(
    recipe: Recipe, num_classes: int, *, load_weights: bool = True, log: Callable[[str], None] | None = None
) -> nn.Module:
    """The zoo model for ``recipe.model``, started from ``model.pretrained`` weights when
    ``load_weights`` (not when resuming); ``log`` gets the one-line adaptation report."""
    m, d = recipe.model, recipe.data
    model = create_model(
        m.name,
        num_classes=num_classes,
        img_size=d.img_size,
        in_chans=d.in_chans,
        drop_rate=m.drop_rate,
        drop_path_rate=m.drop_path_rate,
    )
    if m.pretrained and load_weights:
        report = load_pretrained(model, m.pretrained, model_name=m.name, in_chans=d.in_chans)
        if log is not None:
            log(report.line())
    return model


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """timm's optimizer factory (no weight decay on biases and norms); fused AdamW on CUDA.

    ``train.layer_decay`` is timm's layer-wise decay; ``train.head_lr_mult`` scales the classifier
    (astrocli/engine/finetune.py builds those groups; timm's schedulers apply their ``lr_scale``).
    """
    cfg = recipe.train
    check_finetune_config(cfg)
    kwargs: dict[str, Any] = {"layer_decay": cfg.layer_decay}
    if cfg.head_lr_mult != 1.0:
        kwargs["param_group_fn"] = lambda m: param_groups(
            m, cfg.weight_decay, cfg.layer_decay, cfg.head_lr_mult
        )
    if cfg.optimizer == "sgd":
        kwargs.update(momentum=cfg.momentum, nesterov=cfg.nesterov)
        opt = "sgd"
    else:
        opt = "adamw"
        if device.type == "cuda":
            kwargs["fused"] = True
    return create_optimizer_v2(model, opt=opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    updates_per_epoch: int,
    warn: Callable[[str], None] | None = None,
    epochs: int | None = None,
) -> tuple[Scheduler, int]:
    """timm's scheduler, stepped per optimizer update (smooth warmup even for short runs).

    Returns the scheduler and the total number of epochs: ``epochs`` (default ``train.epochs``; a
    ``train.time`` plan gives its own), with warmup and cooldown counted inside it (scaled down,
    with a warning through ``warn``, when they would take more than half the run;
    astrocli/data/defaults.py).
    """
    cfg = recipe.train
    epochs = cfg.epochs if epochs is None else epochs
    fit = fit_warmup_cooldown(epochs, cfg.warmup_epochs, cfg.cooldown_epochs, updates_per_epoch)
    if fit.warning and warn is not None:
        warn(fit.warning)
    sched, decay_epochs, decay_rate = cfg.sched, cfg.decay_epochs, cfg.decay_rate
    if sched == "constant":  # timm has no constant schedule: a step schedule that never decays
        sched, decay_epochs, decay_rate = "step", 10**9, 1.0
    # Everything in updates (timm's "epochs" of one update each): timm runs cooldown after
    # num_epochs, so the main schedule gets total - cooldown.
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=fit.total_updates - fit.cooldown_updates,
        decay_epochs=decay_epochs * updates_per_epoch,
        decay_rate=decay_rate,
        cooldown_epochs=fit.cooldown_updates,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=fit.warmup_updates,
        step_on_epochs=False,
        updates_per_epoch=1,
    )
    return scheduler, epochs


def rebuild_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int, epochs: int, progress: Any
) -> Scheduler:
    """The schedule for ``epochs`` epochs (a ``train.time`` plan), at the update ``progress`` reached
    (timm's schedules are pure functions of the update; the optimizer keeps its state)."""
    updates_per_epoch = math.ceil(steps_per_epoch / recipe.train.accum_steps)
    scheduler, _ = build_scheduler(optimizer, recipe, updates_per_epoch, epochs=epochs)
    scheduler.step_update(num_updates=progress.global_step)
    return scheduler


def build_train_loss(recipe: Recipe, mixup_on: bool, class_weight: torch.Tensor | None = None) -> nn.Module:
    """Soft-target CE under Mixup/CutMix (smoothing is in the targets), else label-smoothed or plain CE.

    With ``class_weight`` (``train.class_weights: balanced``), torch's CE with per-class weights,
    which takes hard labels (with its own smoothing) and soft Mixup targets alike.
    """
    if class_weight is not None:
        smoothing = 0.0 if mixup_on else recipe.augment.label_smoothing
        return nn.CrossEntropyLoss(weight=class_weight, label_smoothing=smoothing)
    if mixup_on:
        return SoftTargetCrossEntropy()
    if recipe.augment.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.augment.label_smoothing)
    return nn.CrossEntropyLoss()


def build_losses(
    recipe: Recipe, bundle: DatasetBundle, train_batches: BatchSource, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """The training loss (soft targets under Mixup, class weights when asked) and the summed
    evaluation loss."""
    weight = None
    if recipe.train.class_weights == "balanced":
        weight = class_weights(bundle.train.targets, bundle.num_classes).to(device)
    train_loss = build_train_loss(recipe, train_batches.mixup is not None, weight)
    return train_loss, nn.CrossEntropyLoss(reduction="sum")
