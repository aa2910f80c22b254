"""Calibration: temperature scaling (Guo et al., 2017), fitted on held-out logits.

A network's softmax is usually over-confident. Dividing the logits by one temperature ``T``,
fitted to minimise the negative log-likelihood of the validation split, fixes most of it without
changing any prediction (the arg-max of ``z / T`` is the arg-max of ``z``).

- At the end of ``astro train`` (``train.calibrate: true``), ``T`` is fitted for ``best`` and
  ``last`` on the validation split and written into their metadata (``temperature``):
  astrocli/engine/calibrate.py.
- ``astro eval CKPT --calibrate`` fits it for an existing checkpoint on the validation split of
  the checkpoint's recipe and rewrites the checkpoint in place (atomically; only the metadata
  changes), so ``astro predict`` and a later ``astro export`` use it: astrocli/inference/calibrate.py.
- ``astro predict`` (PyTorch and ONNX) returns ``softmax(logits / T)``; an exported ONNX file
  keeps the raw logits as its output and carries ``temperature`` in its metadata, like every
  other preprocessing fact, so both paths give the same probabilities.
- ``astro eval`` reports ``ece`` (raw) and ``ece_calibrated`` (with the stored ``T``).

    t = fit_temperature(logits, targets)
    probs = softmax(logits / t)
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from astrocli.checkpoint import load_checkpoint, save_checkpoint
from astrocli.files import atomic_write_bytes
from astrocli.metrics import ECE_BINS, expected_calibration_error, softmax, to_numpy

T_RANGE = (0.05, 20.0)  # a temperature outside this means the fit went wrong: clamp
# Below these a fitted temperature says more about the few images than about the model (a T of 20
# fitted on 10 images made every prediction 0.10 over 10 classes): T = 1 is kept instead.
MIN_IMAGES = 50
MIN_MISTAKES = 5


def fit_temperature(logits: Any, targets: Any, max_iter: int = 100) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` on ``targets``.

    LBFGS over ``log T`` (positive by construction), in float64, from ``T = 1``.
    """
    import torch  # lazy: keeps start-up torch-free
    import torch.nn.functional as F

    z = torch.as_tensor(to_numpy(logits), dtype=torch.float64)
    y = torch.as_tensor(to_numpy(targets), dtype=torch.int64)
    if len(y) == 0:
        return 1.0
    if bool((z.argmax(dim=1) == y).all()):
        # Every held-out image is right: the NLL keeps falling as T -> 0 (no finite optimum), and the
        # fit would only say "be certain" from a few hundred images. Keep the model's own softmax.
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    return min(max(t, T_RANGE[0]), T_RANGE[1])


def calibration_summary(logits: Any, targets: Any, temperature: float) -> dict[str, float]:
    """``temperature``, ``ece``, ``ece_calibrated`` (and top-1, the same for both) on these logits."""
    z, y = to_numpy(logits).astype(np.float64), to_numpy(targets).astype(np.int64)
    return {
        "temperature": float(temperature),
        "ece": expected_calibration_error(softmax(z), y),
        "ece_calibrated": expected_calibration_error(softmax(z / temperature), y),
    }


def _refusal(num_images: int, mistakes: int) -> str | None:
    if num_images < MIN_IMAGES:
        return f"{num_images} held-out images are too few to fit a temperature on (at least {MIN_IMAGES})"
    if mistakes < MIN_MISTAKES:
        return (
            f"{mistakes} mistakes among {num_images} held-out images are too few to fit on "
            f"(at least {MIN_MISTAKES})"
        )
    return None


def calibrate_logits(logits: Any, targets: Any) -> dict[str, Any]:
    """Fit ``T`` on these held-out logits and keep it only when it can be trusted; else ``T = 1``.

    ``T = 1`` (``applied: False`` and the ``reason``) when there are fewer than :data:`MIN_IMAGES`
    images or :data:`MIN_MISTAKES` mistakes, when the fit ends at a bound of :data:`T_RANGE`, or when
    it does not lower the ECE of these same images (the NLL optimum need not lower the ECE).
    Returns ``temperature`` (the one to store), ``applied``, ``reason``, ``fitted_temperature``,
    ``ece``, ``ece_calibrated`` (at the stored ``T``), ``num_images`` and ``mistakes``.
    """
    z, y = to_numpy(logits).astype(np.float64), to_numpy(targets).astype(np.int64)
    mistakes = int((z.argmax(axis=1) != y).sum()) if len(y) else 0
    reason = _refusal(len(y), mistakes)
    fitted = fit_temperature(z, y) if reason is None else 1.0
    fit = calibration_summary(z, y, fitted)
    if reason is None and not T_RANGE[0] * 1.001 < fitted < T_RANGE[1] * 0.999:
        reason = f"the fitted temperature {fitted:.3g} is at the bound of {T_RANGE[0]:g}..{T_RANGE[1]:g}"
    if reason is None and not fit["ece_calibrated"] < fit["ece"]:
        reason = (
            f"temperature {fitted:.3g} does not lower the held-out ECE "
            f"({fit['ece']:.4f} -> {fit['ece_calibrated']:.4f})"
        )
    applied = reason is None
    return {
        "temperature": fitted if applied else 1.0,
        "applied": applied,
        "reason": reason,
        "fitted_temperature": fitted,
        "ece": fit["ece"],
        "ece_calibrated": fit["ece_calibrated"] if applied else fit["ece"],
        "num_images": int(len(y)),
        "mistakes": mistakes,
    }


def reliability(probs: Any, targets: Any, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count (the bins of :func:`expected_calibration_error`)."""
    p, t = to_numpy(probs).astype(np.float64), to_numpy(targets).astype(np.int64)
    confidence = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == t).astype(np.float64) if len(p) else np.zeros(0)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        mask = bins == b
        out["count"].append(int(mask.sum()))
        out["confidence"].append(float(confidence[mask].mean()) if mask.any() else 0.0)
        out["accuracy"].append(float(correct[mask].mean()) if mask.any() else 0.0)
    return out


def reliability_path(plot: str | Path) -> Path:
    """Where the reliability diagram goes beside ``--plot FILE.png``: ``FILE-reliability.png``."""
    plot = Path(plot)
    return plot.with_name(f"{plot.stem}-reliability.png")


def reliability_figure(report: dict[str, Any]) -> Any:
    """Accuracy against confidence per bin, raw and calibrated; each point labelled with its image
    count, so that a bin of one image is not read as a real dip."""
    import matplotlib  # matplotlib loads only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    curves = [("raw", report["reliability"], report["ece"], 7)]
    if "reliability_calibrated" in report:
        label = f"T = {report['temperature']:.3g}"
        curves.append((label, report["reliability_calibrated"], report["ece_calibrated"], -12))
    for label, curve, ece, offset in curves:
        columns = zip(curve["confidence"], curve["accuracy"], curve["count"], strict=True)
        points = [(c, a, n) for c, a, n in columns if n]
        if not points:
            continue
        (line,) = ax.plot(
            [p[0] for p in points], [p[1] for p in points], marker="o", label=f"{label} (ECE {ece:.3f})"
        )
        for c, a, n in points:
            ax.annotate(
                str(n), (c, a), textcoords="offset points", xytext=(0, offset), ha="center",
                fontsize=7, color=line.get_color(),
            )  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)", ylabel="accuracy")
    ax.set_title(f"{report.get('model', '')}: reliability (n={report['num_samples']}; images per bin)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def plot_reliability(report: dict[str, Any], path: str | Path) -> None:
    """Atomically save the reliability diagram (:func:`reliability_figure`) as PNG."""
    fig = reliability_figure(report)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


# -------------------------------------------------------------------------------------------------
# Writing the temperature into a checkpoint
# -------------------------------------------------------------------------------------------------


def write_temperature(path: str | Path, temperature: float, metrics: dict[str, float] | None = None) -> None:
    """Rewrite checkpoint ``path`` with ``temperature`` (and ``metrics`` merged) in its metadata,
    atomically; the weights are copied unchanged."""
    tensors, meta = load_checkpoint(path)
    meta.temperature = float(temperature)
    if metrics:
        meta.metrics = {**meta.metrics, **metrics}
    save_checkpoint(path, tensors, meta)
