"""Fine-tuning controls: the classifier's parameters, head-only epochs, per-layer learning rates.

- ``train.layer_decay``: timm's layer-wise decay (BEiT's rule, ``create_optimizer_v2(layer_decay=...)``):
  the learning rate of layer ``i`` of ``L`` is ``lr * layer_decay ** (L - 1 - i)``, the classifier's
  ``lr``. timm groups layers with the model's ``group_matcher`` (or in runs of parameters).
- ``train.head_lr_mult``: the classifier's learning rate is multiplied by this (a fresh head learns
  faster than pretrained features should move).
- ``train.freeze_epochs``: only the classifier trains for the first N epochs, then everything. The
  state is a function of the epoch number, so resuming inside or after the frozen epochs is exact.
  Frozen parameters get no gradient, so the optimizer neither moves nor decays them; normalisation
  layers still update their running statistics to the new data (fastai's ``train_bn`` default).

Learning-rate scales are timm's ``lr_scale`` group key, which timm's schedulers apply on every update.
"""

from __future__ import annotations

from typing import Any

from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from astrocli.errors import AstroError

FROZEN_ATTR = "_astro_frozen"  # names of the parameters freeze() turned off, so unfreeze restores only those


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the classifier's parameters: ``get_classifier()`` (timm and astro models), else the
    ``pretrained_cfg['classifier']`` prefix."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, nn.Module):
        ids = {id(p) for p in classifier.parameters()}
        names = [n for n, p in model.named_parameters() if id(p) in ids]
        if names:
            return names
    prefixes = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    names = [n for n, _ in model.named_parameters() if any(n.startswith(f"{p}.") for p in prefixes)]
    if not names:
        raise AstroError(
            f"cannot find the classifier of {type(model).__name__} (no get_classifier()), which "
            "train.freeze_epochs and train.head_lr_mult need; set them back to 0 and 1"
        )
    return names


def check_finetune_config(cfg: Any) -> None:
    """Reject values the fine-tuning keys cannot take (``cfg`` is the recipe's ``train`` section)."""
    if cfg.layer_decay is not None and not 0.0 < cfg.layer_decay <= 1.0:
        raise AstroError(f"train.layer_decay must be in (0, 1] (e.g. 0.75) or null, got {cfg.layer_decay}")
    if cfg.freeze_epochs < 0:
        raise AstroError(f"train.freeze_epochs must be >= 0, got {cfg.freeze_epochs}")
    if cfg.head_lr_mult <= 0:
        raise AstroError(f"train.head_lr_mult must be positive, got {cfg.head_lr_mult}")


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None, head_lr_mult: float
) -> list[dict[str, Any]]:
    """timm's parameter groups (weight decay off for biases and norms; layer-wise ``lr_scale`` when
    ``layer_decay`` is set), with the classifier split into its own groups scaled by ``head_lr_mult``."""
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    if layer_decay is not None:
        groups = param_groups_layer_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=no_decay, layer_decay=layer_decay
        )
    else:
        groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_decay)
    if head_lr_mult == 1.0:
        return groups
    head = {id(p) for n, p in model.named_parameters() if n in set(head_parameter_names(model))}
    split: list[dict[str, Any]] = []
    for group in groups:
        body = [p for p in group["params"] if id(p) not in head]
        top = [p for p in group["params"] if id(p) in head]
        scale = group.get("lr_scale", 1.0)
        if body:
            split.append({**group, "params": body, "lr_scale": scale})
        if top:
            split.append({**group, "params": top, "lr_scale": scale * head_lr_mult})
    return split


def set_frozen(model: nn.Module, frozen: bool) -> bool:
    """Freeze every parameter but the classifier's (``frozen``), or undo that; True if anything changed."""
    previously = getattr(model, FROZEN_ATTR, None)
    if frozen == (previously is not None):
        return False
    if frozen:
        head = set(head_parameter_names(model))
        names = [n for n, p in model.named_parameters() if n not in head and p.requires_grad]
        for name, param in model.named_parameters():
            if name in names:
                param.requires_grad_(False)
        setattr(model, FROZEN_ATTR, names)
    else:
        names = set(previously)
        for name, param in model.named_parameters():
            if name in names:
                param.requires_grad_(True)
        delattr(model, FROZEN_ATTR)
    return True


def frozen_at(epoch: int, freeze_epochs: int) -> bool:
    """Whether epoch ``epoch`` (0-based) trains the classifier only."""
    return epoch < freeze_epochs
