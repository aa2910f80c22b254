"""Starting a run: :func:`train` (the entry point: run directory, data, recipe defaults, loggers,
DDP) and :func:`build_trainer` (every part, built in a fixed order, into a whole
:class:`~astrocli.engine.trainer.Trainer`).

    run_dir = train(load_recipe("recipes/quickstart.yaml"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from rich.markup import escape
from timm.utils import ModelEmaV3

from astrocli.bars import report_to as report_progress
from astrocli.data import build_datasets
from astrocli.data.defaults import (
    attention_warning,
    data_facts,
    describe,
    resolve_amp,
    resolve_channels_last,
    resolve_defaults,
)
from astrocli.devices import resolve_device
from astrocli.engine import distributed as ddp
from astrocli.engine.build import (
    attach_skip_log,
    autocast_dtype,
    build_batches,
    build_losses,
    build_model,
    build_optimizer,
    build_scheduler,
    seed_everything,
)
from astrocli.engine.console import TrainConsole
from astrocli.engine.finetune import check_finetune_config
from astrocli.engine.loggers import Logger, LoggerGroup, build_loggers
from astrocli.engine.run_dir import RunDir, unique_run_dir
from astrocli.engine.run_guard import RunGuard
from astrocli.engine.state import Progress, ResumeState
from astrocli.engine.trainer import StepHook, Trainer
from astrocli.errors import AstroError
from astrocli.models import count_params
from astrocli.models.pretrained import apply_pretrained_stats
from astrocli.recipe import Recipe, given_keys

if TYPE_CHECKING:
    from timm.scheduler.scheduler import Scheduler

    from astrocli.data.sources import DatasetBundle


# ---------------------------------------------------------------------------------------------
# Building the trainer
# ---------------------------------------------------------------------------------------------


def build_trainer(
    recipe: Recipe,
    bundle: DatasetBundle,
    run_dir: Path,
    *,
    dist: ddp.DistInfo,
    device: torch.device,
    console: TrainConsole,
    resume: ResumeState | None = None,
    step_hook: StepHook | None = None,
    loggers: Sequence[Logger] = (),
) -> Trainer:
    """Build every part of the run, in a fixed order (the seeds make the weights reproducible), and
    load ``resume`` into them when given."""
    r, files = recipe, RunDir(run_dir)
    skip_log = attach_skip_log(bundle, files.skipped_images_file)
    train_batches, eval_batches = build_batches(bundle, r, device, dist)
    seed_everything(r.train.seed, r.train.deterministic)  # same initial weights on every rank
    model = _training_model(r, bundle, device, console, load_weights=resume is None)
    optimizer = build_optimizer(model, r, device)
    steps = len(train_batches)
    if r.train.max_steps_per_epoch:
        steps = min(steps, r.train.max_steps_per_epoch)
    updates_per_epoch = math.ceil(steps / r.train.accum_steps)
    scheduler, total_epochs = build_scheduler(optimizer, r, updates_per_epoch, warn=console.warn)
    ema = ModelEmaV3(model, decay=r.train.ema_decay, use_warmup=True) if r.train.ema else None
    amp_dtype = autocast_dtype(r.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    train_loss_fn, eval_loss_fn = build_losses(r, bundle, train_batches, device)
    progress, history = _start_or_resume(r, files, dist, resume, model, optimizer, scheduler, ema, scaler)
    if r.train.time is not None and progress.planned_epochs:
        total_epochs = progress.planned_epochs  # a resumed budget run: its schedule came with the state
    return Trainer(
        recipe=r,
        files=files,
        dist=dist,
        device=device,
        console=console,
        bundle=bundle,
        train_batches=train_batches,
        eval_batches=eval_batches,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        scaler=scaler,
        amp_dtype=amp_dtype,
        train_loss_fn=train_loss_fn,
        eval_loss_fn=eval_loss_fn,
        skip_log=skip_log,
        steps_per_epoch=steps,
        total_epochs=total_epochs,
        params=count_params(model, trainable_only=True),
        progress=progress,
        history=history,
        loggers=LoggerGroup(loggers),
        step_hook=step_hook,
    )


def _start_or_resume(
    recipe: Recipe,
    files: RunDir,
    dist: ddp.DistInfo,
    resume: ResumeState | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    ema: ModelEmaV3 | None,
    scaler: torch.amp.GradScaler,
) -> tuple[Progress, list[dict[str, Any]]]:
    """A new run: seed each rank's data order. A resumed one: load every saved state (RNGs last) and
    the metrics.csv rows up to the saved epoch."""
    if resume is None:
        # Data order and augmentation differ per rank; initial weights (seeded before) do not.
        seed_everything(recipe.train.seed + dist.rank, recipe.train.deterministic)
        return Progress(), []
    ema_module = ema.module if ema else None
    resume.apply(model=model, optimizer=optimizer, scheduler=scheduler, ema=ema_module, scaler=scaler)
    progress = resume.progress
    return progress, [row for row in files.read_metrics() if row["epoch"] <= progress.epoch]


def _training_model(
    recipe: Recipe, bundle: DatasetBundle, device: torch.device, console: TrainConsole, load_weights: bool
) -> nn.Module:
    """The model on ``device`` (channels-last when asked), with a warning when a ViT sees too few tokens."""
    model = build_model(
        recipe, bundle.num_classes, load_weights=load_weights, log=lambda line: console.info(escape(line))
    ).to(device)
    if recipe.train.channels_last is True:  # "auto" is resolved before (_data_defaults)
        model = model.to(memory_format=torch.channels_last)
    too_few = attention_warning(model, recipe.data.img_size, recipe.model.name)
    if too_few:
        console.warn(too_few)
    return model


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _load_bundle(recipe: Recipe, dist: ddp.DistInfo) -> DatasetBundle:
    """Build the datasets; under DDP rank 0 first (it may download), then the others."""
    follow = "data.in_chans" not in given_keys(recipe)  # unset: scientific data gives its band count
    if dist.is_main:
        bundle = build_datasets(recipe.data, follow_bands=follow)
    ddp.barrier()
    if not dist.is_main:
        bundle = build_datasets(recipe.data, follow_bands=follow)
    return bundle


def _data_defaults(
    recipe: Recipe,
    bundle: DatasetBundle,
    dist: ddp.DistInfo,
    console: TrainConsole,
    device: torch.device,
    resumed: bool,
) -> Recipe:
    """Fill the keys the recipe left out from the data (``augment.preset``; astrocli/data/defaults.py)
    and the device (``train.channels_last`` and ``train.amp``: auto), and print what was chosen. A
    resumed run's recipe is complete already: nothing changes."""
    resolved, choices = resolve_defaults(recipe, data_facts(bundle, recipe, dist.world_size))
    for line in describe(choices, resolved):
        console.info(escape(line))
    resolved, layout_line = resolve_channels_last(resolved, device.type)
    resolved, amp_line = resolve_amp(resolved, device.type, resumed=resumed)
    for line in (layout_line, amp_line):
        if line:
            console.info(escape(line))
    return resolved


def describe_protocol(bundle: DatasetBundle, recipe: Recipe) -> str:
    """One line saying what selects the checkpoint and whether a test score is held apart."""
    heldout = bundle.split_info.get("heldout_split")
    metric = recipe.train.select_metric
    if heldout == "test":
        return (
            f"select on the TEST split ({metric}; data.split=test, the papers' protocol: "
            "the reported number is optimistic)"
        )
    where = {
        "stratified": f"a seeded stratified {recipe.data.val_fraction:g} of train",
        "fold": f"fold {recipe.data.fold} of {recipe.data.folds} (repeat {recipe.data.fold_repeat})",
    }.get(heldout, f"the '{heldout}' split")
    test = "; the test split is scored once at the end" if bundle.test is not None else ""
    return f"select on val ({metric}, {where}){test}"


def _check_before_start(recipe: Recipe, device: torch.device, resumed: bool) -> None:
    """Fail before creating anything: fp16 on the CPU; for a new run, bad fine-tuning keys and an
    unreachable Hub (then normalise as the pretrained weights were, unless data.mean/std are set)."""
    autocast_dtype(recipe.train.amp, device)
    if resumed:
        return

    check_finetune_config(recipe.train)
    apply_pretrained_stats(recipe)


def _open_run_dir(
    recipe: Recipe,
    guard: RunGuard,
    dist: ddp.DistInfo,
    device: torch.device,
    resume_dir: Path | None,
    exact_dir: Path | None,
) -> Path:
    """The run directory, locked: ``resume_dir``, ``exact_dir`` (created if missing) or a fresh
    ``<output.dir>/<output.name>[-N]`` (named on rank 0)."""
    if resume_dir is not None:
        guard.start(resume_dir, created=False)
        return resume_dir
    if exact_dir is not None:
        created = not exact_dir.exists()  # the guard removes only a folder this command made
        if dist.is_main:
            exact_dir.mkdir(parents=True, exist_ok=True)
        guard.start(exact_dir, created=created)
        return exact_dir
    guard.note_new_folders(recipe.output.dir)
    name = str(unique_run_dir(recipe.output.dir, recipe.output.name)) if dist.is_main else ""
    run_dir = Path(ddp.broadcast_string(name, device))
    guard.start(run_dir, created=True)
    return run_dir


def _prepare(
    recipe: Recipe,
    path: Path,
    resume: ResumeState | None,
    dist: ddp.DistInfo,
    device: torch.device,
    console: TrainConsole,
    step_hook: StepHook | None,
    loggers: Sequence[Logger],
) -> Trainer:
    """Load the data, complete the recipe from it, write the run's header files, build the trainer."""
    bundle = _load_bundle(recipe, dist)
    recipe = _data_defaults(recipe, bundle, dist, console, device, resumed=resume is not None)
    if dist.is_main and resume is None:
        RunDir(path).write_header(recipe, bundle.class_names, bundle.mean, bundle.std, bundle.split_info)
    with report_progress(console):  # decoding the tensor cache shows a bar
        return build_trainer(
            recipe, bundle, path, dist=dist, device=device, console=console,
            resume=resume, step_hook=step_hook, loggers=loggers,
        )  # fmt: skip


def _announce(trainer: Trainer, resumed: bool) -> None:
    """The console's start banner: run dir, model, data, protocol, device, schedule."""
    recipe, bundle = trainer.recipe, trainer.bundle
    trainer.console.start(
        {
            "run dir": trainer.run_dir,
            "model": f"{recipe.model.name} ({trainer.params / 1e6:.2f}M params)",
            "data": f"{recipe.data.source}: {len(bundle.train)} train / {len(bundle.val)} val, "
            f"{bundle.num_classes} classes"
            + (f", {len(bundle.test)} test" if bundle.test is not None else ""),
            "protocol": describe_protocol(bundle, recipe),
            "device": f"{trainer.device} x{trainer.dist.world_size}"
            + (f", autocast {trainer.amp_dtype}" if trainer.amp_dtype else ""),
            "schedule": f"{trainer.total_epochs} epochs x {trainer.steps_per_epoch} steps"
            + (f" (train.time {recipe.train.time:g} min: re-planned)" if recipe.train.time else ""),
            **({"resumed": f"at {trainer.progress.position(trainer.steps_per_epoch)}"} if resumed else {}),
        }
    )


def train(
    recipe: Recipe | None = None,
    *,
    resume_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    log: str | None = None,
    step_hook: StepHook | None = None,
    callbacks: Sequence[Logger] = (),
    run_dir: str | Path | None = None,
) -> Path:
    """Train a recipe (or continue ``resume_dir``) and return the run directory.

    Args:
        recipe: the resolved recipe; ignored when resuming (the run's own recipe is used).
        resume_dir: a run directory holding ``resume.safetensors`` to continue exactly.
        overrides: ``KEY=VALUE`` applied to the saved recipe when resuming (e.g. ``output.log=quiet``).
        log: console mode overriding ``output.log`` (``rich``, ``quiet``, ``jsonl``).
        step_hook: called as ``hook(trainer, epoch, step)`` before each step (tests use it).
        callbacks: extra :class:`~astrocli.engine.loggers.Logger` objects called on every rank (the
            ``output.loggers`` ones are built here, on rank 0 only), e.g. ``astro tune``'s pruner.
        run_dir: write the new run to exactly this directory (created if missing; ``astro cv`` uses
            it) instead of a fresh ``<output.dir>/<output.name>[-N]``.

    Raises AstroError on bad input, TrainingInterrupted after a signal, NonFiniteLoss on a NaN loss.
    """
    resume: ResumeState | None = None
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        resume, recipe = RunDir(resume_dir).load_resume(overrides or [])
    if recipe is None:
        raise AstroError("nothing to train: give --recipe FILE or --resume RUN_DIR")
    exact_dir = Path(run_dir) if run_dir is not None and resume_dir is None else None
    dist = ddp.detect_torchrun()
    device = resolve_device(recipe.train.device, dist.local_rank, option="train.device")
    _check_before_start(recipe, device, resumed=resume is not None)
    # Before DDP starts, so a missing logger extra is one line; warnings go through the console below.
    loggers = [*(build_loggers(recipe, lambda text: console.warn(text)) if dist.is_main else []), *callbacks]
    ddp.init_distributed(dist, device)
    console = TrainConsole(log or recipe.output.log, enabled=dist.is_main)
    if resume is not None and [o for o in overrides or [] if not o.strip().startswith("output.")]:
        console.warn(
            f"resuming with overrides {' '.join(overrides)}: the learning-rate schedule continues as saved "
            "(extra epochs run at train.min_lr)"
        )
    guard = RunGuard(enabled=dist.is_main)  # lock, disk space, no debris from failed starts
    trainer: Trainer | None = None
    try:
        path = _open_run_dir(recipe, guard, dist, device, resume_dir, exact_dir)
        trainer = _prepare(recipe, path, resume, dist, device, console, step_hook, loggers)
        guard.check_space(trainer.model, trainer.recipe)
        _announce(trainer, resumed=resume is not None)
        trainer.fit()
    except BaseException as exc:
        guard.failed(exc)  # removes a new run dir with no checkpoint; a full disk says what is kept
        raise
    finally:
        for source in (trainer.train_batches, trainer.eval_batches) if trainer else ():
            getattr(source, "close", lambda: None)()  # the loader pipeline's kept workers
        console.close()  # no bar left on screen under the error line
        guard.release()
        ddp.shutdown_distributed()
    return path
