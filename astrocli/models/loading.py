"""Building a model from an astro checkpoint: the architecture its metadata names, weights loaded strictly."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from astrocli.checkpoint import CheckpointMeta, load_checkpoint
from astrocli.errors import CheckpointError
from astrocli.models.registry import create_model


def load_model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build the checkpoint's architecture and load its weights strictly.

    A checkpoint whose tensors do not fit the named architecture raises CheckpointError
    (one line: how many keys are missing / unexpected / mis-shaped).
    """
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
