"""``astro audit --checkpoint``: near duplicates in the model's own embedding.

The embedding is what the model's classifier reads (the input of ``get_classifier()``, taken with a
forward hook, so every zoo model and timm model works unchanged). For every held-out image (val or
test) the nearest training image is reported when their cosine similarity reaches ``min_cosine``:
a lead to look at (a flipped, recoloured or re-framed copy a hash misses), not a proven copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from astrocli.errors import CheckpointError
from astrocli.experiments.dataview import DataView
from astrocli.experiments.duplicates import Pair
from astrocli.experiments.scan import ImageFacts
from astrocli.inference.runner import TorchRunner, load_runner

BATCH = 128


def check_classes(model_names: list[str], data_names: list[str], checkpoint: Path) -> None:
    """The checkpoint must predict the data's classes, in the same order."""
    if list(model_names) != list(data_names):
        raise CheckpointError(
            f"{checkpoint} predicts {len(model_names)} classes ({', '.join(model_names[:4])}, ...) but the "
            f"data has {len(data_names)} ({', '.join(data_names[:4])}, ...); "
            "give a checkpoint trained on this data"
        )


def embed(runner: Any, items: list[Any]) -> np.ndarray:
    """Features ``[N, D]`` at the classifier's input for already-decoded dataset items."""

    model = runner.model
    if not hasattr(model, "get_classifier"):
        raise CheckpointError(
            f"{runner.source}: model {runner.meta.model} has no classifier to read features at"
        )
    captured: list[np.ndarray] = []
    hook = model.get_classifier().register_forward_hook(
        lambda _m, inputs, _o: captured.append(inputs[0].detach().float().flatten(1).cpu().numpy())
    )
    try:
        for start in range(0, len(items), BATCH):
            batch = runner.stack([runner.transform(item) for item in items[start : start + BATCH]])
            with torch.inference_mode():
                runner.logits(batch)
    finally:
        hook.remove()
    return np.concatenate(captured) if captured else np.zeros((0, 1), dtype=np.float32)


def embedding_neighbours(
    checkpoint: Path, view: DataView, facts: list[ImageFacts], min_cosine: float, skip: set | None = None
) -> list[Pair]:
    """Each held-out image's nearest training image, when at least ``min_cosine`` alike."""

    runner = load_runner(checkpoint, device="auto")
    if not isinstance(runner, TorchRunner):
        raise CheckpointError(
            f"--checkpoint {checkpoint}: embeddings need a .safetensors checkpoint, not ONNX"
        )
    check_classes(runner.class_names, view.class_names, checkpoint)
    usable = [i for i, f in enumerate(facts) if f.error is None]
    vectors = embed(runner, [view.item(facts[i].split, facts[i].position) for i in usable])
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    train = np.array([facts[i].role == "train" for i in usable])
    if train.all() or not train.any():
        return []
    base, base_ids = unit[train], np.asarray(usable)[train]
    pairs = []
    for row in np.nonzero(~train)[0]:
        cosine = base @ unit[row]
        best = int(cosine.argmax())
        a, b = sorted((usable[row], int(base_ids[best])))
        if cosine[best] >= min_cosine and (a, b) not in (skip or ()):
            pairs.append(Pair(a, b, round(float(1.0 - cosine[best]), 6), "embedding"))
    return pairs
