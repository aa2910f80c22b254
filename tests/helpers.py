"""Helpers shared by the CLI tests (imported as ``from helpers import run_astro``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from astrocli.checkpoint import CheckpointMeta, save_checkpoint
from astrocli.cli import main
from astrocli.models import create_model
from astrocli.recipe import Recipe


def run_astro(
    args: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """Run the real `astro` entry point in-process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["astro", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that rich tables never fold a path
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def class_dirs(root: Path) -> list[Path]:
    """The class folders of an image-folder tree, sorted, hidden ones skipped (as astro's readers do:
    a `.astro-cache/` or `.ipynb_checkpoints/` beside the classes is not a class)."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def make_checkpoint(
    path: Path,
    model_name: str,
    img_size: int,
    data_root: Path,
    seed: int = 0,
    **meta_fields: Any,
) -> Path:
    """A checkpoint of a freshly initialised zoo model, with metadata like `astro train` writes.

    ``meta_fields`` override :class:`CheckpointMeta` fields (mean, std, crop_pct, ...).
    """
    class_names = [p.name for p in class_dirs(data_root)]
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=len(class_names), img_size=img_size)
    recipe = Recipe()
    recipe.model.name = model_name
    recipe.data.root, recipe.data.img_size, recipe.data.num_workers = str(data_root), img_size, 0
    meta = CheckpointMeta(
        model=model_name,
        num_classes=len(class_names),
        img_size=img_size,
        class_names=class_names,
        recipe=recipe.to_dict(),
        **meta_fields,
    )
    save_checkpoint(path, model.state_dict(), meta)
    return path
