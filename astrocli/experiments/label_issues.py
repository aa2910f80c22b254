"""Suspected label errors from out-of-fold probabilities: confident learning (Northcutt et al., 2021).

With the optional ``audit`` extra (cleanlab, AGPL-3.0) the flags come from
``cleanlab.filter.find_label_issues`` (``prune_by_noise_rate``); without it, from the built-in
version of the same method's ``confident_learning`` filter:

1. per class j, a threshold t_j = the mean predicted probability of j over the images labelled j;
2. an image's *confident class* is, among the classes k with p_k >= t_k, the most probable one;
3. an image whose confident class differs from its given label is flagged, and that class is the
   suggested label (for the others, the most probable class).

Every image is ranked, flagged ones first, each group by *self-confidence* (the probability of the
given label, lowest first), so the top of the list is where a person should look first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from astrocli.errors import AstroError

Method = Literal["auto", "builtin", "cleanlab"]


@dataclass(frozen=True)
class LabelRanking:
    """The ranking of every image: ``order`` (most suspect first), per image ``flagged``,
    ``suggested`` label and ``self_confidence``, and the method that produced it."""

    order: np.ndarray
    flagged: np.ndarray
    suggested: np.ndarray
    self_confidence: np.ndarray
    method: str


def confident_classes(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each image's confident class (steps 1 and 2 of the module doc); -1 when no class passes."""
    k = probs.shape[1]
    thresholds = np.array(
        [probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)], dtype=np.float64
    )
    above = probs >= thresholds[None, :] - 1e-12
    masked = np.where(above, probs, -1.0)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def builtin_flags(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, suggested) by the built-in confident learning filter."""
    confident = confident_classes(labels, probs)
    flagged = (confident >= 0) & (confident != labels)
    suggested = np.where(flagged, confident, probs.argmax(axis=1))
    return flagged, suggested


def cleanlab_flags(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged, suggested) from cleanlab's ``find_label_issues`` (raises ImportError without it)."""
    from cleanlab.filter import find_label_issues

    flagged = np.asarray(find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1))
    confident = confident_classes(labels, probs)
    fallback = np.where(probs.argmax(axis=1) != labels, probs.argmax(axis=1), confident)
    return flagged, np.where(flagged, np.where(fallback >= 0, fallback, probs.argmax(axis=1)), labels)


def rank_label_issues(labels: np.ndarray, probs: np.ndarray, method: Method = "auto") -> LabelRanking:
    """Rank every image by how likely its label is wrong (see the module doc)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise AstroError(f"out-of-fold probabilities have shape {probs.shape} for {len(labels)} labels")
    probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    name = "built-in confident learning"
    if method in ("auto", "cleanlab"):
        try:
            import cleanlab

            flagged, suggested = cleanlab_flags(labels, probs)
            name = f"cleanlab {cleanlab.__version__} find_label_issues (prune_by_noise_rate)"
        except ImportError:
            if method == "cleanlab":
                raise AstroError(
                    "--label-method cleanlab needs the optional extra: pip install 'astrocli[audit]' "
                    "(cleanlab, AGPL-3.0); or use --label-method builtin"
                ) from None
            flagged, suggested = builtin_flags(labels, probs)
    else:
        flagged, suggested = builtin_flags(labels, probs)
    self_confidence = probs[np.arange(len(labels)), labels]
    # lexsort: the last key sorts first: flagged images (0) before the rest (1), then lowest confidence
    order = np.lexsort((self_confidence, (~flagged).astype(np.int8)))
    return LabelRanking(order, flagged, suggested.astype(np.int64), self_confidence, name)
