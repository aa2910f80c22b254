"""CVT: Compact Vision Transformers (patch tokenizer + SeqPool), ``cvt_<size>_<patch>_<img>``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from astrocli.models.compact_transformer import SIZES, Tokenizer, build_compact_transformer, check_patch
from astrocli.models.registry import register_model

# Published parameter counts in millions, 10 classes (cvt_7_8_32 from the paper's table).
PAPER_PARAMS: dict[str, float] = {"cvt_7_4_32": 3.717, "cvt_7_8_32": 3.74}
VARIANTS = ((2, 4), (4, 4), (6, 4), (7, 4), (7, 8))  # (size, patch)


def patch_tokenizer(patch: int, in_chans: int, dim: int) -> Tokenizer:
    """The official CVT/ViT-Lite patch embedding: one conv patch x patch, stride patch, with bias."""
    return Tokenizer(
        kernel_size=patch,
        stride=patch,
        padding=0,
        n_conv_layers=1,
        n_input_channels=in_chans,
        n_output_channels=dim,
        activation=None,
        max_pool=False,
        conv_bias=True,
    )


def make_patch_builder(name: str, size: int, patch: int, seq_pool: bool) -> Callable[..., nn.Module]:
    """Builder of a patch-tokenizer compact transformer (CVT with SeqPool, ViT-Lite with a class token)."""
    num_layers, num_heads, mlp_ratio, dim = SIZES[size]

    def build(
        num_classes: int,
        img_size: int,
        in_chans: int,
        drop_rate: float,
        drop_path_rate: float | None,
        attn_drop_rate: float = 0.1,
        positional_embedding: str = "learnable",
    ) -> nn.Module:
        check_patch(img_size, patch, name)
        return build_compact_transformer(
            img_size=img_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embedding_dim=dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            tokenizer=patch_tokenizer(patch, in_chans, dim),
            seq_pool=seq_pool,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            attn_drop_rate=attn_drop_rate,
            positional_embedding=positional_embedding,
        )

    return build


for _size, _patch in VARIANTS:
    _name = f"cvt_{_size}_{_patch}_32"
    register_model(_name, "cvt", 32, PAPER_PARAMS.get(_name))(make_patch_builder(_name, _size, _patch, True))
