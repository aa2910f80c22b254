"""Temperature scaling at the end of ``astro train`` (``train.calibrate: true``): ``T`` is fitted for
the run's ``best`` and ``last`` checkpoints on the validation split and written into their metadata.
The fit itself is :mod:`astrocli.calibration`.
"""

from __future__ import annotations

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


def calibrate_after_training(trainer: Trainer) -> dict[str, Any] | None:
    """Fit ``T`` for the run's ``best`` and ``last`` checkpoints on the validation split and write it.

    Returns the best checkpoint's :func:`~astrocli.calibration.calibrate_logits` summary
    (``temperature`` 1 and a ``reason`` when the fit cannot be trusted), or None when there is
    nothing to calibrate. Every rank takes part (the logits are gathered).
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
        if name == "last":
            model = trainer.model
        else:
            state_dict, _ = load_checkpoint(path)
            # load_weights=False: the checkpoint's weights replace them (no pretrained fetch again)
            model = build_model(trainer.recipe, trainer.bundle.num_classes, load_weights=False)
            model = model.to(trainer.device)
            model.load_state_dict(state_dict)
        logits, targets = collect_logits(model, trainer.eval_batches, trainer.device, trainer.amp_dtype)
        if len(targets) == 0:
            return None
        summary = calibrate_logits(logits, targets)
        results[name] = summary
        if trainer.dist.is_main:
            ece = {k: summary[k] for k in ("ece", "ece_calibrated")}
            write_temperature(path, summary["temperature"], ece)
    return results.get("best") or results.get("last")
