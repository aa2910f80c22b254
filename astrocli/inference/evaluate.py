"""Evaluate a model on a labelled split: ``astro eval``.

The split comes from the recipe stored in the checkpoint (the one it validated on), changed by
``KEY=VALUE`` overrides (``data.root=DIR data.split=test``). Images go through the checkpoint's
own evaluation transform; with test-time augmentation the softmax of each image and of its
horizontal flip are averaged.

    runner = load_runner("best.safetensors")
    recipe = eval_recipe(runner.meta, ["data.split=test"])
    report = evaluate(runner, build_datasets(recipe.data), batch_size=64)
    report["top1"], report["per_class"], report["ece"]
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from astrocli.calibration import reliability
from astrocli.checkpoint import CheckpointMeta
from astrocli.errors import AstroError
from astrocli.files import atomic_write_bytes, atomic_write_text
from astrocli.inference.runner import Runner
from astrocli.metrics import classification_metrics, expected_calibration_error, log_softmax, nll_loss
from astrocli.recipe import Recipe, apply_override, recipe_from_dict
from astrocli.stats import bootstrap_metrics


def eval_recipe(meta: CheckpointMeta, overrides: Sequence[str] = ()) -> Recipe:
    """The checkpoint's recipe with ``KEY=VALUE`` overrides applied (validated like ``astro train``'s)."""
    raw: dict[str, Any] = copy.deepcopy(meta.recipe) if meta.recipe else {}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == "model" or key.startswith("model."):
            # The checkpoint fixes the architecture and weights; a model.* override would be ignored.
            raise AstroError(
                f"override '{item}' cannot apply: astro eval runs the checkpoint's own model "
                f"({meta.model}); drop it, or evaluate another checkpoint"
            )
        apply_override(raw, item)
    return recipe_from_dict(raw)


def check_labels(model_names: Sequence[str], data_names: Sequence[str]) -> list[str]:
    """Refuse data whose class count differs from the model's; return warnings for renamed classes."""
    if len(model_names) != len(data_names):
        raise AstroError(
            f"the evaluation data has {len(data_names)} classes but the model predicts {len(model_names)}; "
            "point data.root / data.source at data with the model's classes"
        )
    differing = [f"{m!r} vs {d!r}" for m, d in zip(model_names, data_names, strict=True) if m != d]
    if differing:
        return [
            f"{len(differing)} class names differ between model and data "
            f"(e.g. {differing[0]}); matched by index"
        ]
    return []


def collect_probabilities(
    runner: Runner,
    dataset: Any,
    batch_size: int = 64,
    num_workers: int = 0,
    tta: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities ``[N, K]`` (float64) and targets ``[N]`` over a ``(PIL image, label)`` dataset.

    With ``tta`` the probabilities of each image and its horizontal flip are averaged (in log
    space, so confident predictions keep an exact loss).
    """
    log_probs, _, targets = collect_outputs(runner, dataset, batch_size, num_workers, tta, on_batch)
    return log_probs, targets


def collect_outputs(
    runner: Runner,
    dataset: Any,
    batch_size: int = 64,
    num_workers: int = 0,
    tta: bool = False,
    on_batch: Callable[[int], None] | None = None,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`collect_probabilities` plus the log-probabilities of ``logits / temperature``."""
    import torch  # lazy: keeps start-up torch-free
    from torch.utils.data import DataLoader

    from astrocli.data.loader import TransformedDataset

    loader = DataLoader(
        TransformedDataset(dataset, runner.transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
    )
    all_log_probs, all_calibrated, all_targets = [], [], []
    for images, targets in loader:
        views = [runner.logits(images)]
        if tta:
            views.append(runner.logits(torch.flip(images, dims=[-1])))
        for t, out in ((1.0, all_log_probs), (temperature, all_calibrated)):
            log_probs = [log_softmax(np.asarray(v, dtype=np.float64) / t) for v in views]
            if tta:
                out.append(np.logaddexp(*log_probs) - np.log(2.0))
            else:
                out.append(log_probs[0])
        all_targets.append(targets.numpy())
        if on_batch is not None:
            on_batch(len(targets))
    if not all_log_probs:
        raise AstroError("the evaluation split is empty; check data.root and data.split")
    return np.concatenate(all_log_probs), np.concatenate(all_calibrated), np.concatenate(all_targets)


def evaluate(
    runner: Runner,
    dataset: Any,
    batch_size: int = 64,
    num_workers: int = 0,
    tta: bool = False,
    on_batch: Callable[[int], None] | None = None,
    ci_resamples: int = 0,
    ci_seed: int = 0,
) -> dict[str, Any]:
    """Every ``astro eval`` metric for ``runner`` on ``dataset`` (see :func:`classification_metrics`).

    The loss is the mean negative log-likelihood of the (TTA-averaged) probabilities, which is
    the cross-entropy of the logits without TTA. With ``ci_resamples`` > 0 the report also holds
    seeded bootstrap 95% intervals ``top1_ci95``, ``macro_f1_ci95``, ``balanced_accuracy_ci95``.
    """
    temperature = getattr(runner.meta, "temperature", 1.0)
    log_probs, calibrated, targets = collect_outputs(
        runner, dataset, batch_size, num_workers, tta, on_batch, temperature
    )
    loss = nll_loss(None, targets, log_probs=log_probs)
    report = classification_metrics(np.exp(log_probs), targets, runner.class_names, loss=loss)
    report.update(calibration_report(np.exp(log_probs), np.exp(calibrated), targets, temperature))
    if ci_resamples > 0:
        if len(targets) < 2:
            raise AstroError("--ci needs at least 2 evaluation images")
        intervals = bootstrap_metrics(
            log_probs.argmax(axis=1), targets, len(runner.class_names), ci_resamples, ci_seed
        )
        report.update({f"{name}_ci95": ci for name, ci in intervals.items()})
        report["ci"] = {"method": "percentile bootstrap", "resamples": ci_resamples, "seed": ci_seed}
    report["tta"] = tta
    report["model"] = runner.meta.model
    report["checkpoint"] = str(runner.source)
    return report


def calibration_report(
    probs: np.ndarray, calibrated: np.ndarray, targets: np.ndarray, temperature: float
) -> dict[str, Any]:
    """``temperature`` (the checkpoint's), ``ece_calibrated`` and ``loss_calibrated`` with it, and the
    reliability curves (astrocli/calibration.py) for ``--plot``."""
    return {
        "temperature": float(temperature),
        "ece_calibrated": expected_calibration_error(calibrated, targets),
        "loss_calibrated": nll_loss(calibrated, targets),
        "reliability": reliability(probs, targets),
        "reliability_calibrated": reliability(calibrated, targets),
    }


def write_report_json(report: dict[str, Any], path: str | Path) -> None:
    """Atomically write the report as JSON."""
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def plot_confusion_matrix(report: dict[str, Any], path: str | Path) -> None:
    """Atomically save the row-normalised confusion matrix (each row: where class i's images went) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(report["confusion_matrix"], dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    names = report["class_names"]
    size = max(5.0, 0.45 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, labels=names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(ticks, labels=names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{report.get('model', '')}: top-1 {report['top1']:.2f}% (n={report['num_samples']})")
        if len(names) <= 20:
            for i in range(len(names)):
                for j in range(len(names)):
                    value = normalised[i, j]
                    if value > 0:
                        color = "white" if value > 0.5 else "black"
                        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
