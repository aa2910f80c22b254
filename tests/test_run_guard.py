"""The run guard (astrocli/engine/run_guard.py, and the resume helpers of engine/state.py): a disk
too small for the checkpoints is refused before training, a disk that fills up keeps the run
resumable, and a damaged resume file names the intact last checkpoint."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from battery import assert_one_line, snapshot, train_args
from helpers import run_astro

from astrocli.engine import train
from astrocli.errors import DiskFullError
from astrocli.recipe import load_recipe


def test_truncated_resume_names_the_intact_last_checkpoint(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    resume = run / "resume.safetensors"
    resume.write_bytes(resume.read_bytes()[: resume.stat().st_size // 2])
    before = snapshot(run)
    code, out, err = run_astro(["train", "--resume", run], monkeypatch, capsys)
    assert_one_line(
        code, out, err, "last.safetensors", "is intact", f"model.pretrained={run / 'last.safetensors'}"
    )
    assert snapshot(run) == before
    (run / "last.safetensors").write_bytes(b"garbage")
    code, out, err = run_astro(["train", "--resume", run], monkeypatch, capsys)
    assert_one_line(code, out, err, "damaged too", "recipe.yaml")


def test_full_disk_keeps_the_run_resumable(
    data: Path,
    small_disk: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    disk, tiny = small_disk
    # Too small to hold the checkpoints at all: refused before training, no run directory left.
    code, out, err = run_astro(train_args(data, tiny), monkeypatch, capsys)
    assert_one_line(code, out, err, "MB free", "output.dir")
    assert list(tiny.iterdir()) == []

    # Room at the start; the disk fills up during the second epoch.
    filler = disk / "filler"
    recipe = load_recipe("quickstart", [a for a in train_args(data, disk, "train.epochs=2") if "=" in a])
    lock = threading.Lock()

    def fill_disk(trainer, epoch: int, step: int) -> None:
        with lock:
            if epoch == 1 and not filler.exists():
                free = shutil.disk_usage(disk).free
                filler.write_bytes(b"\0" * max(0, free - 64 * 1024))

    with pytest.raises(DiskFullError) as info:
        train(recipe, log="quiet", step_hook=fill_disk)
    message = str(info.value)
    run_dir = disk / recipe.output.name
    assert "no space left" in message and "resume state (epoch 1) is intact" in message
    assert f"astro train --resume {run_dir}" in message and "\n" not in message
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # no half-written files

    filler.unlink()  # space freed: the run continues from its resume state and finishes
    code, out, err = run_astro(["train", "--resume", run_dir, "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
