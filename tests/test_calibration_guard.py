"""Calibration cannot ruin predictions: a temperature fitted on too few held-out images or mistakes, at a
bound of its range, or one that does not lower the held-out ECE, is not applied; T = 1 is kept and the
run says why, in one warning line and in summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import one_thread, run_astro, tiny_digits_overrides  # noqa: F401 (autouse fixture)

from astrocli.calibration import MIN_IMAGES, calibrate_logits, calibration_summary, fit_temperature
from astrocli.checkpoint import load_checkpoint
from astrocli.inference.runner import load_runner
from astrocli.metrics import softmax


def test_ten_held_out_images_keep_temperature_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # data.val_fraction 0.00556 of the 1,797 real digits: 10 held-out images, one per class.
    overrides = tiny_digits_overrides(tmp_path, **{"data.val_fraction": 0.00556, "train.calibrate": True})
    code, _, err = run_astro(["train", "--recipe", "quickstart", *overrides], monkeypatch, capsys)
    assert code == 0, err
    run = tmp_path / "run"
    assert json.loads((run / "split.json").read_text())["num_val"] == 10
    summary = json.loads((run / "summary.json").read_text())
    calibration = summary["calibration"]
    assert calibration["applied"] is False and calibration["temperature"] == 1.0
    assert "10 held-out images are too few" in calibration["reason"]
    assert summary["temperature"] == 1.0 and summary["ece_calibrated"] == summary["ece"]
    lines = [line for line in err.splitlines() if "calibration" in line]
    assert lines == [f"warning: calibration not applied, temperature 1 kept: {calibration['reason']}"]
    for name in ("best", "last"):
        assert load_checkpoint(run / f"{name}.safetensors")[1].temperature == 1.0
    runner = load_runner(run / "best.safetensors", device="cpu")
    assert runner.meta.temperature == 1.0


def two_class_logits(groups: list[tuple[float, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Logits of images whose top-1 probability is ``p``: ``right`` of them right, ``wrong`` wrong."""
    logits, targets = [], []
    for p, right, wrong in groups:
        margin = float(np.log(p / (1 - p)))
        for i in range(right + wrong):
            logits.append([margin, 0.0])
            targets.append(0 if i < right else 1)
    return np.array(logits), np.array(targets)


def test_a_temperature_that_raises_the_ece_is_not_applied() -> None:
    # 100 held-out images, 13 mistakes: enough to fit on. The NLL optimum here is T = 1.07, and it
    # raises the ECE of these very images (the 0.71 group is always right, the 0.79 one half the
    # time: softening both moves their confidences away from their accuracy in the ECE's bins).
    logits, targets = two_class_logits([(0.71, 20, 0), (0.79, 10, 10), (0.95, 57, 3)])
    fitted = fit_temperature(logits, targets)
    raised = calibration_summary(logits, targets, fitted)
    assert raised["ece_calibrated"] > raised["ece"]  # the case the guard exists for
    result = calibrate_logits(logits, targets)
    assert result["applied"] is False and result["temperature"] == 1.0
    assert result["fitted_temperature"] == pytest.approx(fitted)
    assert "does not lower the held-out ECE" in result["reason"]
    assert result["ece_calibrated"] == result["ece"]


def test_a_fit_at_the_bound_or_with_few_mistakes_is_not_applied() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 10, size=200)
    noise = rng.normal(size=(200, 10))
    # Guessing: the logits say nothing about the labels, so the NLL wants T -> infinity (the bound).
    result = calibrate_logits(noise * 5, targets)
    assert result["applied"] is False and "at the bound" in result["reason"]
    assert (softmax(noise * 5).max(axis=1) > 0.2).any()  # T = 1 keeps the model's own probabilities
    right = noise.copy()
    right[np.arange(200), targets] += 10.0
    right[:3] = -right[:3]  # 3 mistakes
    assert "3 mistakes among 200" in calibrate_logits(right, targets)["reason"]
    assert "too few" in calibrate_logits(noise[: MIN_IMAGES - 1], targets[: MIN_IMAGES - 1])["reason"]


def test_a_fit_worth_keeping_is_applied() -> None:
    """An over-confident model of real data (logistic regression on scikit-learn's digits)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_held, y_train, y_held = train_test_split(x, y, train_size=300, random_state=0, stratify=y)
    logits = LogisticRegression(C=100, max_iter=2000).fit(x_train, y_train).decision_function(x_held)
    result = calibrate_logits(logits, y_held)
    assert result["applied"] is True and result["reason"] is None and result["temperature"] > 1.5
    assert result["ece_calibrated"] < result["ece"]
