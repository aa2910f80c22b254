"""Temperature scaling at the end of ``astro train`` (``train.calibrate: true``): ``T`` is fitted for
the run's ``best`` and ``last`` checkpoints on the validation split and written into their metadata.
The fit itself is :mod:`astrocli.calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from astrocli.calibration import calibrate_logits, write_temperature
from astrocli.checkpoint import load_checkpoint
from astrocli.engine import distributed as ddp
from astrocli.engine.build import build_model

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from astrocli.engine.trainer import Trainer


def _gather(tensor: Any) -> Any:
    """Concatenate a ``[n, ...]`` tensor over DDP ranks (rows of unequal count are padded, then cut)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    count = torch.tensor([len(tensor)], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts, strict=True)])


def collect_logits(model: Any, batches: Any, device: Any, amp_dtype: Any = None) -> tuple[Any, Any]:
    """Logits and targets of ``model`` over an evaluation batch source, from every rank (CPU float64)."""
    model.eval()
    all_logits, all_targets = [], []
    with torch.no_grad():
        for images, targets in batches:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                all_logits.append(model(images).float())
            all_targets.append(targets)
    if not all_logits:
        return torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    logits, targets = _gather(torch.cat(all_logits)), _gather(torch.cat(all_targets))
    return logits.double().cpu(), targets.cpu()


# Validation logits are kept for calibration (instead of another pass over the split) only while
# they are small: at most this many floats per process.
KEEP_LOGITS_MAX = 2**24


@dataclass(frozen=True)
class ValLogits:
    """One process's validation logits and targets (on the device) after ``global_step`` updates:
    what the trainer keeps from an evaluation so that calibration need not evaluate again."""

    logits: torch.Tensor
    targets: torch.Tensor
    global_step: int

    @classmethod
    def of(cls, parts: list[tuple[torch.Tensor, torch.Tensor]], global_step: int) -> ValLogits:
        return cls(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), global_step)


class KeptLogits(dict):
    """The validation logits the trainer keeps, by weights: ``model`` and ``ema`` (the latest
    evaluation of each) and ``best`` (the best checkpoint's), so calibration need not evaluate again."""

    def start(self, name: str, bound: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """A list to collect an evaluation's ``(logits, targets)`` in, or None when ``name`` is empty
        or ``bound`` logits (the whole split, all ranks) would be more than :data:`KEEP_LOGITS_MAX`
        (the same answer on every rank). The old ones of ``name`` are dropped either way."""
        self.pop(name, None)
        return [] if name and bound <= KEEP_LOGITS_MAX else None

    def finish(self, name: str, parts: list | None, global_step: int) -> None:
        if parts:
            self[name] = ValLogits.of(parts, global_step)

    def mark_best(self, weights: str) -> None:
        """``weights`` (``model`` or ``ema``) just became the best checkpoint."""
        self.pop("best", None)
        if weights in self:
            self["best"] = self[weights]


def calibrate_after_training(trainer: Trainer) -> dict[str, Any] | None:
    """Fit ``T`` for the run's ``best`` and ``last`` checkpoints on the validation split and write it.

    The logits come from the trainer's own last evaluations (``trainer.val_logits``) when it kept
    them for exactly these weights, so usually no extra pass over the split runs; otherwise the
    checkpoint is evaluated here. Returns the best checkpoint's
    :func:`~astrocli.calibration.calibrate_logits` summary (``temperature`` 1 and a ``reason`` when
    the fit cannot be trusted), or None when there is nothing to calibrate. Every rank takes part
    (the logits are gathered).
    """
    run_dir = trainer.run_dir
    if len(trainer.eval_batches) == 0:
        return None
    results: dict[str, dict[str, Any]] = {}
    for name in ("best", "last"):
        path = run_dir / f"{name}.safetensors"
        exists = torch.tensor(float(path.is_file()), device=trainer.device)
        if ddp.all_reduce_sum(exists).item() < trainer.dist.world_size:
            continue
        logits, targets = _validation_logits(trainer, name, path)
        if len(targets) == 0:
            return None
        summary = calibrate_logits(logits, targets)
        results[name] = summary
        if trainer.dist.is_main:
            ece = {k: summary[k] for k in ("ece", "ece_calibrated")}
            write_temperature(path, summary["temperature"], ece)
    return results.get("best") or results.get("last")


def _validation_logits(trainer: Trainer, name: str, path: Any) -> tuple[Any, Any]:
    """``best``/``last``'s validation logits and targets (CPU, gathered over ranks): the ones the
    trainer kept, when they belong to these weights, else a pass over the split."""
    kept = trainer.val_logits.get("best" if name == "best" else "model")
    if kept is not None and (name == "best" or kept.global_step == trainer.progress.global_step):
        return _gather(kept.logits).double().cpu(), _gather(kept.targets).cpu()
    if name == "last":
        model = trainer.model
    else:
        state_dict, _ = load_checkpoint(path)
        # load_weights=False: the checkpoint's weights replace them (no pretrained fetch again)
        model = build_model(trainer.recipe, trainer.bundle.num_classes, load_weights=False)
        model = model.to(trainer.device)
        model.load_state_dict(state_dict)
    return collect_logits(model, trainer.eval_batches, trainer.device, trainer.amp_dtype)


def calibration_line(result: dict[str, Any]) -> str:
    """The console line for :func:`calibrate_after_training`'s result: the stored temperature, or why
    temperature 1 was kept (a warning)."""
    if not result["applied"]:
        return f"calibration not applied, temperature 1 kept: {result['reason']}"
    return (
        f"calibration: temperature {result['temperature']:.3f}, validation ECE "
        f"{result['ece']:.4f} -> {result['ece_calibrated']:.4f} (stored in the checkpoints)"
    )
