"""Model checkpoints: safetensors weights plus JSON metadata, written atomically.

A checkpoint (``best.safetensors``, ``last.safetensors``) holds the weights to run the model
with and, in the safetensors header metadata (string to string), everything needed to rebuild
and feed it without the run directory:

    format       "astro-checkpoint/1"
    model        zoo name, e.g. "cct_7_3x1_32"
    num_classes  "10"
    img_size     "32"
    in_chans     "3"
    class_names  JSON list of strings
    mean, std    JSON lists of floats (the normalisation the model was trained with)
    crop_pct     evaluation crop fraction, "1.0"
    interpolation "bicubic"
    recipe       the fully resolved recipe as JSON
    weights      "model" or "ema" (which weights these are)
    epoch        "12"; metrics: JSON object of the epoch's validation metrics
    pixels       "uint8" (8-bit PIL images) or "float" (float32 arrays: FITS, 16-bit, N bands)
    scaling      intensity scaling of the float path ("none", "asinh", ...); scaling_params: JSON
    reader       JSON {fits_hdu, layout, nan_fill}: how the float path reads files

Checkpoints written before the float path have none of the last four keys; they read as
``pixels: uint8`` (or what their stored recipe says) and load as before.
    temperature  "1.43": softmax temperature fitted on the validation split (astrocli/calibration.py);
                 absent in older checkpoints, read as 1.0

Nothing here unpickles: safetensors cannot hold code.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astrocli.errors import CheckpointError, first_line, write_error

if TYPE_CHECKING:  # annotations only: CheckpointMeta and atomic writes must work without torch (ONNX predict)
    import torch

FORMAT = "astro-checkpoint/1"
# How the float path reads files (recipe data keys), for checkpoints whose recipe lacks them.
READER_DEFAULTS: dict[str, Any] = {"fits_hdu": None, "layout": "auto", "nan_fill": None}


@dataclass
class CheckpointMeta:
    """What a checkpoint says about the model it holds."""

    model: str
    num_classes: int
    img_size: int
    in_chans: int = 3
    class_names: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    recipe: dict[str, Any] = field(default_factory=dict)
    weights: str = "model"
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    # The float path (astrocli.images.arrays): None = take it from ``recipe['data']`` (older checkpoints).
    pixels: str | None = None
    scaling: str | None = None
    scaling_params: dict[str, float] | None = None
    reader: dict[str, Any] | None = None

    temperature: float = 1.0  # probabilities are softmax(logits / temperature)

    def __post_init__(self) -> None:
        data = self.recipe.get("data", {}) if isinstance(self.recipe, dict) else {}
        if self.pixels is None:
            self.pixels = "float" if data.get("pixels") == "float" else "uint8"
        if self.scaling is None:
            self.scaling = data.get("scaling", "none")
        if self.scaling_params is None:
            self.scaling_params = dict(data.get("scaling_params") or {})
        if self.reader is None:
            self.reader = {key: data.get(key, default) for key, default in READER_DEFAULTS.items()}

    def to_metadata(self) -> dict[str, str]:
        """Encode as safetensors metadata (all values strings; structured ones as JSON)."""
        return {
            "format": FORMAT,
            "model": self.model,
            "num_classes": str(self.num_classes),
            "img_size": str(self.img_size),
            "in_chans": str(self.in_chans),
            "class_names": json.dumps(self.class_names),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "crop_pct": str(self.crop_pct),
            "interpolation": self.interpolation,
            "recipe": json.dumps(self.recipe),
            "weights": self.weights,
            "epoch": str(self.epoch),
            "metrics": json.dumps(self.metrics),
            "pixels": str(self.pixels),
            "scaling": str(self.scaling),
            "scaling_params": json.dumps(self.scaling_params),
            "reader": json.dumps(self.reader),
            "temperature": repr(float(self.temperature)),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "checkpoint") -> CheckpointMeta:
        """Decode safetensors metadata; a file that is not an astro checkpoint raises CheckpointError."""
        if not meta or meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{source}: not an astro checkpoint (no '{FORMAT}' metadata); "
                "use a best.safetensors/last.safetensors written by `astro train`"
            )
        try:
            return cls(
                model=meta["model"],
                num_classes=int(meta["num_classes"]),
                img_size=int(meta["img_size"]),
                in_chans=int(meta.get("in_chans", "3")),
                class_names=json.loads(meta.get("class_names", "[]")),
                mean=json.loads(meta.get("mean", "[0.5, 0.5, 0.5]")),
                std=json.loads(meta.get("std", "[0.5, 0.5, 0.5]")),
                crop_pct=float(meta.get("crop_pct", "1.0")),
                interpolation=meta.get("interpolation", "bicubic"),
                recipe=json.loads(meta.get("recipe", "{}")),
                weights=meta.get("weights", "model"),
                epoch=int(meta.get("epoch", "0")),
                metrics=json.loads(meta.get("metrics", "{}")),
                pixels=meta.get("pixels"),
                scaling=meta.get("scaling"),
                scaling_params=json.loads(meta["scaling_params"]) if "scaling_params" in meta else None,
                reader=json.loads(meta["reader"]) if "reader" in meta else None,
                temperature=float(meta.get("temperature", "1.0")),
            )
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{source}: damaged astro metadata ({exc})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never half."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # missing output folders are created
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def check_writable(path: str | Path) -> None:
    """Fail before any work when ``path`` cannot be written (a read-only folder, a file in the way).

    Missing folders are fine (the atomic write creates them); the nearest existing one is tried
    with a real temporary file, since permission bits say nothing on a read-only mount or as root.
    """
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(folder))
        fd, tmp = tempfile.mkstemp(prefix=".astro-write-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise write_error(path, exc) from None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Atomically write tensors + string metadata as safetensors.

    Tensors are made contiguous and de-aliased (safetensors refuses shared storage, which tied
    weights and some optimizer states have).
    """
    from safetensors.torch import save

    clean = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    atomic_write_bytes(path, save(clean, metadata=dict(metadata)))


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: CheckpointMeta) -> None:
    """Atomically write a model checkpoint (weights + :class:`CheckpointMeta`)."""
    save_tensors(path, state_dict, meta.to_metadata())


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; anything else (pickle, truncated, missing) raises CheckpointError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            for name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    except Exception as exc:  # safetensors raises SafetensorError / OSError with terse messages
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({first_line(exc)}); "
            "it may be truncated or in another format (astro never loads pickle checkpoints)"
        ) from None
    return tensors, metadata


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a model checkpoint: its state dict and its :class:`CheckpointMeta`."""
    tensors, metadata = read_tensors(path)
    return tensors, CheckpointMeta.from_metadata(metadata, source=str(path))


def load_model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build the checkpoint's architecture and load its weights strictly.

    A checkpoint whose tensors do not fit the named architecture raises CheckpointError
    (one line: how many keys are missing / unexpected / mis-shaped).
    """
    from astrocli.models import create_model

    state_dict, meta = load_checkpoint(path)
    model = create_model(
        meta.model, num_classes=meta.num_classes, img_size=meta.img_size, in_chans=meta.in_chans
    )
    load_state_dict_strict(model, state_dict, source=str(path), arch=meta.model)
    return model.to(device).eval(), meta


def load_state_dict_strict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, arch: str
) -> None:
    """``model.load_state_dict(strict=True)``, failing with one line instead of a long RuntimeError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or mismatched:
        example = (missing or unexpected or mismatched)[0]
        raise CheckpointError(
            f"{source}: weights do not fit architecture '{arch}' ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped tensors, e.g. '{example}'); "
            "is this checkpoint from another model?"
        )
    model.load_state_dict(state_dict, strict=True)
