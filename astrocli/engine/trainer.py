"""The training loop: :class:`Trainer`.

Reading order: :func:`~astrocli.engine.launch.train` opens the run directory and loads the data,
:func:`~astrocli.engine.launch.build_trainer` builds every part (astrocli/engine/build.py) into a
whole :class:`Trainer` (both in astrocli/engine/launch.py), :meth:`Trainer.fit` runs the
epochs, :meth:`Trainer.train_one_epoch` is the inner loop, :meth:`Trainer.evaluate` measures and
:meth:`Trainer.end_of_epoch` records (the files through :class:`~astrocli.engine.run_dir.RunDir`).

What is written by hand is the loop itself and the bookkeeping around it (resume, signals, NaN stop,
the run directory), which timm's own ``train.py`` script does not offer as a library.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from astrocli.checkpoint import CheckpointMeta, load_checkpoint
from astrocli.data.pipeline import build_eval_batches
from astrocli.engine import distributed as ddp
from astrocli.engine.budget import TimeBudget
from astrocli.engine.build import rebuild_scheduler
from astrocli.engine.calibrate import KeptLogits, calibrate_after_training, calibration_line
from astrocli.engine.compiling import failure_line, try_compile, wants_compile, warm_up
from astrocli.engine.console import TrainConsole
from astrocli.engine.finetune import frozen_at, set_frozen
from astrocli.engine.loggers import LoggerGroup
from astrocli.engine.run_dir import RunDir
from astrocli.engine.state import EpochMeter, Progress, save_resume_state
from astrocli.errors import AstroError
from astrocli.metrics import balanced_accuracy, macro_f1
from astrocli.notices import SkipLog, skipped_images_line
from astrocli.recipe import Recipe

if TYPE_CHECKING:
    from timm.scheduler.scheduler import Scheduler
    from timm.utils import ModelEmaV3

    from astrocli.data.batches import BatchSource
    from astrocli.data.sources import DatasetBundle

LOG_EVERY = 10  # host syncs (loss.item(), NaN check) once per this many steps, not every step

StepHook = Callable[["Trainer", int, int], None]  # (trainer, epoch, step) before each step; for tests


class TrainingInterrupted(AstroError):
    """SIGINT/SIGTERM: the run stopped cleanly after a step and saved everything to resume."""


class NonFiniteLoss(AstroError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Trainer:
    """One training run, whole when constructed; build it with :func:`build_trainer`."""

    recipe: Recipe
    files: RunDir  # the run directory: every file of the run is written through it
    dist: ddp.DistInfo
    device: torch.device
    console: TrainConsole
    bundle: DatasetBundle
    train_batches: BatchSource
    eval_batches: BatchSource
    model: nn.Module  # the raw model (checkpoints, EMA, evaluation); train_model wraps it
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler  # timm's, stepped per optimizer update
    ema: ModelEmaV3 | None
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # autocast dtype (None: full precision)
    train_loss_fn: nn.Module
    eval_loss_fn: nn.Module  # summed over the batch
    skip_log: SkipLog
    steps_per_epoch: int
    total_epochs: int
    params: int  # trainable parameters
    progress: Progress
    history: list[dict[str, Any]]  # the metrics.csv rows so far
    loggers: LoggerGroup  # TensorBoard/MLflow/W&B and callbacks (a tuner's pruner)
    step_hook: StepHook | None = None
    # Set while running:
    train_model: nn.Module = field(init=False)  # DDP and/or torch.compile around ``model``
    compiled: bool | None = None  # train.compile: whether compiling worked (None: not asked)
    compile_seconds: float | None = None  # the compiling warm-up (forward and backward graphs)
    budget: TimeBudget | None = None  # train.time: plans the epochs (astrocli/engine/budget.py)
    stop_signal: int | None = None  # SIGINT/SIGTERM received: stop after this step
    calibration: dict[str, Any] | None = None
    first_step_announced: bool = False
    val_logits: KeptLogits = field(default_factory=KeptLogits)  # for calibration after training

    def __post_init__(self) -> None:
        self._set_frozen(self.progress.epoch)
        self.train_model = self._wrap_model()
        self.report_skipped_images()  # those the tensor cache could not decode

    @property
    def run_dir(self) -> Path:
        return self.files.path

    def report_skipped_images(self) -> None:
        """One console line for the images skipped since the last report (any process, any split)."""
        new = self.skip_log.new_paths()
        if new:
            self.console.warn(f"{skipped_images_line(new)} (all listed in {self.skip_log.path})")

    # -- the model that trains: frozen layers, DDP, torch.compile ---------------------------------

    def _set_frozen(self, epoch: int) -> bool:
        """``train.freeze_epochs``: classifier only before that epoch, everything from it (a function of
        the epoch, so resume is exact). True when the trainable set changed."""
        frozen = frozen_at(epoch, self.recipe.train.freeze_epochs)
        if not set_frozen(self.model, frozen):
            return False
        what = "the classifier only" if frozen else "every layer"
        self.console.info(f"epoch {epoch + 1}: {what} trains from now (train.freeze_epochs)")
        return True

    def apply_freeze(self, epoch: int) -> None:
        """Freeze or unfreeze for ``epoch``; DDP/compile wrap again when the trainable set changes
        (DDP registers only trainable parameters)."""
        if self._set_frozen(epoch):
            self.train_model = self._wrap_model()
            self.warm_up_compile()

    def _wrap_model(self) -> nn.Module:
        """DDP for several processes, then ``torch.compile`` when asked (and not found failing)."""
        wrapped: nn.Module = self.model
        if self.dist.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        setting, name = self.recipe.train.compile, self.recipe.model.name
        if self.compiled is False or not wants_compile(setting, self.device.type, name):
            return wrapped
        module, self.compiled = try_compile(wrapped, self.console.warn)
        return module

    def warm_up_compile(self) -> None:
        """Compile now (:func:`~astrocli.engine.compiling.warm_up`), so that a failing compile falls back
        to eager here with one warning; ``compiled`` and ``compile_seconds`` record what happened."""
        if not self.compiled:
            return
        no_sync = self.train_model.no_sync() if self.dist.is_distributed else contextlib.nullcontext()
        seconds, error = warm_up(
            self.train_model, self.model, self.recipe, self.device, self._autocast(), no_sync
        )
        self.compile_seconds = (self.compile_seconds or 0.0) + seconds
        if error is not None:
            self.console.warn(failure_line(error))
            self.compiled = False
            self.train_model = self._wrap_model()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train from ``progress`` to the last epoch; returns the summary written to ``summary.json``."""
        start, previous = time.perf_counter(), self.progress.total_seconds
        self.budget = TimeBudget.start(self.recipe.train, self.progress.budget_spent_s, self.console.info)
        self.warm_up_compile()
        if self.budget is not None:
            self.budget.mark()  # the compile counts against the budget, not as an epoch's time
        with self._signal_handlers(), self.loggers.session(self.recipe, self.run_dir):
            epoch = self.progress.epoch
            while epoch < self.total_epochs:  # a train.time plan moves the end
                self.apply_freeze(epoch)
                row = self.train_one_epoch(epoch)
                if self.stop_signal is not None and self.progress.step_in_epoch:
                    self._stop_after_signal(epoch)  # mid-epoch: save where we are
                self.replan(epoch + 1)  # before evaluating: the epoch that ends the budget is the last
                self.end_of_epoch(epoch, row, previous + time.perf_counter() - start)
                self.loggers.log_epoch(epoch + 1, row)  # a pruning callback may raise here
                if self.stop_signal is not None:
                    self._stop_after_signal(epoch + 1)  # the epoch had just finished: save it whole
                if epoch + 1 < self.total_epochs and self.should_stop_early():
                    self._stop_early(epoch + 1)
                    break
                epoch += 1
            self.calibration = self._calibrate()  # before finish(): summary.json reports it
            summary = self.finish(previous + time.perf_counter() - start)
            self.loggers.complete(self.run_dir, summary)
        return summary

    def replan(self, done: int) -> None:
        """``train.time``: the epochs that fit the budget (rank 0's plan on every rank), their schedule."""
        if self.budget is None:
            return
        total = int(ddp.broadcast_string(str(self.budget.plan(done, self.total_epochs)), self.device))
        self.progress.planned_epochs = total
        if total == self.total_epochs:
            return
        self.scheduler = rebuild_scheduler(
            self.optimizer, self.recipe, self.steps_per_epoch, total, self.progress
        )
        self.console.info(self.budget.plan_line(total, done))
        self.total_epochs = total

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training batches (capped by ``train.max_steps_per_epoch``); a resumed
        epoch starts after the steps it had run."""
        accum = self.recipe.train.accum_steps
        skip = self.progress.step_in_epoch if epoch == self.progress.epoch else 0
        self.train_model.train()
        self.train_batches.set_epoch(epoch, skip_batches=skip)
        self.console.epoch_start(epoch + 1, self.total_epochs, self.steps_per_epoch, completed=skip)
        meter, step, stopped_mid_epoch = EpochMeter.on(self.device), skip, False
        for images, targets in self.train_batches:
            if self.step_hook is not None:
                self.step_hook(self, epoch, step)
            last_micro = (step + 1) % accum == 0 or step + 1 == self.steps_per_epoch
            loss = self.train_step(images, targets, accum, last_micro)
            meter.add(loss, images.shape[0])
            step += 1
            if last_micro:
                self._optimizer_step()
            if step % LOG_EVERY == 0 or step == self.steps_per_epoch:
                self._report_step(meter, epoch, step)
            if last_micro and self._stop_requested():
                stopped_mid_epoch = step < self.steps_per_epoch
                if stopped_mid_epoch:
                    self.progress.step_in_epoch = step
                break
            if step == self.steps_per_epoch:
                break
        self._check_finite(meter.nonfinite, epoch, step)
        return self._epoch_row(epoch, meter, skip, stopped_mid_epoch)

    def train_step(
        self, images: torch.Tensor, targets: torch.Tensor, accum: int, last_micro: bool
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch (DDP syncs gradients on the last one only)."""
        sync = (
            contextlib.nullcontext()
            if last_micro or not self.dist.is_distributed
            else self.train_model.no_sync()
        )
        with sync:
            with self._autocast():
                logits = self.train_model(images)
            loss = self.train_loss_fn(logits.float(), targets)
            self.scaler.scale(loss / accum).backward()
        return loss

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
        if not self.first_step_announced:
            self._announce_first_step()

    def _announce_first_step(self) -> None:
        """Tell the console once, when the first optimizer step of this process has run on the device."""
        self.first_step_announced = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per run: the step has really finished
        self.console.first_step(self.progress.global_step)

    def _report_step(self, meter: EpochMeter, epoch: int, step: int) -> None:
        """Every ``LOG_EVERY`` steps: the NaN check, the console line and the loggers (one host sync)."""
        self._check_finite(meter.nonfinite, epoch, step)
        running_loss, lr = meter.loss_sum.item() / max(meter.images, 1), self.current_lr()
        speed = meter.images * self.dist.world_size / max(meter.seconds(), 1e-9)
        self.console.step(step, running_loss, lr, speed)
        if self.loggers:  # the loss is already on the host here: no extra sync
            self.loggers.log_step(self.progress.global_step, {"loss": running_loss, "lr": lr})

    def _stop_requested(self) -> bool:
        """Whether any process was signalled (checked after each optimizer step, on every rank)."""
        if not ddp.any_process(self.stop_signal is not None, self.device):
            return False
        self.stop_signal = self.stop_signal or signal.SIGTERM  # another rank was signalled
        return True

    def _epoch_row(self, epoch: int, meter: EpochMeter, skip: int, stopped_mid_epoch: bool) -> dict[str, Any]:
        """The epoch's train loss (with the steps run before a resume), lr and speed, over all ranks;
        an epoch stopped midway keeps its sums in ``progress`` for the resumed run."""
        seconds = meter.seconds()
        images = torch.tensor(float(meter.images), device=self.device)
        totals = ddp.all_reduce_sum(torch.stack([meter.loss_sum.float(), images]))
        # A resumed epoch's loss includes the steps run before the stop (saved summed over ranks).
        carried = torch.tensor(
            [self.progress.epoch_loss_sum, float(self.progress.epoch_images)] if skip else [0.0, 0.0],
            device=self.device,
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

    def _check_finite(self, nonfinite: torch.Tensor, epoch: int, step: int) -> None:
        if not ddp.any_process(bool(nonfinite.item()), self.device):
            return
        last = self.run_dir / "last.safetensors"
        kept = (
            f"the last good checkpoint is {last} (epoch {self.progress.saved_epoch})"
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
    def evaluate(
        self, model: nn.Module, batches: BatchSource | None = None, prefix: str = "val_", keep: str = ""
    ) -> dict[str, float]:
        """Loss, top-1, top-5, macro-F1 and balanced accuracy (percent) over the whole held-out set
        (``batches``, default the validation batches), summed over ranks; keys start with ``prefix``.

        The confusion matrix is accumulated on the device (one bincount per batch, no host sync) and
        summed across ranks like the other totals. ``keep``: keep the logits (when small) in
        ``val_logits[keep]`` for the calibration after training.
        """
        model.eval()
        num_classes = self.bundle.num_classes
        totals = torch.zeros(4, device=self.device)  # loss sum, top-1 hits, top-5 hits, images
        confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=self.device)
        batches = self.eval_batches if batches is None else batches
        label = "testing" if prefix == "test_" else "validating" if model is self.model else "validating EMA"
        self.console.task_begin(label, len(batches))
        bound = len(batches) * self.recipe.train.batch_size * self.dist.world_size * num_classes
        kept = self.val_logits.start(keep, bound)
        for done, (images, targets) in enumerate(batches, 1):
            with self._autocast():
                logits = model(images).float()
            if kept is not None:
                kept.append((logits, targets))
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
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
        self.val_logits.finish(keep, kept, self.progress.global_step)
        totals = ddp.all_reduce_sum(totals)
        matrix = ddp.all_reduce_sum(confusion).view(num_classes, num_classes).cpu().numpy()
        n = totals[3].clamp(min=1)
        metrics = {
            "loss": (totals[0] / n).item(),
            "top1": (100 * totals[1] / n).item(),
            "top5": (100 * totals[2] / n).item(),
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
            is_best = self._evaluate_and_select(epoch + 1, row)
        row["seconds"] = row.pop("train_seconds") + time.perf_counter() - eval_start
        self.report_skipped_images()
        self.history.append(row)
        self.progress.epoch, self.progress.step_in_epoch = epoch + 1, 0
        self.progress.total_seconds = total_seconds + time.perf_counter() - eval_start
        if self.dist.is_main:
            self.files.write_metrics(self.history)
            if (epoch + 1) % r.output.save_every == 0 or last_epoch:
                self._save_last_and_resume(epoch + 1, row)
        self.console.epoch_end(row, is_best)

    def _evaluate_and_select(self, epoch: int, row: dict[str, Any]) -> bool:
        """Evaluate the model (and the EMA) into ``row``; save ``best`` when the better of them beats it."""
        row.update(self.evaluate(self.model, keep="model"))
        candidates = [("model", self.model, row)]
        if self.ema is not None:
            ema_metrics = self.evaluate(self.ema.module, keep="ema")
            row["ema_top1"] = ema_metrics["val_top1"]
            candidates.append(("ema", self.ema.module, ema_metrics))
        weights, module, metrics = max(candidates, key=lambda c: self.selection_score(c[2]))
        is_best = self._update_best(metrics, weights, epoch)
        if is_best:
            self._save_model("best.safetensors", module, weights, epoch, metrics)
            self.val_logits.mark_best(weights)
        return is_best

    def _update_best(self, metrics: dict[str, Any], weights: str, epoch: int) -> bool:
        """Record ``metrics`` as the best so far when they beat it on ``train.select_metric``; count
        evaluations without improvement for ``train.patience``. Only validation metrics come here."""
        p = self.progress
        score = self.selection_score(metrics)
        best = p.best_score
        if best is None and p.best_epoch and self.recipe.train.select_metric == "top1":
            best = p.best_top1  # a run resumed from before select_metric existed
        if best is not None and score <= best:
            p.evals_without_improvement += 1
            return False
        p.best_score, p.evals_without_improvement, p.best_weights = score, 0, weights
        p.best_metrics = {k.removeprefix("val_"): v for k, v in metrics.items() if k.startswith("val_")}
        p.best_top1, p.best_epoch = metrics["val_top1"], epoch
        return True

    def should_stop_early(self) -> bool:
        """``train.patience`` evaluations in a row without improvement (0 = never)."""
        patience = self.recipe.train.patience
        return patience > 0 and self.progress.evals_without_improvement >= patience

    def _stop_early(self, epoch: int) -> None:
        """``train.patience`` ran out: save ``last`` (if this epoch did not) and say so."""
        self.progress.stopped_early = epoch
        if self.progress.saved_epoch != epoch:
            self._save_last_and_resume(epoch, self.history[-1] if self.history else {})
        self.console.warn(
            f"early stop after epoch {epoch}: {self.recipe.train.patience} evaluations without a better "
            f"val {self.recipe.train.select_metric} (best: epoch {self.progress.best_epoch})"
        )

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
            self.files.save_model(
                filename, module.state_dict(), self._checkpoint_meta(weights, epoch, metrics)
            )

    def _save_last_and_resume(self, epoch: int, metrics: dict[str, Any]) -> None:
        """The resume state, then ``last.safetensors`` (both atomic). Resume first: if the disk fills
        up, the run can still continue from the newest state once space is freed."""
        self.progress.saved_epoch = epoch
        if self.budget is not None:  # a resumed run trains for what is left of its budget
            self.progress.budget_spent_s = self.budget.elapsed_s()
        if self.dist.is_main:
            save_resume_state(
                self.files.resume_file,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                progress=self.progress,
                recipe=self.recipe.to_dict(),
                ema=self.ema.module if self.ema else None,
                scaler=self.scaler,
            )
        self._save_model("last.safetensors", self.model, "model", epoch, metrics)

    # -- stopping on a signal ---------------------------------------------------------------------

    def _stop_after_signal(self, epoch: int) -> None:
        """After SIGINT/SIGTERM: save ``last`` + resume state at ``epoch`` epochs (+ ``step_in_epoch``
        steps) and stop with the command that continues the run."""
        assert self.stop_signal is not None
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
    def _signal_handlers(self) -> Iterator[None]:
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

    # -- after the last epoch ---------------------------------------------------------------------

    def _calibrate(self) -> dict[str, Any] | None:
        """Temperature scaling of ``best``/``last`` on the validation split (astrocli/engine/calibrate.py)."""
        if not self.recipe.train.calibrate:
            return None
        result = calibrate_after_training(self)
        if result:
            (self.console.info if result["applied"] else self.console.warn)(calibration_line(result))
        return result

    def score_test(self) -> dict[str, float]:
        """Score ``best.safetensors`` once on the test split (``test_top1``, ...); {} when there is none.

        Runs after training, on every rank (the test batches are sharded like the validation ones);
        nothing here feeds back into selection.
        """
        best_path = self.run_dir / "best.safetensors"
        if self.bundle.test is None:
            return {}

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
        p = self.progress
        summary = {
            "best_top1": p.best_top1,
            "best_epoch": p.best_epoch,
            "best_weights": p.best_weights,
            "selected_on": self.bundle.selected_on,
            "select_metric": self.recipe.train.select_metric,
            "best_metrics": p.best_metrics,
            **self.score_test(),
            "stopped_early": p.stopped_early,
            "final_top1": evaluated[-1]["val_top1"] if evaluated else None,
            "final_top5": evaluated[-1]["val_top5"] if evaluated else None,
            "epochs": p.epoch,
            "params": self.params,
            "model": self.recipe.model.name,
            "data_source": self.recipe.data.source,
            "num_classes": self.bundle.num_classes,
            "total_seconds": total_seconds,
            "mean_img_per_s": sum(speeds) / len(speeds) if speeds else None,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "compiled": bool(self.compiled),  # train.compile worked (False: eager, asked or not)
            "channels_last": self.recipe.train.channels_last is True,  # what auto chose, or as set
            "autocast": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
            "compile": self.recipe.train.compile,  # the setting (auto, true, false)
            "compile_seconds": self.compile_seconds,  # warm-up compile, apart from total_seconds' epochs
            "time_minutes": self.recipe.train.time,  # train.time's budget (None: train.epochs)
            "planned_epochs": p.planned_epochs,  # the epochs the budget planned last
            "run_dir": str(self.run_dir),
            # The stored temperature and its ECE at the top (as before), the whole decision beside them.
            **{
                k: v
                for k, v in (self.calibration or {}).items()
                if k in ("temperature", "ece", "ece_calibrated")
            },
            **({"calibration": self.calibration} if self.calibration else {}),
        }
        if self.dist.is_main:
            self.files.write_summary(summary)
            if self.recipe.output.plots and self.history:
                self.files.plot_curves(self.history)
        self.console.finish(summary)
        return summary
