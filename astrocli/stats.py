"""Statistics for honest small-data results: Student-t intervals, paired differences, bootstrap.

    interval = t_interval([91.2, 90.4, 92.0, 90.9, 91.5])   # {"mean", "std", "ci95", "n", ...}
    paired_difference(a_values, b_values)                     # mean of a - b with its interval
    bootstrap_metrics(preds, targets, num_classes)            # {"top1": [lo, hi], ...} over images

The t interval treats the K x N x S cross-validation values as independent draws; they are not
quite (folds share training images), so it is a little narrow (Nadeau & Bengio 2003). It is the
interval the field reports, and it is far more honest than one split and one seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from astrocli.metrics import balanced_accuracy, confusion_matrix, macro_f1

CONFIDENCE = 0.95


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof=1) and Student-t ``confidence`` interval of ``values``.

    With one value the standard deviation and interval are None (nothing to estimate them from).
    """
    from scipy import stats

    x = np.asarray([float(v) for v in values], dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"values": [], "n": 0, "mean": None, "std": None, "ci95": None}
    mean = float(x.mean())
    if n < 2:
        return {"values": x.tolist(), "n": 1, "mean": mean, "std": None, "ci95": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return {"values": x.tolist(), "n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """The per-pair difference ``a - b`` with its t interval and whether the interval excludes zero."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    result = t_interval([x - y for x, y in zip(a, b, strict=True)])
    ci = result["ci95"]
    result["excludes_zero"] = bool(ci is not None and (ci[0] > 0 or ci[1] < 0))
    return result


def where_in_interval(value: float, ci: Sequence[float] | None) -> str:
    """``below``, ``inside`` or ``above`` the interval (``unknown`` without one)."""
    if ci is None:
        return "unknown"
    if value < ci[0]:
        return "below"
    if value > ci[1]:
        return "above"
    return "inside"


def parse_target_percent(target: str) -> float | None:
    """The first percentage in a recipe's ``target`` text ("... top-1 94.86%" -> 94.86), or None."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*%", target or "")
    return float(match.group(1)) if match else None


def _image_metrics(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    confusion = confusion_matrix(targets, preds, num_classes)
    top1 = 100.0 * np.trace(confusion) / max(len(targets), 1)
    return np.array([top1, macro_f1(confusion), balanced_accuracy(confusion)])


BOOTSTRAP_METRICS = ("top1", "macro_f1", "balanced_accuracy")


def image_scores(preds: Any, targets: Any, num_classes: int) -> list[float]:
    """Top-1, macro-F1 and balanced accuracy (percent) of ``preds`` (the order of BOOTSTRAP_METRICS)."""
    p, t = np.asarray(preds, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    return [float(v) for v in _image_metrics(p, t, num_classes)]


def bootstrap_metrics(
    preds: Any, targets: Any, num_classes: int, resamples: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """Seeded percentile-bootstrap 95% intervals of top-1, macro-F1 and balanced accuracy (percent),
    resampling images with replacement (scipy.stats.bootstrap, paired over predictions and labels)."""
    from scipy import stats

    p = np.asarray(preds, dtype=np.int64)
    t = np.asarray(targets, dtype=np.int64)
    if len(t) < 2:
        raise ValueError("a bootstrap interval needs at least 2 images")
    result = stats.bootstrap(
        (p, t),
        lambda pp, tt: _image_metrics(pp, tt, num_classes),
        n_resamples=resamples,
        paired=True,
        vectorized=False,
        method="percentile",
        confidence_level=CONFIDENCE,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return {name: [float(low[i]), float(high[i])] for i, name in enumerate(BOOTSTRAP_METRICS)}


# ---------------------------------------------------------------------------------------------
# Two models on the same images: paired bootstrap, McNemar, paired permutation
# ---------------------------------------------------------------------------------------------


def mcnemar_exact(correct_a: Any, correct_b: Any) -> dict[str, Any]:
    """Exact McNemar test of ``a`` and ``b`` being right equally often on the same images.

    Only the discordant images count: ``b01`` (a right, b wrong) and ``b10`` (a wrong, b right); under
    the null each is a fair coin, so the two-sided p is the exact binomial test of ``b01`` successes
    in ``b01 + b10`` draws at 0.5 (scipy.stats.binomtest). No discordant image: p = 1.
    """
    from scipy import stats

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(stats.binomtest(only_a, n, 0.5).pvalue)
    return {"a_only_right": only_a, "b_only_right": only_b, "p": p}


def _differences(pa: np.ndarray, pb: np.ndarray, t: np.ndarray, num_classes: int) -> np.ndarray:
    return _image_metrics(pa, t, num_classes) - _image_metrics(pb, t, num_classes)


def paired_bootstrap(
    preds_a: Any, preds_b: Any, targets: Any, num_classes: int, resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``a - b`` for top-1, macro-F1 and balanced accuracy (percent) on the same images, each with a
    seeded percentile-bootstrap 95% interval: every resample draws the images with replacement and
    scores *both* models on that draw, so what the images share cancels (the pairing).

    The p-value: exact McNemar for top-1 (:func:`mcnemar_exact`); a paired permutation test for
    macro-F1 and balanced accuracy (each image's two predictions swapped at random under the null,
    scipy.stats.permutation_test), which are not sums over images.
    """
    pa, pb = np.asarray(preds_a, dtype=np.int64), np.asarray(preds_b, dtype=np.int64)
    t = np.asarray(targets, dtype=np.int64)
    if not len(pa) == len(pb) == len(t):
        raise ValueError(f"paired predictions need equal lengths, got {len(pa)}, {len(pb)}, {len(t)}")
    if len(t) < 2:
        raise ValueError("a paired bootstrap needs at least 2 images")
    rng = np.random.default_rng(seed)
    draws = np.stack(
        [_differences(pa[i], pb[i], t[i], num_classes) for i in rng.integers(0, len(t), (resamples, len(t)))]
    )
    observed = _differences(pa, pb, t, num_classes)
    low, high = np.percentile(draws, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2], axis=0)
    p_values = [mcnemar_exact(pa == t, pb == t)["p"], *_permutation_p(pa, pb, t, num_classes, seed)]
    return {
        name: {"difference": float(observed[i]), "ci95": [float(low[i]), float(high[i])], "p": p_values[i]}
        for i, name in enumerate(BOOTSTRAP_METRICS)
    }


def _permutation_p(
    pa: np.ndarray, pb: np.ndarray, t: np.ndarray, num_classes: int, seed: int, resamples: int = 2000
) -> list[float]:
    """Two-sided paired-permutation p of macro-F1 and balanced accuracy (a and b exchangeable per image)."""
    from scipy import stats

    p_values = []
    for column in (1, 2):  # scipy's permutation test takes one statistic at a time

        def statistic(x: np.ndarray, y: np.ndarray, column: int = column) -> float:
            return float(_differences(x, y, t, num_classes)[column])

        result = stats.permutation_test(
            (pa, pb),
            statistic,
            permutation_type="samples",
            vectorized=False,
            n_resamples=resamples,
            alternative="two-sided",
            rng=np.random.default_rng(seed),
        )
        p_values.append(float(result.pvalue))
    return p_values
