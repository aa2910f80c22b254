"""Classification metrics: top-k accuracy, per-class precision/recall/F1, confusion matrix, ECE.

Everything takes class probabilities (or logits, for top-k) as a numpy array or torch tensor
``[N, K]`` and integer targets ``[N]``, and returns plain Python numbers so the results go
straight into JSON. Precision / recall / F1 come from scikit-learn; top-k and the expected
calibration error are a few lines of numpy (scikit-learn has neither for multi-class scores).

    probs = softmax(logits)
    report = classification_metrics(probs, targets, class_names, loss=0.41)
    report["top1"], report["per_class"][0]["f1"], report["ece"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15


def to_numpy(values: Any) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor (any device) or sequence."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        return values.detach().float().cpu().numpy() if values.is_floating_point() else values.cpu().numpy()
    return np.asarray(values)


def log_softmax(logits: Any) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64 (exact NLL even for huge logits)."""
    z = to_numpy(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: Any) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64."""
    return np.exp(log_softmax(logits))


def topk_accuracy(scores: Any, targets: Any, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each k (k >= class count is 100%; ties count in the target's favour).

    Args:
        scores: ``[N, K]`` logits or probabilities (only their order matters).
        targets: ``[N]`` integer class indices.
        ks: the k values.
    """
    scores_np, targets_np = to_numpy(scores), to_numpy(targets).astype(np.int64)
    if len(targets_np) == 0:
        return {k: 0.0 for k in ks}
    # Rank of the true class = how many classes score strictly higher than it.
    true_scores = np.take_along_axis(scores_np, targets_np[:, None], axis=1)
    rank = (scores_np > true_scores).sum(axis=1)
    return {k: float((rank < k).mean() * 100.0) for k in ks}


def confusion_matrix(targets: Any, preds: Any, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts: row = true class, column = predicted class."""
    t = to_numpy(targets).astype(np.int64)
    p = to_numpy(preds).astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def expected_calibration_error(probs: Any, targets: Any, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017) of the top-1 confidence, in [0, 1].

    Confidences are split into ``n_bins`` equal-width bins over (0, 1]; ECE is the
    sample-weighted mean of |accuracy - mean confidence| over the bins.
    """
    p = to_numpy(probs).astype(np.float64)
    t = to_numpy(targets).astype(np.int64)
    if len(t) == 0:
        return 0.0
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    # Bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 goes to the first bin.
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def per_class_report(targets: Any, preds: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, with macro and weighted averages.

    Classes absent from both targets and predictions get 0 (not NaN) so the report stays JSON.
    """
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(class_names)))
    t, p = to_numpy(targets).astype(np.int64), to_numpy(preds).astype(np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(
        t, p, labels=labels, average=None, zero_division=0
    )
    per_class = [
        {
            "class_index": i,
            "label": str(class_names[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in labels
    ]
    averages = {}
    for average in ("macro", "weighted"):
        pr, rc, f, _ = precision_recall_fscore_support(t, p, labels=labels, average=average, zero_division=0)
        averages[average] = {
            "precision": float(pr),
            "recall": float(rc),
            "f1": float(f),
            "support": int(len(t)),
        }
    return {"per_class": per_class, **averages}


def classification_metrics(
    probs: Any, targets: Any, class_names: Sequence[str], loss: float | None = None
) -> dict[str, Any]:
    """Every metric ``astro eval`` reports, as JSON-able data.

    Keys: ``num_samples``, ``top1``, ``top5``, ``macro_f1``, ``balanced_accuracy`` (percent),
    ``loss`` (given, or the mean negative
    log-likelihood of ``probs``), ``ece``, ``per_class``, ``macro``, ``weighted``,
    ``confusion_matrix`` (list of rows), ``class_names``.
    """
    p = to_numpy(probs).astype(np.float64)
    t = to_numpy(targets).astype(np.int64)
    num_classes = len(class_names)
    if p.ndim != 2 or p.shape[1] != num_classes:
        raise ValueError(f"probabilities have shape {p.shape}, expected [N, {num_classes}]")
    preds = p.argmax(axis=1)
    topk = topk_accuracy(p, t, ks=(1, 5))
    if loss is None:
        loss = nll_loss(p, t)
    report = per_class_report(t, preds, class_names)
    confusion = confusion_matrix(t, preds, num_classes)
    return {
        "num_samples": int(len(t)),
        "top1": topk[1],
        "top5": topk[5],
        "macro_f1": macro_f1(confusion),
        "balanced_accuracy": balanced_accuracy(confusion),
        "loss": float(loss),
        "ece": expected_calibration_error(p, t),
        **report,
        "confusion_matrix": confusion.tolist(),
        "class_names": [str(c) for c in class_names],
    }


def nll_loss(probs: Any, targets: Any, log_probs: Any = None) -> float:
    """Mean negative log-likelihood of the true class (cross-entropy when ``probs`` is a softmax).

    Pass ``log_probs`` (e.g. from :func:`log_softmax`) when available: probabilities that
    underflow to 0 are clipped at 1e-300, log-probabilities are exact.
    """
    t = to_numpy(targets).astype(np.int64)
    if len(t) == 0:
        return 0.0
    if log_probs is None:
        log_probs = np.log(np.clip(to_numpy(probs).astype(np.float64), 1e-300, None))
    true_log_p = np.take_along_axis(to_numpy(log_probs).astype(np.float64), t[:, None], axis=1)[:, 0]
    return float(-true_log_p.mean())


# Macro-F1 and balanced accuracy from a confusion matrix: the trainer accumulates the matrix on the
# device (and sums it across DDP ranks), so these work from counts; scikit-learn's f1_score and
# balanced_accuracy_score need the per-image labels. The definitions match scikit-learn's exactly
# (tested against them): macro-F1 over every class with zero_division=0, balanced accuracy = mean
# recall over the classes that have images.


def macro_f1(confusion: Any) -> float:
    """Macro-averaged F1 in percent from a ``[K, K]`` confusion matrix (rows true, columns predicted).

    Equals ``100 * sklearn.metrics.f1_score(t, p, labels=range(K), average="macro", zero_division=0)``.
    """
    c = to_numpy(confusion).astype(np.float64)
    if c.size == 0 or c.sum() == 0:
        return 0.0
    tp = np.diag(c)
    support, predicted = c.sum(axis=1), c.sum(axis=0)
    denominator = support + predicted  # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(100.0 * f1.mean())


def balanced_accuracy(confusion: Any) -> float:
    """Balanced accuracy (mean per-class recall) in percent over the classes present in the targets.

    Equals ``100 * sklearn.metrics.balanced_accuracy_score(t, p)``.
    """
    c = to_numpy(confusion).astype(np.float64)
    support = c.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float(100.0 * (np.diag(c)[present] / support[present]).mean())
