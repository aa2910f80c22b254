"""Loading a checkpoint trained at one image size into a model built at another.

Two kinds of tensor depend on the input size:
- learnable absolute position embeddings ``[1, prefix + h*w, C]`` (CCT, CVT, ViT-Lite, ViT):
  resampled on their 2-D grid by timm's ``resample_abs_pos_embed``, prefix tokens kept;
- relative-position bias tables ``[(2h-1)*(2w-1), heads]`` (Astroformer): resized on their
  2-D offset grid by timm's ``resize_rel_pos_bias_table_simple`` (bicubic).
Everything else is returned unchanged, so a genuine mismatch (another architecture, another
number of classes) still fails loudly in ``load_state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table_simple
from torch import nn

REL_POS_TABLE = "relative_position_bias_table"
REL_POS_INDEX = "relative_position_index"


def adapt_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return ``state_dict`` with size-dependent tensors resampled to ``model``'s shapes.

    Args:
        model: the model the weights will be loaded into (built at the new ``img_size``).
        state_dict: weights saved from the same architecture built at another ``img_size``.

    Returns:
        A new dict ready for ``model.load_state_dict``.
    """
    target = model.state_dict()
    adapted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(REL_POS_INDEX):
            continue  # derived from the window size; the model rebuilds it
        wanted = target.get(key)
        if wanted is None or wanted.shape == tensor.shape:
            adapted[key] = tensor
        elif key.endswith(REL_POS_TABLE):
            adapted[key] = _resize_rel_pos_table(tensor, wanted.shape)
        elif _is_position_embedding(tensor, wanted):
            adapted[key] = _resample_position_embedding(tensor, wanted.shape)
        else:
            adapted[key] = tensor
    return adapted


def _resize_rel_pos_table(table: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    side = math.isqrt(shape[0])  # (2w - 1)^2 offsets for a square w x w window
    window = (side + 1) // 2
    return resize_rel_pos_bias_table_simple(table.float(), (window, window), tuple(shape)).to(table.dtype)


def _is_position_embedding(tensor: torch.Tensor, wanted: torch.Tensor) -> bool:
    return tensor.ndim == 3 and tensor.shape[0] == 1 and tensor.shape[2] == wanted.shape[2]


def _grid_side(tokens: int, prefix: int) -> int | None:
    side = math.isqrt(tokens - prefix)
    return side if side * side == tokens - prefix else None


def _resample_position_embedding(posemb: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # A class token (prefix 1) or none: the one that leaves a square grid on both sides.
    for prefix in (0, 1):
        old, new = _grid_side(posemb.shape[1], prefix), _grid_side(shape[1], prefix)
        if old and new:
            return resample_abs_pos_embed(posemb, [new, new], [old, old], num_prefix_tokens=prefix)
    raise ValueError(f"cannot resample a position embedding of shape {tuple(posemb.shape)} to {tuple(shape)}")
