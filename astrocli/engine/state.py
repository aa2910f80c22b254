"""Resume state (``RUN_DIR/resume.safetensors``): everything to continue a run, pickle-free, one atomic file.

Tensors (safetensors):
    model.<key>              the raw model's state dict
    ema.<key>                the EMA model's state dict (when EMA is on)
    optim.<index>.<key>      optimizer state per parameter index (``exp_avg``, ``step``, ...)
    rng.torch, rng.cuda.<i>  torch RNG states (uint8, as torch returns them)
    rng.numpy                numpy's MT19937 key (uint32 -> int64 tensor)
Metadata (one JSON string under ``astro_resume``):
    the :class:`Progress` fields, scheduler state dict, optimizer
    param_groups and non-tensor per-parameter state, GradScaler state, numpy RNG position, python
    ``random`` state, recipe.

``torch.save`` would pickle; this format cannot hold code, and a truncated file is detected by
safetensors' header check rather than half-loaded.

Also :class:`EpochMeter`: the running loss of the epoch in progress, kept on the device.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import InitVar, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from astrocli.checkpoint import load_checkpoint, read_tensors, save_tensors
from astrocli.errors import CheckpointError

RESUME_FORMAT = "astro-resume/1"
__all__ = [
    "RESUME_FORMAT",
    "Progress",
    "ResumeState",
    "load_resume_state",
    "save_resume_state",
]


@dataclass
class Progress:
    """Where the run is: ``epoch`` epochs finished, plus ``step_in_epoch`` batches of the next one,
    and what the run has found so far (the best checkpoint, early stopping). Saved in the resume state.

    Resume files written before a field existed load with its default; astro 0.2.0 kept the fields
    from ``total_seconds`` on in a dict named ``extra``, which is still read (:meth:`__post_init__`).
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0  # optimizer updates so far (drives the per-update schedule and EMA warmup)
    best_top1: float = -1.0
    best_epoch: int = 0
    # Training-loss sum (over images) and image count of the ``step_in_epoch`` batches already run
    # in the unfinished epoch (all ranks), so that the resumed epoch reports its whole train loss.
    epoch_loss_sum: float = 0.0
    epoch_images: int = 0
    total_seconds: float = 0.0  # training time over every session of the run
    saved_epoch: int = 0  # the epoch of the newest last.safetensors and resume state
    stopped_early: int | None = None  # the epoch train.patience stopped the run after
    best_score: float | None = None  # train.select_metric of the best checkpoint (higher is better)
    best_weights: str = "model"  # "model" or "ema": which weights best.safetensors holds
    best_metrics: dict[str, float] = field(default_factory=dict)  # its validation metrics, no "val_"
    evals_without_improvement: int = 0  # counted against train.patience
    planned_epochs: int | None = None  # train.time: the epochs the budget was last planned for
    budget_spent_s: float = 0.0  # train.time: seconds of the budget used by the saved sessions
    extra: InitVar[dict[str, Any] | None] = None  # astro 0.2.0's bag of the fields above

    def __post_init__(self, extra: dict[str, Any] | None) -> None:
        known = {f.name for f in fields(self)}
        for key, value in (extra or {}).items():
            if key in known:
                setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-able values (what the resume state stores)."""
        return asdict(self)

    def position(self, steps_per_epoch: int | None = None) -> str:
        """Where the run stands, in the words the stop message and the resume banner share."""
        if self.step_in_epoch:
            of = f" of {steps_per_epoch}" if steps_per_epoch else ""
            return f"epoch {self.epoch + 1}, after step {self.step_in_epoch}{of}"
        return f"the end of epoch {self.epoch}" if self.epoch else "the start"


# ---------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every RNG the run draws from: torch (CPU and CUDA), numpy (timm Mixup) and python ``random``."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    kind, key, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(key.astype(np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Put back the RNG states written by :func:`capture_rng`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    np_meta = meta["numpy"]
    key = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((np_meta["kind"], key, np_meta["pos"], np_meta["has_gauss"], np_meta["cached"]))
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


# ---------------------------------------------------------------------------------------------
# Optimizer state (flattened; torch's state_dict nests tensors and scalars per parameter index)
# ---------------------------------------------------------------------------------------------


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into ``optim.<index>.<key>`` tensors and JSON for the rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the optimizer state dict that :func:`flatten_optimizer` split."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------------


def _prefixed(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state_dict.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _json_default(value: Any) -> Any:
    """Scheduler/optimizer dicts hold tuples, numpy scalars and tensors of one value; make them JSON."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in resume metadata")


def save_resume_state(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    recipe: dict[str, Any],
    ema: torch.nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write the whole training state to ``path`` atomically (temp file + rename)."""
    tensors: dict[str, torch.Tensor] = _prefixed("model", model.state_dict())
    if ema is not None:
        tensors.update(_prefixed("ema", ema.state_dict()))
    optim_tensors, optim_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(optim_tensors)
    rng_tensors, rng_meta = capture_rng()
    tensors.update(rng_tensors)
    meta = {
        "progress": progress.to_dict(),
        "scheduler": {k: v for k, v in scheduler.state_dict().items()},
        "optimizer": optim_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_meta,
        "recipe": recipe,
    }
    metadata = {"format": RESUME_FORMAT, "astro_resume": json.dumps(meta, default=_json_default)}
    save_tensors(path, tensors, metadata)


@dataclass
class ResumeState:
    """A loaded resume file, applied to freshly built objects with :meth:`apply`."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def progress(self) -> Progress:
        """Epoch, step and best metric at the time of the save."""
        return Progress(**self.meta["progress"])

    @property
    def recipe(self) -> dict[str, Any]:
        """The resolved recipe the run was started with."""
        return self.meta["recipe"]

    def apply(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        ema: torch.nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        """Load every saved state into the given objects and restore the RNGs (call it last)."""
        model.load_state_dict(_unprefixed("model", self.tensors), strict=True)
        if ema is not None:
            ema_state = _unprefixed("ema", self.tensors)
            if not ema_state:
                raise CheckpointError("resume state has no EMA weights but the recipe turns train.ema on")
            ema.load_state_dict(ema_state, strict=True)
        optimizer.load_state_dict(unflatten_optimizer(self.tensors, self.meta["optimizer"]))
        scheduler.load_state_dict(self.meta["scheduler"])
        if scaler is not None and self.meta.get("scaler"):
            scaler.load_state_dict(self.meta["scaler"])
        restore_rng(self.tensors, self.meta["rng"])


def load_resume_state(path: str | Path) -> ResumeState:
    """Read ``resume.safetensors``; a missing, damaged or foreign file raises CheckpointError."""
    tensors, metadata = read_tensors(path)
    if metadata.get("format") != RESUME_FORMAT or "astro_resume" not in metadata:
        raise CheckpointError(f"'{path}' is not an astro resume state (no '{RESUME_FORMAT}' metadata)")
    try:
        meta = json.loads(metadata["astro_resume"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"'{path}': damaged resume metadata ({exc})") from None
    return ResumeState(tensors=tensors, meta=meta)


def saved_progress(path: Path) -> dict[str, Any] | None:
    """The progress recorded in a resume file's header (None when missing or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["astro_resume"])
        return dict(meta["progress"])
    except Exception:  # missing, truncated, foreign: there is nothing to resume from
        return None


def load_resume_or_explain(resume_path: Path) -> ResumeState:
    """Load ``RUN_DIR/resume.safetensors``; if it is damaged, say whether ``last.safetensors`` is
    intact and how to start a new run from its weights."""
    try:
        return load_resume_state(resume_path)
    except CheckpointError:
        pass
    run_dir = resume_path.parent
    last = run_dir / "last.safetensors"
    damaged = f"cannot resume: {resume_path} is damaged or truncated"
    try:
        _, meta = load_checkpoint(last)
    except CheckpointError:
        raise CheckpointError(
            f"{damaged}, and {last} is missing or damaged too; start the run again with "
            f"`astro train --recipe {run_dir / 'recipe.yaml'}`"
        ) from None
    raise CheckpointError(
        f"{damaged}; {last} is intact (epoch {meta.epoch}): start a new run from its weights with "
        f"`astro train --recipe {run_dir / 'recipe.yaml'} model.pretrained={last}` "
        "(optimizer state and schedule start over)"
    ) from None


@dataclass
class EpochMeter:
    """The running training loss of one epoch, kept on the device (no host sync per step)."""

    loss_sum: torch.Tensor
    nonfinite: torch.Tensor
    images: int = 0
    start: float = 0.0

    @classmethod
    def on(cls, device: torch.device) -> EpochMeter:
        return cls(
            loss_sum=torch.zeros((), device=device),
            nonfinite=torch.zeros((), dtype=torch.bool, device=device),
            start=time.perf_counter(),
        )

    def add(self, loss: torch.Tensor, batch_size: int) -> None:
        self.loss_sum += loss.detach() * batch_size
        self.nonfinite |= ~torch.isfinite(loss.detach())
        self.images += batch_size

    def seconds(self) -> float:
        return time.perf_counter() - self.start
