"""``train.time: MINUTES``: the epochs and the schedule fit a time budget (issue 21, item 5).

The budget reads its own clock (``astrocli.engine.budget.clock``); the tests replace it with one that
a step hook moves 5 s per training step, so every plan is exact and nothing depends on this machine's
speed. Runs: resnet20 on 8-px real CIFAR-10 images (20 train + 5 test per class), 3 steps per epoch.
"""

from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path

import pytest
from helpers import one_thread, run_astro  # noqa: F401 (autouse fixture)

from astrocli.engine import TrainingInterrupted, budget, train
from astrocli.errors import AstroError
from astrocli.experiments import cv
from astrocli.recipe import load_recipe

STEP_S = 5.0  # fake seconds per training step: 3 steps, 15 s per epoch


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def hook(self, trainer, epoch: int, step: int) -> None:  # a step hook
        self.now += STEP_S


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(budget, "clock", fake)
    return fake


def overrides(root: Path, out: Path, **extra: object) -> list[str]:
    values = {
        "data.source": "imagefolder", "data.root": str(root), "data.img_size": 8, "data.num_workers": 0,
        "data.pipeline": "loader", "model.name": "resnet20", "train.batch_size": 16,
        "train.max_steps_per_epoch": 3, "train.device": "cpu", "train.epochs": 10, "train.warmup_epochs": 1,
        "train.lr": 1e-3, "train.min_lr": 1e-5, "train.time": 1, "output.dir": str(out),
        "output.name": "budget", "output.log": "quiet", "output.plots": False,
    }  # fmt: skip
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_plan_counts_the_epochs_left_and_only_shrinks_late(clock: FakeClock) -> None:
    b = budget.TimeBudget(minutes=1)  # 60 s
    clock.now += 20  # the first epoch: 20 s (its compile warm-up included)
    assert b.plan(1, 10) == 3  # 40 s left at 20 s per epoch
    clock.now += 10
    assert b.plan(2, 3) == 5  # 30 s left at 10 s (the first span left out): the plan grows
    clock.now += 5
    assert b.plan(3, 5) == 5  # faster still, but a late plan only shrinks
    clock.now += 20
    assert b.plan(4, 5) == 4  # 5 s left at 7.5 s per epoch: this epoch is the last
    compiled = budget.TimeBudget(minutes=1)
    clock.now += 30  # a compiling warm-up: counted in the budget, not as an epoch
    compiled.mark()
    clock.now += 10
    assert compiled.plan(1, 10) == 3  # 20 s left at 10 s per epoch
    resumed = budget.TimeBudget(minutes=1, spent_s=70)  # a resumed run past its budget
    clock.now += 10
    assert resumed.plan(6, 9) == 6


def test_budget_ending_mid_schedule_plans_a_whole_schedule_and_finishes_cleanly(
    cifar10_small: Path, tmp_path: Path, clock: FakeClock
) -> None:
    """train.epochs=10, but 1 minute at 15 s per epoch fits 4: the run re-plans warmup and cosine for 4
    epochs, ends with best and last checkpoints and scores the test split once."""
    run_dir = train(load_recipe(None, overrides(cifar10_small, tmp_path)), step_hook=clock.hook)
    history = rows(run_dir)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["time_minutes"] == 1 and summary["planned_epochs"] == 4 and summary["epochs"] == 4
    assert "test_top1" in summary and summary["stopped_early"] is None
    assert (run_dir / "best.safetensors").is_file() and (run_dir / "last.safetensors").is_file()
    # the cosine schedule was fitted to 4 epochs: the last epoch ends near train.min_lr
    lrs = [float(r["lr"]) for r in history]
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3] and lrs[3] < 1e-4
    unbudgeted = train(
        load_recipe(None, overrides(cifar10_small, tmp_path, **{"train.time": "null", "train.epochs": 4}))
    )
    # the same 4-epoch schedule as a run planned for 4 epochs from the start, from epoch 2 on
    planned = [float(r["lr"]) for r in rows(unbudgeted)]
    assert len(planned) == 4
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(lrs[1:], planned[1:], strict=True))


def test_resumed_budget_trains_for_what_is_left(
    cifar10_small: Path, tmp_path: Path, clock: FakeClock
) -> None:
    def stop_in_epoch_3(trainer, epoch: int, step: int) -> None:
        clock.hook(trainer, epoch, step)
        if (epoch, step) == (2, 1):
            trainer.stop_signal = signal.SIGTERM

    with pytest.raises(TrainingInterrupted):
        train(load_recipe(None, overrides(cifar10_small, tmp_path)), step_hook=stop_in_epoch_3)
    run_dir = tmp_path / "budget"
    run_dir = train(resume_dir=run_dir, step_hook=clock.hook)
    assert [int(r["epoch"]) for r in rows(run_dir)] == [1, 2, 3, 4]  # as without the stop
    assert json.loads((run_dir / "summary.json").read_text())["planned_epochs"] == 4


def test_cv_folds_each_get_the_budget(cifar10_small: Path, tmp_path: Path, clock: FakeClock) -> None:
    base = load_recipe(None, overrides(cifar10_small, tmp_path, **{"train.time": 0.5}))  # 30 s: 2 epochs
    parent = cv.run_cv(base, folds=2, log="quiet", step_hook=clock.hook)
    for fold in ("fold0-seed0", "fold1-seed0"):
        assert len(rows(parent / fold)) == 2
        summary = json.loads((parent / fold / "summary.json").read_text())
        assert summary["planned_epochs"] == 2 and summary["time_minutes"] == 0.5


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_bad_budget_is_one_line(value: str) -> None:
    with pytest.raises(AstroError, match="recipe key 'train.time' must be"):
        load_recipe(None, [f"train.time={value}"])


def test_print_recipe_shows_the_budget(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out, _ = run_astro(
        ["train", "--recipe", "cifar10_cct_7_3x1_fast", "--print-recipe", "train.time=4.5"],
        monkeypatch,
        capsys,
    )
    assert code == 0
    assert "# train.time 4.5 min: the epochs are planned from the measured time per epoch" in out
    assert "  time: 4.5\n" in out


def test_tune_trials_each_get_the_budget(
    cifar10_small: Path, tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    optuna = pytest.importorskip("optuna")  # the [tune] extra
    import astrocli.engine
    from astrocli.experiments.tune import run_tune

    monkeypatch.setattr(
        astrocli.engine, "train", lambda recipe, **kw: train(recipe, step_hook=clock.hook, **kw)
    )
    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {low: 1e-3, high: 1e-2, log: true}\n")
    base = overrides(cifar10_small, tmp_path, **{"train.time": 0.5})  # 30 s: 2 epochs of 15 s
    result = run_tune(None, space, base, trials=2)
    assert [t.state for t in result.study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in ("trial0", "trial1"):
        run_dir = tmp_path / "budget-tune" / trial
        assert len(rows(run_dir)) == 2
        assert json.loads((run_dir / "summary.json").read_text())["planned_epochs"] == 2


def test_recipes_lists_the_fast_recipes_budget(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    code, out, _ = run_astro(["recipes", "--format", "json"], monkeypatch, capsys)
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["cifar10_cct_7_3x1_fast"]["time"] == 4 and rows["cifar10_cct_7_3x1"]["time"] is None
    code, out, _ = run_astro(["recipes"], monkeypatch, capsys)
    assert code == 0 and "4 min" in out
