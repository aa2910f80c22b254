"""``astro cv`` and ``astro compare``: stratified folds, resume after an interruption, aggregation,
job-array runs, parallel launch, interval arithmetic and the one-line errors.

The cv runs train resnet20 on 8-px real CIFAR-10 images (20 train + 5 test per class) for 2 epochs
of 2 steps: 2 folds, one of them stopped mid-run and resumed.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import one_thread, run_astro  # noqa: F401 (autouse fixture)

from astrocli.data.digits import load_digit_images
from astrocli.data.sources import kfold_split
from astrocli.engine import TrainingInterrupted
from astrocli.errors import AstroError, DataError
from astrocli.experiments import cv
from astrocli.experiments.compare import compare_paths
from astrocli.recipe import load_recipe
from astrocli.stats import paired_difference, parse_target_percent, t_interval, where_in_interval


def cv_overrides(out: Path, root: Path, **extra: object) -> list[str]:
    values: dict[str, object] = {
        "data.source": "imagefolder",
        "data.root": str(root),
        "data.img_size": 8,
        "data.num_workers": 0,
        "data.pipeline": "loader",
        "model.name": "resnet20",
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.max_steps_per_epoch": 2,
        "train.device": "cpu",
        "output.dir": str(out),
        "output.name": "tiny",
        "output.log": "quiet",
        "output.plots": False,
        "target": "made-up paper, top-1 99.5%",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


# ---------------------------------------------------------------------------------------------
# Folds and interval arithmetic (no training)
# ---------------------------------------------------------------------------------------------


def test_folds_are_stratified_disjoint_covering_and_reproducible() -> None:
    _, labels = load_digit_images(8)
    targets = labels.tolist()
    per_class = Counter(targets)
    for repeat in range(2):
        held = [kfold_split(targets, 5, f, repeat, 0, "digits") for f in range(5)]
        val_sets = [set(v) for _, v in held]
        assert sorted(i for v in val_sets for i in v) == list(range(len(targets)))  # each image once
        for train_idx, val_idx in held:
            assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == len(targets)
            counts = Counter(targets[i] for i in val_idx)
            for cls, n in per_class.items():  # stratified: every class split as evenly as possible
                assert abs(counts[cls] - n / 5) < 1
        again = [kfold_split(targets, 5, f, repeat, 0, "digits") for f in range(5)]
        assert again == held
    assert kfold_split(targets, 5, 0, 0, 0, "d") != kfold_split(targets, 5, 0, 1, 0, "d")  # reshuffled
    assert kfold_split(targets, 5, 0, 0, 0, "d") != kfold_split(targets, 5, 0, 0, 1, "d")  # split_seed
    with pytest.raises(DataError, match="at least 2 folds"):
        kfold_split(targets, 1, 0, 0, 0, "digits")
    with pytest.raises(DataError, match="has only"):
        kfold_split([0, 0, 0, 1, 1], 3, 0, 0, 0, "tiny")


def test_interval_arithmetic_against_hand_computed_values() -> None:
    # mean 2.5, sample std sqrt(5/3), t(0.975, df=3) = 3.182446305284263
    result = t_interval([1, 2, 3, 4])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert result["mean"] == 2.5 and result["std"] == pytest.approx(math.sqrt(5 / 3))
    assert result["ci95"] == pytest.approx([2.5 - half, 2.5 + half])
    # two values: t(0.975, df=1) = 12.706204736174705, std = |a - b| / sqrt(2)
    two = t_interval([90.0, 92.0])
    assert two["ci95"] == pytest.approx([91 - 12.706204736174705 * 1.0, 91 + 12.706204736174705 * 1.0])
    assert t_interval([5.0]) == {"values": [5.0], "n": 1, "mean": 5.0, "std": None, "ci95": None}
    diff = paired_difference([3.0, 4.0, 5.0], [1.0, 1.5, 2.5])  # differences 2.0, 2.5, 2.5
    assert diff["mean"] == pytest.approx(7 / 3) and diff["excludes_zero"] is True
    assert paired_difference([1.0, 2.0], [2.0, 1.0])["excludes_zero"] is False
    assert [where_in_interval(v, [1.0, 2.0]) for v in (0.5, 1.5, 2.5)] == ["below", "inside", "above"]
    assert parse_target_percent("Astroformer paper, Galaxy10 DECaLS top-1 94.86%") == 94.86
    assert parse_target_percent("sanity check: >90% top-1") == 90.0 and parse_target_percent("none") is None


# ---------------------------------------------------------------------------------------------
# The cv itself
# ---------------------------------------------------------------------------------------------


def sigterm_in(run_name: str, epoch: int, step: int):
    """A step hook raising the SIGTERM flag in one run of the cv (what the signal handler does)."""

    def hook(trainer, e: int, s: int) -> None:
        if trainer.run_dir.name == run_name and (e, s) == (epoch, step):
            trainer.stop_signal = signal.SIGTERM

    return hook


@pytest.fixture(scope="module")
def two_cvs(cifar10_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The same 2-fold cv twice: straight through, and run as job array + interruption + re-run."""
    out = tmp_path_factory.mktemp("cv")
    straight = cv.run_cv(load_recipe(None, cv_overrides(out / "a", cifar10_small)), folds=2, log="quiet")

    base = load_recipe(None, cv_overrides(out / "b", cifar10_small))
    parent = cv.run_cv(base, folds=2, fold=0, seed=0, log="quiet")  # one job of an array
    assert not (parent / cv.CV_FILE).exists()  # single runs leave aggregation to --aggregate
    partial = cv.aggregate(parent)
    finished_mtime = (parent / "fold0-seed0" / "summary.json").stat().st_mtime_ns
    with pytest.raises(TrainingInterrupted):
        cv.run_cv(base, folds=2, log="quiet", step_hook=sigterm_in("fold1-seed0", 1, 1))
    assert cv.run_state(parent / "fold1-seed0") == "resumable"
    resumed = cv.run_cv(base, folds=2, log="quiet")
    assert resumed == parent
    assert (parent / "fold0-seed0" / "summary.json").stat().st_mtime_ns == finished_mtime  # not retrained
    return straight, parent, partial


def test_interrupted_cv_resumes_to_the_same_cv_json(two_cvs: tuple[Path, Path, dict]) -> None:
    straight, resumed, partial = two_cvs
    assert partial["runs"] == ["fold0-seed0"] and partial["missing"] == ["fold1-seed0"]
    assert partial["metrics"]["top1"]["ci95"] is None
    text = (straight / cv.CV_FILE).read_text()
    assert text == (resumed / cv.CV_FILE).read_text()  # byte for byte
    report = json.loads(text)
    assert (report["folds"], report["repeats"], report["seeds"]) == (2, 1, 1)
    assert report["runs"] == ["fold0-seed0", "fold1-seed0"] and report["missing"] == []
    assert report["selected_on"] == "val"
    for key in ("top1", "macro_f1", "balanced_accuracy", "test_top1", "test_macro_f1"):
        stats = report["metrics"][key]
        assert len(stats["values"]) == 2 and stats["mean"] == pytest.approx(np.mean(stats["values"]))
        assert stats["ci95"][0] <= stats["mean"] <= stats["ci95"][1]
    for name in report["runs"]:  # ordinary run directories recording their fold
        split = json.loads((straight / name / "split.json").read_text())
        assert split["heldout_split"] == "fold" and split["folds"] == 2 and split["num_val"] == 100
        assert split["num_test"] == 50


def test_cli_aggregate_and_compare(
    two_cvs: tuple[Path, Path, dict], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    straight, resumed, _ = two_cvs
    code, out, err = run_astro(["cv", "--aggregate", straight], monkeypatch, capsys)
    assert code == 0, err
    assert "±" in out and "val top-1 %" in out and "test top-1 %" in out

    report = compare_paths(straight, resumed)  # identical cvs: every paired difference is zero
    assert report["kind"] == "cv" and report["paired_runs"] == ["fold0-seed0", "fold1-seed0"]
    assert report["metrics"]["top1"]["difference"]["mean"] == 0.0
    assert report["metrics"]["top1"]["difference"]["excludes_zero"] is False
    code, out, err = run_astro(
        ["compare", straight, "--json", straight.parent / "t.json"], monkeypatch, capsys
    )
    assert code == 0, err
    target = json.loads((straight.parent / "t.json").read_text())
    assert target["target_value"] == 99.5 and target["metric"] == "test_top1"
    assert target["position"] == "above" and "above" in out  # a tiny model is far from 99.5%
    runs = compare_paths(straight / "fold0-seed0", resumed / "fold0-seed0")
    assert runs["kind"] == "runs" and runs["metrics"]["top1"]["difference"] == 0.0
    code, _, err = run_astro(["compare", straight, straight / "fold0-seed0"], monkeypatch, capsys)
    assert code == 2 and "not one of each" in err


def test_parallel_launches_one_subprocess_per_run_with_its_device(
    cifar10_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[tuple[list[str], str]] = []

    def fake_run(command, env, stdout, stderr):
        launched.append((command, env.get("CUDA_VISIBLE_DEVICES")))
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    base = load_recipe(None, cv_overrides(tmp_path, cifar10_small))
    with pytest.raises(AstroError, match="4 run\\(s\\) failed"):
        cv.run_parallel("RECIPE", ["train.epochs=1"], base, 2, 1, 2, parallel=2, devices=["0", "1"])
    runs = sorted((c[c.index("--fold") + 1], c[c.index("--seed") + 1]) for c, _ in launched)
    assert runs == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert {device for _, device in launched} <= {"0", "1"}
    assert all(c[-1] == "train.epochs=1" and "--quiet" in c for c, _ in launched)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folds", "1"], "--folds must be at least 2"),
        (["--folds", "25"], "has only 20 training images; use at most --folds 20"),
        (["--folds", "2", "--fold", "2"], "--fold 2 is out of range"),
        (["--folds", "2", "--fold", "0", "--seed", "1"], "--seed 1 is out of range"),
    ],
)
def test_bad_cv_input_is_one_line(
    cifar10_small: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    args: list[str],
    message: str,
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  name: resnet20\n")
    overrides = cv_overrides(tmp_path, cifar10_small)
    code, _, err = run_astro(["cv", "--recipe", recipe, *args, *overrides], monkeypatch, capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "tiny-cv" / "fold0-seed0").exists()


def test_aggregate_without_finished_runs_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run_astro(["cv", "--aggregate", tmp_path], monkeypatch, capsys)
    assert code == 2 and "not a cv folder" in err and len(err.strip().splitlines()) == 1
    base = load_recipe(None, ["output.dir=" + str(tmp_path)])
    cv.write_plan(tmp_path / "run-cv", base, 2, 1, 1)
    (tmp_path / "run-cv" / "fold0-seed0").mkdir()
    code, _, err = run_astro(["cv", "--aggregate", tmp_path / "run-cv"], monkeypatch, capsys)
    assert code == 2 and "no run in" in err and "has finished" in err and len(err.strip().splitlines()) == 1


def test_bench_runs_shows_cv_means_with_error_bars(two_cvs: tuple[Path, Path, dict], tmp_path: Path) -> None:
    from astrocli.experiments.runs import plot_scaling, read_runs

    straight, _, _ = two_cvs
    runs = read_runs(straight.parent)  # one cv parent, its two fold runs folded into it
    assert [r.run for r in runs] == [str(straight)]
    report = json.loads((straight / cv.CV_FILE).read_text())
    assert runs[0].best_top1 == report["metrics"]["top1"]["mean"] and runs[0].cv_runs == 2
    assert runs[0].top1_ci95 == report["metrics"]["top1"]["ci95"] and runs[0].params
    png = plot_scaling(runs, tmp_path / "scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_fold_keeps_the_keys_the_user_set_so_auto_fills_the_rest() -> None:
    """A fold's recipe is a copy that remembers which keys the user set: with ``augment.preset: auto``
    a short recipe gets batch size, crop and lr from each fold's data, as ``astro train`` would."""
    from astrocli.data.defaults import DataFacts, resolve_defaults
    from astrocli.recipe import given_keys

    base = load_recipe(None, ["model.name=cct_2_3x2_32", "data.source=digits", "train.epochs=3"])
    run = cv.plan_runs(folds=2, repeats=1, seeds=1)[0]
    fold_recipe = cv.run_recipe(base, run)
    assert given_keys(fold_recipe) == given_keys(base)
    assert "train.batch_size" not in given_keys(fold_recipe)
    facts = DataFacts(img_size=32, in_chans=1, num_images=50, num_classes=10, grayscale=True, source="digits")
    resolved, _ = resolve_defaults(fold_recipe, facts)
    assert resolved.train.batch_size == 8  # 50 images: the auto rule's 8 steps an epoch, not 128
    assert resolved.augment.crop == "pad_crop" and resolved.train.epochs == 3
