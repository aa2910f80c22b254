"""Metrics against scikit-learn / torch references and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import top_k_accuracy_score

from astrocli import metrics


@pytest.fixture
def random_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 7)) * 2.0
    targets = rng.integers(0, 7, size=200)
    return logits, targets


def test_topk_matches_sklearn(random_scores):
    logits, targets = random_scores
    got = metrics.topk_accuracy(logits, targets, ks=(1, 3, 5))
    for k in (1, 3, 5):
        expected = top_k_accuracy_score(targets, logits, k=k, labels=list(range(7))) * 100
        assert got[k] == pytest.approx(expected)
    assert metrics.topk_accuracy(logits, targets, ks=(7,))[7] == 100.0


def test_topk_accepts_torch_tensors(random_scores):
    logits, targets = random_scores
    assert metrics.topk_accuracy(
        torch.from_numpy(logits), torch.from_numpy(targets)
    ) == metrics.topk_accuracy(logits, targets)


def test_confusion_matrix_matches_sklearn(random_scores):
    logits, targets = random_scores
    preds = logits.argmax(1)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(targets, preds, 7), sk_confusion_matrix(targets, preds, labels=range(7))
    )


def test_ece_hand_computed():
    # Confidences 0.9, 0.9 (one right, one wrong) fall in bin 13 of 15 (acc 0.5, conf 0.9);
    # confidence 0.5 (right) falls in bin 7 (acc 1.0, conf 0.5).
    probs = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.2, 0.5, 0.3]])
    targets = np.array([0, 1, 1])
    expected = (2 / 3) * abs(0.5 - 0.9) + (1 / 3) * abs(1.0 - 0.5)
    assert metrics.expected_calibration_error(probs, targets) == pytest.approx(expected)


def test_ece_perfectly_calibrated_is_zero():
    probs = np.tile([1.0, 0.0], (10, 1))
    assert metrics.expected_calibration_error(probs, np.zeros(10)) == 0.0


def test_nll_matches_torch_cross_entropy(random_scores):
    logits, targets = random_scores
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    assert metrics.nll_loss(metrics.softmax(logits), targets) == pytest.approx(expected, rel=1e-9)


def test_classification_metrics_report():
    # 3 classes, hand-checkable: preds = [0, 0, 1, 1, 2, 0]
    targets = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    report = metrics.classification_metrics(probs, targets, ["a", "b", "c"])
    assert report["num_samples"] == 6
    assert report["top1"] == pytest.approx(5 / 6 * 100)
    assert report["top5"] == 100.0
    a, b, c = report["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3), 1.0, 2)
    assert (c["precision"], c["recall"], c["f1"]) == (1.0, 0.5, pytest.approx(2 / 3))
    assert b["f1"] == 1.0
    assert report["macro"]["f1"] == pytest.approx((0.8 + 1.0 + 2 / 3) / 3)
    assert report["weighted"]["recall"] == pytest.approx(5 / 6)
    assert report["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [1, 0, 1]]
    assert report["loss"] == pytest.approx(-np.log(0.8 + 0.2 / 3) * 5 / 6 - np.log(0.2 / 3) / 6)


def test_absent_class_reports_zero_not_nan():
    report = metrics.classification_metrics(np.eye(3)[[0, 1]], np.array([0, 1]), ["a", "b", "c"])
    assert report["per_class"][2] == {
        "class_index": 2,
        "label": "c",
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }


def test_nll_from_log_probs_is_exact_for_confident_mistakes():
    logits = np.array([[0.0, 900.0, -50.0], [3.0, 1.0, 0.5]])
    targets = np.array([0, 0])
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(targets)).item()
    assert expected > 400  # softmax underflows to 0 for the true class of the first row
    got = metrics.nll_loss(None, targets, log_probs=metrics.log_softmax(logits))
    assert got == pytest.approx(expected, rel=1e-12)
