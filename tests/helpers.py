"""Helpers shared by the CLI tests (imported as ``from helpers import run_astro``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from astrocli.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from astrocli.cli import main
from astrocli.models import create_model
from astrocli.recipe import Recipe


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for the test (tiny models run no faster on more, and parallel test runs
    share the cores). Autouse in every test module that imports it: ``from helpers import one_thread``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def as_overrides(values: dict[str, object], **extra: object) -> list[str]:
    """``KEY=VALUE`` overrides from ``values``, with ``extra`` (dotted keys as ``**{"train.lr": 1e-3}``)
    replacing or adding keys."""
    return [f"{k}={v}" for k, v in {**values, **extra}.items()]


# resnet20 on 8-px digits for 2 epochs of 3 steps: the smallest real training run.
TINY_DIGITS_RUN: dict[str, object] = {
    "data.source": "digits",
    "data.img_size": 8,
    "data.num_workers": 0,
    "data.pipeline": "loader",
    "data.val_fraction": 0.03,
    "model.name": "resnet20",
    "train.epochs": 2,
    "train.batch_size": 8,
    "train.max_steps_per_epoch": 3,
    "train.device": "cpu",
    "train.warmup_epochs": 1,
}

# Overrides on the quickstart recipe for the logger and tuning tests: the same tiny run, batch 16.
SHORT_QUICKSTART: dict[str, object] = {
    "data.img_size": 8,
    "data.pipeline": "loader",
    "data.val_fraction": 0.05,
    "model.name": "resnet20",
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.max_steps_per_epoch": 3,
    "train.warmup_epochs": 0,
}


def tiny_digits_overrides(out: Path, name: str = "run", **extra: object) -> list[str]:
    """:data:`TINY_DIGITS_RUN` quietly into ``out/name``, without plots."""
    where = {"output.dir": str(out), "output.name": name, "output.log": "quiet", "output.plots": False}
    return as_overrides({**TINY_DIGITS_RUN, **where}, **extra)


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


def run_astro_narrow(
    args: list, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, columns: int = 40
) -> tuple[int, str]:
    """The `astro` entry point in-process with stdout captured (not a terminal) and a narrow COLUMNS."""
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "argv", ["astro", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    return code, capsys.readouterr().out


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


def checkpoint_without_hflip(folder: Path, data_root: Path) -> Path:
    """A fresh resnet20 checkpoint whose recipe trained without horizontal flips, deep in ``folder``
    (a long path, which narrow consoles must not fold)."""
    path = folder / ("deep-" * 12) / "best.safetensors"
    path.parent.mkdir(parents=True)
    make_checkpoint(path, "resnet20", 16, data_root)
    state, meta = load_checkpoint(path)
    meta.recipe["augment"]["hflip"] = 0.0
    save_checkpoint(path, state, meta)
    return path
