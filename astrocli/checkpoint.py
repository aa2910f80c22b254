"""Model checkpoints: safetensors weights plus JSON metadata, written atomically (astrocli/files.py).

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

Nothing here unpickles: safetensors cannot hold code. Building a model from a checkpoint is
:func:`astrocli.models.loading.load_model_from_checkpoint` (this module stays torch-free at import).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astrocli.errors import CheckpointError, first_line
from astrocli.files import atomic_write_bytes

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
