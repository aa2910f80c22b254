"""``astro cv`` and ``astro tune`` errors a user can act on: one line each.

A cv into a folder it cannot write; a tune space file with broken YAML (its line and column); Ctrl-C
in a cv, which says to re-run the same ``astro cv`` command (the fold resumes from its saved state).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers import one_thread, run_astro, tiny_digits_overrides  # noqa: F401 (autouse fixture)

from astrocli.engine import TrainingInterrupted
from astrocli.experiments import cv
from astrocli.recipe import load_recipe


def one_line(code: int, err: str, *expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and all(text in lines[0] for text in expected), lines[0]


def test_cv_into_an_unwritable_folder_is_one_line(
    readonly_dir: Path,  # conftest.py: a folder nobody can write (a read-only tmpfs as root)
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    args = ["cv", "--recipe", "quickstart", "--folds", "2", *tiny_digits_overrides(readonly_dir / "runs")]
    code, _, err = run_astro(args, monkeypatch, capsys)
    one_line(code, err, "cannot write", "cv_plan.json", "writable")


def test_tune_space_with_broken_yaml_names_line_and_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text(
        "train.lr: {low: 1e-4, high: 3e-3, log: true}\ntrain.weight_decay: {low: 0.01, high: [0.1}\n"
    )
    args = ["tune", "--recipe", "quickstart", "--space", space, *tiny_digits_overrides(tmp_path / "runs")]
    code, _, err = run_astro(args, monkeypatch, capsys)
    one_line(code, err, f"{space}, line 2, column", "not valid YAML")


def test_ctrl_c_in_cv_says_to_rerun_the_same_cv_command(tmp_path: Path) -> None:
    def interrupt(trainer, epoch: int, step: int) -> None:  # what the SIGINT handler does
        if (epoch, step) == (0, 1):
            trainer.stop_signal = signal.SIGINT

    base = load_recipe("quickstart", tiny_digits_overrides(tmp_path))
    with pytest.raises(TrainingInterrupted) as stopped:
        cv.run_cv(base, folds=2, log="quiet", step_hook=interrupt)
    message = str(stopped.value)
    assert "re-run the same `astro cv` command" in message and "astro train --resume" not in message
    assert "fold0-seed0" in message and stopped.value.exit_code == 128 + signal.SIGINT
    assert cv.run_state(cv.parent_dir(base) / "fold0-seed0") == "resumable"
