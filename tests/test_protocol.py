"""The validation protocol: selection never sees test images, the test split is scored once at the end,
``data.split=test`` is labelled, ``train.select_metric`` / ``train.patience``, macro-F1 / balanced
accuracy, and ``astro eval --ci``.

Training runs use the real CIFAR-10 sample (20 train + 5 test images per class) with resnet20 at 8 px
for a few steps, or the bundled digits with a scripted evaluation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_checkpoint, one_thread, run_astro  # noqa: F401 (autouse fixture)
from sklearn.metrics import balanced_accuracy_score, f1_score

from astrocli.checkpoint import read_tensors
from astrocli.data import build_datasets
from astrocli.engine import train
from astrocli.engine.trainer import Trainer
from astrocli.metrics import balanced_accuracy, confusion_matrix, macro_f1
from astrocli.recipe import load_recipe


def tiny(out: Path, root: Path, name: str, **extra: object):
    """resnet20 on 8-px CIFAR-10 images, 3 epochs of 2 steps, quietly, deterministic on the CPU."""
    values: dict[str, object] = {
        "data.source": "imagefolder",
        "data.root": str(root),
        "data.img_size": 8,
        "data.num_workers": 0,
        "data.pipeline": "loader",
        "data.val_fraction": 0.2,
        "model.name": "resnet20",
        "train.epochs": 3,
        "train.batch_size": 16,
        "train.max_steps_per_epoch": 2,
        "train.lr": 0.05,
        "train.device": "cpu",
        "output.dir": str(out),
        "output.name": name,
        "output.log": "quiet",
        "output.plots": False,
    }
    values.update(extra)
    return load_recipe(None, [f"{k}={v}" for k, v in values.items()])


def poisoned_copy(root: Path, dest: Path) -> Path:
    """A copy of ``root`` whose test images all carry a wrong label (each class folder shifted by one)."""
    shutil.copytree(root / "train", dest / "train")
    classes = sorted(p.name for p in (root / "test").iterdir())
    for i, cls in enumerate(classes):
        shutil.copytree(root / "test" / cls, dest / "test" / classes[(i + 1) % len(classes)])
    return dest


def test_auto_split_keeps_the_test_split_apart(cifar10_small: Path) -> None:
    bundle = build_datasets(tiny(Path("unused"), cifar10_small, "x").data)
    assert bundle.split_info["heldout_split"] == "stratified" and bundle.selected_on == "val"
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (160, 40, 50)
    members = bundle.split_info["members"]
    assert all(path.startswith("train/") for path in members["train"] + members["val"])
    assert all(path.startswith("test/") for path in members["test"])
    assert not set(members["train"]) & set(members["val"])
    assert sorted(members["train_positions"] + members["val_positions"]) == list(range(200))
    assert set(bundle.split_info["counts"]["val"].values()) == {4}  # stratified

    papers = build_datasets(tiny(Path("unused"), cifar10_small, "x", **{"data.split": "test"}).data)
    assert papers.selected_on == "test" and papers.test is None and len(papers.val) == 50


def test_poisoned_test_labels_change_nothing_but_the_test_score(cifar10_small: Path, tmp_path: Path) -> None:
    poisoned = poisoned_copy(cifar10_small, tmp_path / "poisoned")
    clean_dir = train(tiny(tmp_path, cifar10_small, "clean"))
    bad_dir = train(tiny(tmp_path, poisoned, "bad"))

    clean, bad = (json.loads((d / "summary.json").read_text()) for d in (clean_dir, bad_dir))
    assert clean["selected_on"] == bad["selected_on"] == "val"
    assert clean["best_epoch"] == bad["best_epoch"] and clean["best_metrics"] == bad["best_metrics"]
    best_clean, _ = read_tensors(clean_dir / "best.safetensors")
    best_bad, _ = read_tensors(bad_dir / "best.safetensors")
    assert all(torch.equal(best_clean[k], best_bad[k]) for k in best_clean)
    val_columns = ["val_loss", "val_top1", "val_macro_f1", "val_balanced_accuracy"]
    rows = [(d / "metrics.csv").read_text().splitlines() for d in (clean_dir, bad_dir)]
    header = rows[0][0].split(",")
    assert all(c in header for c in val_columns)
    assert header[:7] == ["epoch", "train_loss", "val_loss", "val_top1", "val_top5", *val_columns[2:]]
    assert [r.split(",")[:7] for r in rows[0]] == [r.split(",")[:7] for r in rows[1]]
    # The test split was read (once, at the end), and its labels differ between the two.
    for key in ("test_top1", "test_top5", "test_loss", "test_macro_f1"):
        assert key in clean and key in bad
    assert clean["test_loss"] != bad["test_loss"]


def test_split_test_is_the_labelled_papers_protocol(cifar10_small: Path, tmp_path: Path) -> None:
    recipe = tiny(tmp_path, cifar10_small, "papers", **{"data.split": "test", "train.epochs": 1})
    summary = json.loads((train(recipe) / "summary.json").read_text())
    assert summary["selected_on"] == "test" and "test_top1" not in summary
    split = json.loads((tmp_path / "papers" / "split.json").read_text())
    assert split["heldout_split"] == "test" and split["selected_on"] == "test"


def scripted_evaluate(monkeypatch: pytest.MonkeyPatch, script: list[dict[str, float]]) -> None:
    """Make Trainer.evaluate return ``script``'s validation metrics, one entry per evaluation."""
    calls = iter(script)

    def fake(self, model, batches=None, prefix="val_", keep=None):
        values = {"top5": 100.0, "macro_f1": 0.0, "balanced_accuracy": 0.0, **next(calls)}
        return {f"{prefix}{k}": v for k, v in values.items()}

    monkeypatch.setattr(Trainer, "evaluate", fake)


DIGITS = {
    "data.source": "digits",
    "data.img_size": 8,
    "data.num_workers": 0,
    "data.pipeline": "loader",
    "data.val_fraction": 0.03,
    "model.name": "resnet20",
    "train.epochs": 5,
    "train.batch_size": 8,
    "train.max_steps_per_epoch": 1,
    "train.device": "cpu",
    "output.log": "quiet",
    "output.plots": False,
}
SCRIPT = [
    {"top1": 10.0, "loss": 2.0},
    {"top1": 30.0, "loss": 3.0},
    {"top1": 20.0, "loss": 1.0},
    {"top1": 25.0, "loss": 1.5},
    {"top1": 5.0, "loss": 0.5},
]


@pytest.mark.parametrize(
    ("metric", "patience", "best_epoch", "epochs_run"),
    [("top1", 0, 2, 5), ("loss", 0, 5, 5), ("top1", 2, 2, 4), ("loss", 1, 1, 2)],
)
def test_select_metric_and_patience(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    metric: str,
    patience: int,
    best_epoch: int,
    epochs_run: int,
) -> None:
    scripted_evaluate(monkeypatch, SCRIPT)
    overrides = {**DIGITS, "train.select_metric": metric, "train.patience": patience, "output.dir": tmp_path}
    run_dir = train(load_recipe(None, [f"{k}={v}" for k, v in overrides.items()]))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == best_epoch and summary["epochs"] == epochs_run
    assert summary["stopped_early"] == (epochs_run if epochs_run < 5 else None)
    assert summary["best_metrics"]["top1"] == SCRIPT[best_epoch - 1]["top1"]
    assert (run_dir / "last.safetensors").is_file()


@pytest.mark.filterwarnings("ignore:y_pred contains classes")
def test_macro_f1_and_balanced_accuracy_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 6, 300)
    targets[targets == 5] = 4  # class 5 never occurs in the targets
    preds = np.where(rng.random(300) < 0.6, targets, rng.integers(0, 6, 300))
    confusion = confusion_matrix(targets, preds, 6)
    assert macro_f1(confusion) == pytest.approx(
        100 * f1_score(targets, preds, labels=range(6), average="macro", zero_division=0)
    )
    assert balanced_accuracy(confusion) == pytest.approx(100 * balanced_accuracy_score(targets, preds))
    assert macro_f1(np.zeros((3, 3))) == balanced_accuracy(np.zeros((3, 3))) == 0.0


def test_eval_ci_reports_seeded_bootstrap_intervals(
    cifar10_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = make_checkpoint(tmp_path / "m.safetensors", "resnet20", 32, cifar10_small / "train")
    reports = []
    for name in ("a", "b"):
        code, out, err = run_astro(
            [
                "eval",
                checkpoint,
                f"data.root={cifar10_small}",
                "data.split=test",
                "--ci",
                "--resamples",
                "200",
                "--json",
                tmp_path / f"{name}.json",
            ],
            monkeypatch,
            capsys,
        )
        assert code == 0, err
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert "95% CI" in out and "macro-F1" in out and "balanced accuracy" in out
    report = reports[0]
    for key in ("top1", "macro_f1", "balanced_accuracy"):
        low, high = report[f"{key}_ci95"]
        assert low <= report[key] <= high and high > low
        assert report[f"{key}_ci95"] == reports[1][f"{key}_ci95"]  # seeded: the same interval twice
    assert report["ci"] == {"method": "percentile bootstrap", "resamples": 200, "seed": 0}
    assert "members" not in report["split_info"]

    code, _, err = run_astro(["eval", checkpoint, "--ci", "--resamples", "5"], monkeypatch, capsys)
    assert code == 2 and "--resamples must be at least 100" in err and "Traceback" not in err
