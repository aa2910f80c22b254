"""The training loop.

    run_dir = train(load_recipe("recipes/quickstart.yaml"))

Reading order: :func:`train` sets up (device, DDP, seeds, data, model, optimizer, schedule, EMA,
resume), :meth:`Trainer.fit` runs epochs, :meth:`Trainer.train_one_epoch` is the inner loop,
:meth:`Trainer.evaluate` measures, :meth:`Trainer.end_of_epoch` writes the run directory.

Everything the papers used comes from timm (optimizers, schedulers, losses, Mixup, EMA); what is
written by hand is the loop itself and the bookkeeping around it (resume, signals, NaN stop, the run
directory), which timm's own ``train.py`` script does not offer as a library.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from rich.markup import escape

from astrocli.checkpoint import CheckpointMeta, atomic_write_bytes, atomic_write_text, save_checkpoint
from astrocli.engine import distributed as ddp
from astrocli.engine.console import TrainConsole
from astrocli.engine.loggers import Logger, LoggerGroup, build_loggers
from astrocli.engine.run_guard import RunGuard, load_resume_or_explain
from astrocli.engine.state import RESUME_FILE, Progress, save_resume_state
from astrocli.errors import AstroError
from astrocli.models import count_params
from astrocli.notices import SkipLog, skipped_images_line
from astrocli.progress import report_to as report_progress
from astrocli.recipe import Recipe, recipe_from_dict

METRICS_HEADER = [
    "epoch",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_macro_f1",
    "val_balanced_accuracy",
    "lr",
    "img_per_s",
    "seconds",
]
SKIPPED_IMAGES_FILE = "skipped-images.txt"  # images that could not be decoded, one per line, with the reason
LOG_EVERY = 10  # host syncs (loss.item(), NaN check) once per this many steps, not every step

StepHook = Callable[["Trainer", int, int], None]  # (trainer, epoch, step) before each step; for tests


class TrainingInterrupted(AstroError):
    """SIGINT/SIGTERM: the run stopped cleanly after a step and saved everything to resume."""


class NonFiniteLoss(AstroError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# Setup helpers
# ---------------------------------------------------------------------------------------------


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto``: the local CUDA device if there is one, else the CPU (``cuda`` means ``cuda:LOCAL_RANK``)."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AstroError(f"train.device={spec} but no CUDA device is available; use train.device=cpu")
        if spec == "cuda":
            spec = f"cuda:{local_rank}"
    elif spec != "cpu":
        raise AstroError(f"train.device must be auto, cpu, cuda or cuda:N, got '{spec}'")
    return torch.device(spec)


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


def unique_run_dir(output_dir: str, name: str) -> Path:
    """``<output.dir>/<output.name>``, or the first free ``-2``, ``-3``, ... so no run is overwritten."""
    base = Path(output_dir) / name
    candidate, n = base, 1
    while True:
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()  # atomic: two runs starting at once get different directories
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        except OSError as exc:  # read-only, no permission, full: one line naming the key to change
            raise AstroError(
                f"cannot create the run directory {candidate} ({exc.strerror}); "
                "set output.dir to a writable folder"
            ) from None


def attach_skip_log(bundle: Any, path: Path) -> SkipLog:
    """Send the images skipped while reading ``bundle`` (main process and DataLoader workers) to ``path``."""
    log = SkipLog(path)
    for dataset in (bundle.train, bundle.val):
        if hasattr(dataset, "skip_log"):  # image-file datasets; array datasets have nothing to skip
            dataset.skip_log = log
    return log


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """timm's optimizer factory (no weight decay on biases and norms); fused AdamW on CUDA.

    ``train.layer_decay`` is timm's layer-wise decay; ``train.head_lr_mult`` scales the classifier
    (astrocli/finetune.py builds those groups; timm's schedulers apply their ``lr_scale``).
    """
    from timm.optim import create_optimizer_v2

    from astrocli.finetune import check_finetune_config, param_groups

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
) -> tuple[Any, int]:
    """timm's scheduler, stepped per optimizer update (smooth warmup even for short runs).

    Returns the scheduler and the total number of epochs: ``train.epochs``, with warmup and
    cooldown counted inside it (scaled down, with a warning through ``warn``, when they would
    take more than half the run; astrocli/defaults.py).
    """
    from timm.scheduler import create_scheduler_v2

    from astrocli.defaults import fit_warmup_cooldown

    cfg = recipe.train
    fit = fit_warmup_cooldown(cfg.epochs, cfg.warmup_epochs, cfg.cooldown_epochs, updates_per_epoch)
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
    return scheduler, cfg.epochs


def build_train_loss(recipe: Recipe, mixup_on: bool, class_weight: torch.Tensor | None = None) -> nn.Module:
    """Soft-target CE under Mixup/CutMix (smoothing is in the targets), else label-smoothed or plain CE.

    With ``class_weight`` (``train.class_weights: balanced``), torch's CE with per-class weights,
    which takes hard labels (with its own smoothing) and soft Mixup targets alike.
    """
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if class_weight is not None:
        smoothing = 0.0 if mixup_on else recipe.augment.label_smoothing
        return nn.CrossEntropyLoss(weight=class_weight, label_smoothing=smoothing)
    if mixup_on:
        return SoftTargetCrossEntropy()
    if recipe.augment.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.augment.label_smoothing)
    return nn.CrossEntropyLoss()


def build_model(
    recipe: Recipe, num_classes: int, *, load_weights: bool = True, log: Callable[[str], None] | None = None
) -> nn.Module:
    """The zoo model for ``recipe.model``, started from ``model.pretrained`` weights when
    ``load_weights`` (not when resuming); ``log`` gets the one-line adaptation report."""
    from astrocli.models import create_model
    from astrocli.pretrained import load_pretrained

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


# ---------------------------------------------------------------------------------------------
# Run-directory files
# ---------------------------------------------------------------------------------------------


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``metrics.csv`` with the exact header of docs/architecture.md, rewritten atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_HEADER, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRICS_HEADER})
    atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.csv`` (numbers parsed; blanks are None)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items()}
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def plot_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    """``curves.png``: losses and top-1 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    val = [(r["epoch"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    acc = [(r["epoch"], r["val_top1"], r["val_top5"]) for r in rows if r.get("val_top1") is not None]
    if acc:
        ax_acc.plot([a[0] for a in acc], [a[1] for a in acc], label="top-1")
        ax_acc.plot([a[0] for a in acc], [a[2] for a in acc], label="top-5")
        ax_acc.legend()
    ax_acc.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """One training run; build it with :func:`train`."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        dist: ddp.DistInfo,
        device: torch.device,
        console: TrainConsole,
        step_hook: StepHook | None = None,
        loggers: Sequence[Logger] = (),
    ) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.dist = dist
        self.device = device
        self.console = console
        self.step_hook = step_hook
        self.loggers = LoggerGroup(loggers)  # TensorBoard/MLflow/W&B and callbacks (a tuner's pruner)
        self.stop_signal: int | None = None
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []
        self._first_step_announced = False

    # -- setup ------------------------------------------------------------------------------------

    def setup(self, bundle: Any, resume: Any = None) -> None:
        """Build batches, model, optimizer, schedule, EMA and AMP; load ``resume`` state if given."""
        from timm.utils import ModelEmaV3

        from astrocli.data.pipeline import build_eval_batches, build_train_batches

        r, dist = self.recipe, self.dist
        self.bundle = bundle
        self.skip_log = attach_skip_log(bundle, self.run_dir / SKIPPED_IMAGES_FILE)
        self.train_batches = build_train_batches(bundle, r, self.device, dist.rank, dist.world_size)
        self.eval_batches = build_eval_batches(
            bundle.val, r, self.device, dist.rank, dist.world_size, mean=bundle.mean, std=bundle.std
        )
        if len(self.train_batches) == 0:
            raise AstroError("the training set gives no batch; lower train.batch_size or add images")

        seed_everything(r.train.seed, r.train.deterministic)  # same initial weights on every rank
        self.model = build_model(
            r,
            bundle.num_classes,
            load_weights=resume is None,
            log=lambda line: self.console.info(escape(line)),
        ).to(self.device)
        if r.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = count_params(self.model, trainable_only=True)
        from astrocli.defaults import attention_warning

        too_few = attention_warning(self.model, r.data.img_size, r.model.name)
        if too_few:
            self.console.warn(too_few)
        self.optimizer = build_optimizer(self.model, r, self.device)
        steps = len(self.train_batches)
        if r.train.max_steps_per_epoch:
            steps = min(steps, r.train.max_steps_per_epoch)
        self.steps_per_epoch = steps
        self.updates_per_epoch = math.ceil(steps / r.train.accum_steps)
        self.scheduler, self.total_epochs = build_scheduler(
            self.optimizer, r, self.updates_per_epoch, warn=self.console.warn
        )
        self.ema = ModelEmaV3(self.model, decay=r.train.ema_decay, use_warmup=True) if r.train.ema else None
        self.amp_dtype = autocast_dtype(r.train.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        weight = None
        if r.train.class_weights == "balanced":
            from astrocli.data.balance import class_weights

            weight = class_weights(bundle.train.targets, bundle.num_classes).to(self.device)
        mixup_on = self.train_batches.mixup is not None
        self.train_loss_fn = build_train_loss(r, mixup_on, weight)
        self.eval_loss_fn = nn.CrossEntropyLoss(reduction="sum")

        if resume is not None:
            resume.apply(
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                ema=self.ema.module if self.ema else None,
                scaler=self.scaler,
            )
            self.progress = resume.progress
            self.history = [
                row
                for row in read_metrics_csv(self.run_dir / "metrics.csv")
                if row["epoch"] <= self.progress.epoch
            ]
        else:
            # Data order and augmentation differ per rank; initial weights (seeded above) do not.
            seed_everything(r.train.seed + dist.rank, r.train.deterministic)

        self.apply_freeze(self.progress.epoch)
        self.train_model = self._wrap_model(self.model)
        self.report_skipped_images()  # those the tensor cache could not decode

    def report_skipped_images(self) -> None:
        """One console line for the images skipped since the last report (any process, any split)."""
        new = self.skip_log.new_paths()
        if new:
            self.console.warn(f"{skipped_images_line(new)} (all listed in {self.skip_log.path})")

    def apply_freeze(self, epoch: int) -> None:
        """``train.freeze_epochs``: classifier only before that epoch, everything from it (a function of
        the epoch, so resume is exact); DDP/compile wrap again when the trainable set changes."""
        from astrocli.finetune import frozen_at, set_frozen

        frozen = frozen_at(epoch, self.recipe.train.freeze_epochs)
        if not set_frozen(self.model, frozen):
            return
        what = "the classifier only" if frozen else "every layer"
        self.console.info(f"epoch {epoch + 1}: {what} trains from now (train.freeze_epochs)")
        if hasattr(self, "train_model"):  # setup wraps after this; later changes wrap again
            self.train_model = self._wrap_model(self.model)  # DDP registers only trainable parameters

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        """DDP for several processes, then ``torch.compile`` when asked."""
        wrapped: nn.Module = model
        if self.dist.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if self.recipe.train.compile:
            try:
                wrapped = torch.compile(wrapped)
            except Exception as exc:  # compile support varies by platform and torch build
                self.console.warn(
                    f"torch.compile is unavailable ({type(exc).__name__}: {exc}); training eagerly"
                )
        return wrapped

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train from ``progress`` to the last epoch; returns the summary written to ``summary.json``."""
        start = time.perf_counter()
        previous = self.progress.extra.get("total_seconds", 0.0)
        with self._signal_handlers(), self.loggers.session(self.recipe, self.run_dir):
            for epoch in range(self.progress.epoch, self.total_epochs):
                self.apply_freeze(epoch)
                row = self.train_one_epoch(epoch)
                if self.stop_signal is not None and self.progress.step_in_epoch:
                    self._stop_after_signal(epoch)  # mid-epoch: save where we are
                self.end_of_epoch(epoch, row, previous + time.perf_counter() - start)
                self.loggers.log_epoch(epoch + 1, row)  # a pruning callback may raise here
                if self.stop_signal is not None:
                    self._stop_after_signal(epoch + 1)  # the epoch had just finished: save it whole
                if epoch + 1 < self.total_epochs and self.should_stop_early():
                    self._stop_early(epoch + 1)
                    break
            self.calibration = self._calibrate()  # before finish(): summary.json reports it
            summary = self.finish(previous + time.perf_counter() - start)
            self.loggers.complete(self.run_dir, summary)
        return summary

    def _calibrate(self) -> dict[str, float] | None:
        """Temperature scaling of ``best``/``last`` on the validation split (astrocli/calibration.py)."""
        if not self.recipe.train.calibrate:
            return None
        from astrocli.calibration import calibrate_after_training

        result = calibrate_after_training(self)
        if result:
            self.console.info(
                f"calibration: temperature {result['temperature']:.3f}, validation ECE "
                f"{result['ece']:.4f} -> {result['ece_calibrated']:.4f} (stored in the checkpoints)"
            )
        return result

    def _stop_early(self, epoch: int) -> None:
        """``train.patience`` ran out: save ``last`` (if this epoch did not) and say so."""
        self.progress.extra["stopped_early"] = epoch
        if self.progress.extra.get("saved_epoch") != epoch:
            self._save_last_and_resume(epoch, self.history[-1] if self.history else {})
        self.console.warn(
            f"early stop after epoch {epoch}: {self.recipe.train.patience} evaluations without a better "
            f"val {self.recipe.train.select_metric} (best: epoch {self.progress.best_epoch})"
        )

    def _forward_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            logits = self.train_model(images)
        return self.train_loss_fn(logits.float(), targets)

    def _first_step_with_compile_fallback(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The first forward compiles; if compilation fails, say why and continue eagerly."""
        try:
            return self._forward_loss(images, targets)
        except Exception as exc:
            if not self.recipe.train.compile or self.train_model is self.model:
                raise
            self.console.warn(
                f"torch.compile failed on the first step ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); training eagerly"
            )
            self.recipe.train.compile = False
            self.train_model = self._wrap_model(self.model)
            return self._forward_loss(images, targets)

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training batches (capped by ``train.max_steps_per_epoch``)."""
        accum = self.recipe.train.accum_steps
        skip = self.progress.step_in_epoch if epoch == self.progress.epoch else 0
        self.train_model.train()
        batches = self._epoch_batches(epoch, skip)
        self.console.epoch_start(epoch + 1, self.total_epochs, self.steps_per_epoch, completed=skip)

        loss_sum = torch.zeros((), device=self.device)  # on the device: no host sync per step
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        images_seen, step, start = 0, skip, time.perf_counter()
        # A resumed epoch's loss includes the steps run before the stop (saved summed over ranks).
        carried = torch.tensor(
            [self.progress.epoch_loss_sum, float(self.progress.epoch_images)] if skip else [0.0, 0.0],
            device=self.device,
        )
        stopped_mid_epoch = False
        while step < self.steps_per_epoch:
            try:
                images, targets = next(batches)
            except StopIteration:
                break
            if self.step_hook is not None:
                self.step_hook(self, epoch, step)
            last_micro = (step + 1) % accum == 0 or step + 1 == self.steps_per_epoch
            sync = (
                contextlib.nullcontext()
                if last_micro or not self.dist.is_distributed
                else self.train_model.no_sync()
            )
            with sync:
                if epoch == self.progress.epoch and step == skip:
                    loss = self._first_step_with_compile_fallback(images, targets)
                else:
                    loss = self._forward_loss(images, targets)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach() * images.shape[0]
            nonfinite |= ~torch.isfinite(loss.detach())
            images_seen += images.shape[0]
            step += 1
            if last_micro:
                self._optimizer_step()
            if step % LOG_EVERY == 0 or step == self.steps_per_epoch:
                self._check_finite(nonfinite, epoch, step)
                elapsed = time.perf_counter() - start
                running_loss, lr = loss_sum.item() / max(images_seen, 1), self.current_lr()
                self.console.step(
                    step, running_loss, lr, images_seen * self.dist.world_size / max(elapsed, 1e-9)
                )
                if self.loggers:  # the loss is already on the host here: no extra sync
                    self.loggers.log_step(self.progress.global_step, {"loss": running_loss, "lr": lr})
            if last_micro and ddp.any_process(self.stop_signal is not None, self.device):
                self.stop_signal = self.stop_signal or signal.SIGTERM  # another rank was signalled
                if step < self.steps_per_epoch:
                    self.progress.step_in_epoch = step
                    stopped_mid_epoch = True
                break
        self._check_finite(nonfinite, epoch, step)
        seconds = time.perf_counter() - start
        totals = ddp.all_reduce_sum(
            torch.stack([loss_sum.float(), torch.tensor(float(images_seen), device=self.device)])
        )
        whole = totals + carried
        sums = whole.tolist() if stopped_mid_epoch else [0.0, 0.0]
        self.progress.epoch_loss_sum, self.progress.epoch_images = sums[0], int(sums[1])
        return {
            "epoch": epoch + 1,
            "train_loss": (whole[0] / whole[1].clamp(min=1)).item(),
            "lr": self.current_lr(),
            "img_per_s": totals[1].item() / max(seconds, 1e-9),
            "train_seconds": seconds,
        }

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches; resuming mid-epoch starts after the ``skip`` batches already trained."""
        self.train_batches.set_epoch(epoch, skip_batches=skip)
        return iter(self.train_batches)

    def _optimizer_step(self) -> None:
        """Unscale, clip, step, zero, advance the schedule and the EMA."""
        clip = self.recipe.train.grad_clip
        if clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.global_step += 1
        self.scheduler.step_update(num_updates=self.progress.global_step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.progress.global_step)
        if not self._first_step_announced:
            self._announce_first_step()

    def _announce_first_step(self) -> None:
        """Tell the console once, when the first optimizer step of this process has run on the device."""
        self._first_step_announced = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per run: the step has really finished
        self.console.first_step(self.progress.global_step)

    def _check_finite(self, nonfinite: torch.Tensor, epoch: int, step: int) -> None:
        if not ddp.any_process(bool(nonfinite.item()), self.device):
            return
        last = self.run_dir / "last.safetensors"
        kept = (
            f"the last good checkpoint is {last} (epoch {self.progress.extra.get('saved_epoch', 0)})"
            if last.exists()
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLoss(
            f"the loss became NaN/inf in epoch {epoch + 1} (by step {step}); training stopped and {kept}. "
            "Lower train.lr, set train.grad_clip, or check the data",
            exit_code=1,
        )

    def current_lr(self) -> float:
        """The schedule's learning rate now (the first group's, before its layer-decay/head ``lr_scale``)."""
        group = self.optimizer.param_groups[0]
        return float(group["lr"]) / group.get("lr_scale", 1.0)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any = None, prefix: str = "val_") -> dict[str, float]:
        """Loss, top-1, top-5, macro-F1 and balanced accuracy (percent) over the whole held-out set
        (``batches``, default the validation batches), summed over ranks; keys start with ``prefix``.

        The confusion matrix is accumulated on the device (one bincount per batch, no host sync) and
        summed across ranks like the other totals.
        """
        from astrocli.metrics import balanced_accuracy, macro_f1

        model.eval()
        num_classes = self.bundle.num_classes
        totals = torch.zeros(4, device=self.device)  # loss sum, top-1 hits, top-5 hits, images
        confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=self.device)
        batches = self.eval_batches if batches is None else batches
        label = "testing" if prefix == "test_" else "validating" if model is self.model else "validating EMA"
        self.console.task_begin(label, len(batches))
        for done, (images, targets) in enumerate(batches, 1):
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                logits = model(images).float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top.eq(targets[:, None])
            confusion += torch.bincount(
                targets * num_classes + top[:, 0], minlength=num_classes * num_classes
            ).double()
            totals += torch.stack(
                [
                    self.eval_loss_fn(logits, targets),
                    hits[:, 0].sum().float(),
                    hits.any(dim=1).sum().float(),
                    torch.tensor(float(len(targets)), device=self.device),
                ]
            )
            self.console.task_update(done)
        self.console.task_end()
        totals = ddp.all_reduce_sum(totals)
        matrix = ddp.all_reduce_sum(confusion).view(num_classes, num_classes).cpu().numpy()
        n = totals[3].clamp(min=1)
        loss, top1, top5 = (totals[0] / n).item(), (100 * totals[1] / n).item(), (100 * totals[2] / n).item()
        metrics = {
            "loss": loss,
            "top1": top1,
            "top5": top5,
            "macro_f1": macro_f1(matrix),
            "balanced_accuracy": balanced_accuracy(matrix),
        }
        return {f"{prefix}{k}": v for k, v in metrics.items()}

    def selection_score(self, metrics: dict[str, Any]) -> float:
        """The number ``train.select_metric`` maximises (the negated loss: lower loss is better)."""
        name = self.recipe.train.select_metric
        value = float(metrics[f"val_{name}"])
        return -value if name == "loss" else value

    # -- end of epoch: evaluate, record, checkpoint -----------------------------------------------

    def end_of_epoch(self, epoch: int, row: dict[str, Any], total_seconds: float) -> None:
        """Evaluate (model and EMA), append ``metrics.csv``, write ``best``/``last``/resume state."""
        r = self.recipe
        last_epoch = epoch + 1 == self.total_epochs
        eval_start = time.perf_counter()
        is_best = False
        if (epoch + 1) % r.train.eval_every == 0 or last_epoch:
            row.update(self.evaluate(self.model))
            candidates = [("model", self.model, row)]
            if self.ema is not None:
                ema_metrics = self.evaluate(self.ema.module)
                row["ema_top1"] = ema_metrics["val_top1"]
                candidates.append(("ema", self.ema.module, ema_metrics))
            weights, module, metrics = max(candidates, key=lambda c: self.selection_score(c[2]))
            is_best = self._update_best(metrics, weights, epoch + 1)
            if is_best:
                self._save_model("best.safetensors", module, weights, epoch + 1, metrics)
        row["seconds"] = row.pop("train_seconds") + time.perf_counter() - eval_start
        self.report_skipped_images()
        self.history.append(row)
        self.progress.epoch, self.progress.step_in_epoch = epoch + 1, 0
        self.progress.extra["total_seconds"] = total_seconds + time.perf_counter() - eval_start
        if self.dist.is_main:
            write_metrics_csv(self.run_dir / "metrics.csv", self.history)
            if (epoch + 1) % r.output.save_every == 0 or last_epoch:
                self._save_last_and_resume(epoch + 1, row)
        self.console.epoch_end(row, is_best)

    def _update_best(self, metrics: dict[str, Any], weights: str, epoch: int) -> bool:
        """Record ``metrics`` as the best so far when they beat it on ``train.select_metric``; count
        evaluations without improvement for ``train.patience``. Only validation metrics come here."""
        extra = self.progress.extra
        score = self.selection_score(metrics)
        best = extra.get("best_score")
        if best is None and self.progress.best_epoch and self.recipe.train.select_metric == "top1":
            best = self.progress.best_top1  # a run resumed from before select_metric existed
        if best is not None and score <= best:
            extra["evals_without_improvement"] = extra.get("evals_without_improvement", 0) + 1
            return False
        extra.update(best_score=score, evals_without_improvement=0, best_weights=weights)
        extra["best_metrics"] = {
            k.removeprefix("val_"): v for k, v in metrics.items() if k.startswith("val_")
        }
        self.progress.best_top1 = metrics["val_top1"]
        self.progress.best_epoch = epoch
        return True

    def should_stop_early(self) -> bool:
        """``train.patience`` evaluations in a row without improvement (0 = never)."""
        patience = self.recipe.train.patience
        return patience > 0 and self.progress.extra.get("evals_without_improvement", 0) >= patience

    def _checkpoint_meta(self, weights: str, epoch: int, metrics: dict[str, Any]) -> CheckpointMeta:
        d = self.recipe.data
        return CheckpointMeta(
            model=self.recipe.model.name,
            num_classes=self.bundle.num_classes,
            img_size=d.img_size,
            in_chans=d.in_chans,
            class_names=list(self.bundle.class_names),
            mean=list(self.bundle.mean),
            std=list(self.bundle.std),
            crop_pct=d.crop_pct,
            interpolation=d.interpolation,
            recipe=self.recipe.to_dict(),
            weights=weights,
            epoch=epoch,
            metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        )

    def _save_model(
        self, filename: str, module: nn.Module, weights: str, epoch: int, metrics: dict[str, Any]
    ) -> None:
        if self.dist.is_main:
            save_checkpoint(
                self.run_dir / filename, module.state_dict(), self._checkpoint_meta(weights, epoch, metrics)
            )

    def _save_last_and_resume(self, epoch: int, metrics: dict[str, Any]) -> None:
        """The resume state, then ``last.safetensors`` (both atomic). Resume first: if the disk fills
        up, the run can still continue from the newest state once space is freed."""
        self.progress.extra["saved_epoch"] = epoch
        if self.dist.is_main:
            save_resume_state(
                self.run_dir / RESUME_FILE,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                progress=self.progress,
                recipe=self.recipe.to_dict(),
                ema=self.ema.module if self.ema else None,
                scaler=self.scaler,
            )
        self._save_model("last.safetensors", self.model, "model", epoch, metrics)

    def _stop_after_signal(self, epoch: int) -> None:
        """After SIGINT/SIGTERM: save ``last`` + resume state at ``epoch`` epochs (+ ``step_in_epoch``
        steps) and stop with the command that continues the run."""
        self.progress.epoch = epoch
        self._save_last_and_resume(epoch, {"step_in_epoch": self.progress.step_in_epoch})
        name = signal.Signals(self.stop_signal).name
        where = self.progress.position(self.steps_per_epoch)
        raise TrainingInterrupted(
            f"{name}: stopped at {where} and saved the run; "
            f"continue it with: astro train --resume {self.run_dir}",
            exit_code=128 + int(self.stop_signal),
        )

    @contextlib.contextmanager
    def _signal_handlers(self):
        """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT stops at once."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum
            self.console.warn(f"{signal.Signals(signum).name} received: finishing this step, then saving")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def score_test(self) -> dict[str, float]:
        """Score ``best.safetensors`` once on the test split (``test_top1``, ...); {} when there is none.

        Runs after training, on every rank (the test batches are sharded like the validation ones);
        nothing here feeds back into selection.
        """
        best_path = self.run_dir / "best.safetensors"
        if getattr(self.bundle, "test", None) is None:
            return {}
        from astrocli.checkpoint import load_checkpoint
        from astrocli.data.pipeline import build_eval_batches

        ddp.barrier()  # rank 0 wrote best.safetensors
        if not best_path.is_file():
            return {}
        state_dict, _ = load_checkpoint(best_path)
        model = copy.deepcopy(self.model)
        model.load_state_dict(state_dict)
        b, r = self.bundle, self.recipe
        batches = build_eval_batches(
            b.test, r, self.device, self.dist.rank, self.dist.world_size, mean=b.mean, std=b.std
        )
        return self.evaluate(model, batches, prefix="test_")

    def finish(self, total_seconds: float) -> dict[str, Any]:
        """Score the selected checkpoint on the test split, write ``summary.json`` and ``curves.png``."""
        evaluated = [r for r in self.history if r.get("val_top1") is not None]
        speeds = [r["img_per_s"] for r in self.history if r.get("img_per_s")]
        extra = self.progress.extra
        summary = {
            "best_top1": self.progress.best_top1,
            "best_epoch": self.progress.best_epoch,
            "best_weights": extra.get("best_weights", "model"),
            "selected_on": self.bundle.selected_on,
            "select_metric": self.recipe.train.select_metric,
            "best_metrics": extra.get("best_metrics", {}),
            **self.score_test(),
            "stopped_early": extra.get("stopped_early"),
            "final_top1": evaluated[-1]["val_top1"] if evaluated else None,
            "final_top5": evaluated[-1]["val_top5"] if evaluated else None,
            "epochs": self.progress.epoch,
            "params": self.params,
            "model": self.recipe.model.name,
            "data_source": self.recipe.data.source,
            "num_classes": self.bundle.num_classes,
            "total_seconds": total_seconds,
            "mean_img_per_s": sum(speeds) / len(speeds) if speeds else None,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "run_dir": str(self.run_dir),
            **(getattr(self, "calibration", None) or {}),
        }
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            if self.recipe.output.plots and self.history:
                plot_curves(self.run_dir / "curves.png", self.history)
        self.console.finish(summary)
        return summary


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _load_bundle(recipe: Recipe, dist: ddp.DistInfo) -> Any:
    """Build the datasets; under DDP rank 0 first (it may download), then the others."""
    from astrocli.data import build_datasets

    if dist.is_main:
        bundle = build_datasets(recipe.data)
    ddp.barrier()
    if not dist.is_main:
        bundle = build_datasets(recipe.data)
    return bundle


def _data_defaults(recipe: Recipe, bundle: Any, dist: ddp.DistInfo, console: TrainConsole) -> Recipe:
    """Fill the keys the recipe left out from the data (``augment.preset``; astrocli/defaults.py)
    and print what was chosen. A resumed run's recipe is complete already: nothing changes."""
    from rich.markup import escape

    from astrocli.defaults import data_facts, describe, resolve_defaults

    resolved, choices = resolve_defaults(recipe, data_facts(bundle, recipe, dist.world_size))
    for line in describe(choices, resolved):
        console.info(escape(line))
    return resolved


def describe_protocol(bundle: Any, recipe: Recipe) -> str:
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


def _write_run_header(run_dir: Path, recipe: Recipe, bundle: Any) -> None:
    atomic_write_text(run_dir / "recipe.yaml", recipe.to_yaml())
    split = {
        "class_names": list(bundle.class_names),
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        **bundle.split_info,
    }
    atomic_write_text(run_dir / "split.json", json.dumps(split, indent=2, default=str))


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

    Raises:
        AstroError: bad input; TrainingInterrupted after a signal; NonFiniteLoss on a NaN loss.
    """
    resume = None
    exact_dir = Path(run_dir) if run_dir is not None and resume_dir is None else None
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        state_path = run_dir / RESUME_FILE
        if not state_path.is_file():
            raise AstroError(
                f"'{run_dir}' has no {RESUME_FILE}; pass a run directory written by `astro train`"
            )
        resume = load_resume_or_explain(run_dir)  # a damaged file: says how to start from last.safetensors
        from astrocli.recipe import apply_override

        raw = resume.recipe
        for item in overrides or []:
            apply_override(raw, item)
        recipe = recipe_from_dict(raw)
    if recipe is None:
        raise AstroError("nothing to train: give --recipe FILE or --resume RUN_DIR")

    dist = ddp.detect_torchrun()
    device = resolve_device(recipe.train.device, dist.local_rank)
    autocast_dtype(recipe.train.amp, device)  # reject fp16 on the CPU before creating anything
    if resume is None:  # fine-tuning: bad keys and an unreachable Hub fail before anything is created
        from astrocli.finetune import check_finetune_config
        from astrocli.pretrained import apply_pretrained_stats

        check_finetune_config(recipe.train)
        apply_pretrained_stats(recipe)  # normalise as the pretrained weights were, unless data.mean/std set
    # Before DDP starts, so a missing logger extra is one line; warnings go through the console below.
    loggers = [*(build_loggers(recipe, lambda text: console.warn(text)) if dist.is_main else []), *callbacks]
    ddp.init_distributed(dist, device)
    console = TrainConsole(log or recipe.output.log, enabled=dist.is_main)
    if resume is not None and overrides:
        console.warn(
            f"resuming with overrides {' '.join(overrides)}: the learning-rate schedule continues as saved "
            "(extra epochs run at train.min_lr)"
        )
    guard = RunGuard(enabled=dist.is_main)  # lock, disk space, no debris from failed starts
    try:
        created = resume is None
        if resume is None and exact_dir is not None:
            created = not exact_dir.exists()  # the guard removes only a folder this command made
            if dist.is_main:
                exact_dir.mkdir(parents=True, exist_ok=True)
            run_dir = exact_dir
        elif resume is None:
            guard.note_new_folders(recipe.output.dir)
            name = str(unique_run_dir(recipe.output.dir, recipe.output.name)) if dist.is_main else ""
            run_dir = Path(ddp.broadcast_string(name, device))
        guard.start(run_dir, created=created)
        bundle = _load_bundle(recipe, dist)
        recipe = _data_defaults(recipe, bundle, dist, console)
        if dist.is_main and resume is None:
            _write_run_header(run_dir, recipe, bundle)
        trainer = Trainer(recipe, run_dir, dist, device, console, step_hook, loggers)
        with report_progress(console):  # decoding the tensor cache shows a bar
            trainer.setup(bundle, resume)
        guard.check_space(trainer.model, recipe)
        console.start(
            {
                "run dir": run_dir,
                "model": f"{recipe.model.name} ({trainer.params / 1e6:.2f}M params)",
                "data": f"{recipe.data.source}: {len(bundle.train)} train / {len(bundle.val)} val, "
                f"{bundle.num_classes} classes"
                + (f", {len(bundle.test)} test" if bundle.test is not None else ""),
                "protocol": describe_protocol(bundle, recipe),
                "device": f"{device} x{dist.world_size}"
                + (f", autocast {trainer.amp_dtype}" if trainer.amp_dtype else ""),
                "schedule": f"{trainer.total_epochs} epochs x {trainer.steps_per_epoch} steps",
                **({"resumed": f"at {trainer.progress.position(trainer.steps_per_epoch)}"} if resume else {}),
            }
        )
        trainer.fit()
    except BaseException as exc:
        guard.failed(exc)  # removes a new run dir with no checkpoint; a full disk says what is kept
        raise
    finally:
        console.close()  # no bar left on screen under the error line
        guard.release()
        ddp.shutdown_distributed()
    return run_dir
