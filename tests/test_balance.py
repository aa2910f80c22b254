"""Class imbalance (astrocli/data/balance.py): the balanced sampler, the same order in both
pipelines, and scikit-learn's class weights in the loss (soft targets too)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from astrocli.data.balance import BalancedSampler, balanced_indices, class_weights, sample_weights
from astrocli.data.tensor_cache import TensorCache
from astrocli.data.tensor_pipeline import TensorTrainBatches
from astrocli.engine.build import build_train_loss
from astrocli.recipe import load_recipe

TARGETS = [0] * 900 + [1] * 90 + [2] * 10


def test_balanced_sampler_draws_classes_equally_and_reproducibly() -> None:
    sampler = BalancedSampler(TARGETS, seed=3)
    sampler.set_epoch(2)
    drawn = list(sampler)
    assert len(drawn) == len(TARGETS) and drawn == list(sampler)  # an epoch is reproducible (resume)
    freq = Counter(TARGETS[i] for i in drawn)
    assert all(abs(freq[c] / len(drawn) - 1 / 3) < 0.05 for c in range(3))
    sampler.set_epoch(3)
    assert list(sampler) != drawn
    ranks = [BalancedSampler(TARGETS, num_replicas=2, rank=r, seed=3) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    full = balanced_indices(sample_weights(TARGETS), 1000, 3, 2).tolist()
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(full)


def test_tensor_pipeline_draws_the_loader_s_balanced_order() -> None:
    images = torch.randint(0, 255, (len(TARGETS), 3, 8, 8), dtype=torch.uint8)
    cache = TensorCache(images, torch.tensor(TARGETS))
    recipe = load_recipe(
        None, ["data.sampler=balanced", "train.batch_size=10", "train.seed=3", "data.img_size=8"]
    )
    batches = TensorTrainBatches(cache, recipe, "cpu", mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=3)
    batches.set_epoch(2)
    order = batches.epoch_indices().tolist()
    loader_sampler = BalancedSampler(TARGETS, seed=3)
    loader_sampler.set_epoch(2)
    assert order == list(loader_sampler)[: len(order)]
    labels = Counter(label.item() for _, targets in batches for label in targets)
    assert min(labels.values()) > 250  # ~333 each, not 900 / 90 / 10


def test_class_weights_follow_scikit_learn_and_weight_soft_targets() -> None:
    weights = class_weights(TARGETS, 4)  # class 3 absent: weight 0
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(TARGETS))
    assert weights[:3].numpy() == pytest.approx(expected) and weights[3] == 0
    recipe = load_recipe(None, ["train.class_weights=balanced"])
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    soft = torch.softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    loss = build_train_loss(recipe, mixup_on=True, class_weight=weights)(logits, soft)
    manual = -(soft * weights * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
