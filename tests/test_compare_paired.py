"""``astro compare`` only pairs what can be paired, and gives two single runs an interval.

Real images: tiny resnet20 runs on 8-px CIFAR-10 (20 train + 5 test per class) and on the Galaxy10
sample. Two cvs that differ in their data, their split seed or their folds are refused in one line; a
cv that has not finished is refused (or, with --partial, paired and flagged); nothing is written into
the folders compared. Two runs on the same held-out images get a paired-bootstrap interval and a
p-value; the statistics themselves are checked by hand on a small fixed case and against scipy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import one_thread, run_astro  # noqa: F401 (autouse fixture)
from scipy import stats

from astrocli.errors import AstroError
from astrocli.experiments import compare as compare_module
from astrocli.experiments import cv
from astrocli.experiments.compare import compare_paths
from astrocli.recipe import load_recipe
from astrocli.stats import mcnemar_exact, paired_bootstrap


def tiny_cv(
    out: Path, root: Path, name: str, folds: int = 3, fold: int | None = None, **extra: object
) -> Path:
    values: dict[str, object] = {
        "data.source": "imagefolder",
        "data.root": str(root),
        "data.img_size": 8,
        "data.num_workers": 0,
        "data.pipeline": "loader",
        "model.name": "resnet20",
        "train.epochs": 1,
        "train.batch_size": 16,
        "train.max_steps_per_epoch": 2,
        "train.device": "cpu",
        "train.calibrate": False,
        "output.dir": str(out),
        "output.name": name,
        "output.log": "quiet",
        "output.plots": False,
        **extra,
    }
    recipe = load_recipe(None, [f"{k}={v}" for k, v in values.items()])
    return cv.run_cv(recipe, folds=folds, fold=fold, log="quiet")


@pytest.fixture(scope="module")
def cvs(
    cifar10_small: Path, galaxy_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("compare")
    made = {"a": tiny_cv(out, cifar10_small, "a")}  # 3 folds, all finished
    for fold in (0, 1):  # the same cv with another training seed, 2 of its 3 folds finished
        made["b"] = tiny_cv(out, cifar10_small, "b", fold=fold, **{"train.seed": 7})
    made["seed"] = tiny_cv(out, cifar10_small, "seed", fold=0, **{"data.split_seed": 1})
    made["galaxy"] = tiny_cv(out, galaxy_sample_dir, "galaxy", fold=0)
    return made


def files_of(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_cvs_of_other_data_or_split_seed_are_refused(cvs: dict[str, Path]) -> None:
    with pytest.raises(AstroError, match=r"differ in (data root|class names|image count)"):
        compare_paths(cvs["a"], cvs["galaxy"], partial=True)
    with pytest.raises(AstroError, match=r"differ in data.split_seed \(0 vs 1\)"):
        compare_paths(cvs["a"], cvs["seed"], partial=True)


def test_cvs_with_other_fold_assignments_are_refused(cvs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "a-other-cv"
    shutil.copytree(cvs["a"], other)
    split_file = other / "fold1-seed0" / "split.json"
    split = json.loads(split_file.read_text())  # this fold held out one other image
    split["members"]["val_positions"][0] = split["members"]["train_positions"][0]
    split_file.write_text(json.dumps(split))
    with pytest.raises(AstroError, match="fold1-seed0 .* hold out different images"):
        compare_paths(cvs["a"], other)
    with pytest.raises(AstroError, match=r"different folds \(3x1 vs 2x1\)"):
        compare_paths(cvs["a"], _with_folds(cvs["a"], tmp_path, 2))


def _with_folds(parent: Path, tmp_path: Path, folds: int) -> Path:
    """A copy of ``parent`` whose plan says another number of folds."""
    copy = tmp_path / f"folds{folds}-cv"
    shutil.copytree(parent, copy)
    plan = json.loads((copy / cv.PLAN_FILE).read_text())
    plan["folds"] = folds
    (copy / cv.PLAN_FILE).write_text(json.dumps(plan))
    (copy / cv.CV_FILE).unlink()
    return copy


def test_a_partial_cv_is_refused_or_flagged_and_never_written_into(
    cvs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    before = {name: files_of(cvs[name]) for name in ("a", "b")}
    code, _, err = run_astro(["compare", cvs["a"], cvs["b"]], monkeypatch, capsys)
    assert code == 2 and "has not finished 1 of its 3 runs (fold2-seed0)" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, out, err = run_astro(["compare", cvs["a"], cvs["b"], "--partial"], monkeypatch, capsys)
    assert code == 0, err
    assert "paired over 2 of 3 runs" in out and "partial" in out
    report = compare_paths(cvs["a"], cvs["b"], partial=True)
    assert report["paired_runs"] == ["fold0-seed0", "fold1-seed0"] and report["partial"] is True
    assert {name: files_of(cvs[name]) for name in ("a", "b")} == before  # no cv.json written into b
    assert not (cvs["b"] / cv.CV_FILE).exists()


def test_two_runs_get_a_paired_interval_and_p(
    cvs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    a, b = cvs["a"] / "fold0-seed0", cvs["b"] / "fold0-seed0"  # same held-out images, other seeds
    before = files_of(a) | {"b/" + k: v for k, v in files_of(b).items()}
    code, out, err = run_astro(["compare", a, b, "--json", tmp_path / "c.json"], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "c.json").read_text())
    held_out = json.loads((a / "split.json").read_text())["num_val"]
    assert report["kind"] == "runs" and report["num_images"] == held_out
    for metric in ("top1", "macro_f1", "balanced_accuracy"):
        row = report["metrics"][metric]
        assert row["difference"] == pytest.approx(row["a"] - row["b"])
        assert row["ci95"][0] <= row["difference"] <= row["ci95"][1] and 0.0 <= row["p"] <= 1.0
    summary = json.loads((a / "summary.json").read_text())  # the checkpoint scores as it did in training
    assert report["metrics"]["top1"]["a"] == pytest.approx(summary["best_metrics"]["top1"], abs=1e-6)
    assert "95% CI of A - B" in out and f"paired over the same {held_out} held-out images" in out
    # compare reads the predictions the run saved; they equal a fresh pass of best.safetensors.
    assert (a / "predictions.npz").is_file()
    fresh = tmp_path / "without-saved-predictions"
    shutil.copytree(a, fresh, ignore=shutil.ignore_patterns("predictions.*"))
    saved, computed = compare_module._predictions(a), compare_module._predictions(fresh)
    assert [list(part) for part in saved] == [list(part) for part in computed]
    assert files_of(a) | {"b/" + k: v for k, v in files_of(b).items()} == before
    # Runs that held out other images, or saw other data, cannot be paired.
    with pytest.raises(AstroError, match="held out different images"):
        compare_paths(a, cvs["a"] / "fold1-seed0")
    code, _, err = run_astro(["compare", a, cvs["galaxy"] / "fold0-seed0"], monkeypatch, capsys)
    assert code == 2 and "differ in" in err and len(err.strip().splitlines()) == 1


def test_paired_bootstrap_and_mcnemar_on_a_hand_computed_case() -> None:
    # 10 images, A right on all, B wrong on 3: the per-image top-1 difference is 100 on 3 images and
    # 0 on 7, so a resample's difference is 10 * k with k ~ Binomial(10, 0.3). Its 2.5% quantile is
    # k = 0 (P(k = 0) = 0.7^10 = 0.028 > 0.025), its 97.5% quantile k = 6 (P(k <= 5) = 0.953 < 0.975
    # <= P(k <= 6) = 0.989): the interval is [0, 60] around the observed 30.
    targets = np.arange(10) % 3
    a = targets.copy()
    b = targets.copy()
    b[[1, 4, 7]] = (b[[1, 4, 7]] + 1) % 3
    result = paired_bootstrap(a, b, targets, 3, resamples=20000, seed=0)
    assert result["top1"]["difference"] == 30.0
    assert result["top1"]["ci95"] == [0.0, 60.0]
    # McNemar: 3 discordant images, all for A: exact two-sided p = 2 * 0.5^3 = 0.25.
    assert result["top1"]["p"] == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    right_a, right_b = rng.random(200) < 0.8, rng.random(200) < 0.7
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert mcnemar_exact(right_a, right_b)["p"] == pytest.approx(expected)
    assert mcnemar_exact(right_a, right_a)["p"] == 1.0  # no discordant image
