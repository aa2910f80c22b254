"""ViT (Dosovitskiy et al.) B/16, L/16, H/14 from timm, and the CCT paper's ViT-12/16 baseline.

timm's ``VisionTransformer`` builds the original ViT exactly (class token, learnable position
embedding, pre-norm blocks, SDPA attention with a ``fused_attn`` switch), at any ``img_size``
that is a multiple of the patch size.
"""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from astrocli.models.compact_transformer import CompactOptions, check_patch
from astrocli.models.cvt import make_patch_builder
from astrocli.models.registry import AttentionOptions, BuildArgs, Builder, register_model

# name -> (patch, width, depth, heads, published params in millions at 224 px, 1000 classes)
VIT_VARIANTS: dict[str, tuple[int, int, int, int, float]] = {
    "vit_b_16": (16, 768, 12, 12, 86.0),
    "vit_l_16": (16, 1024, 24, 16, 307.0),
    "vit_h_14": (14, 1280, 32, 16, 632.0),
}


def _make_vit_builder(name: str, patch: int, width: int, depth: int, heads: int) -> Builder:
    def build(args: BuildArgs, options: AttentionOptions) -> VisionTransformer:
        check_patch(args.img_size, patch, name)
        return VisionTransformer(
            img_size=args.img_size,
            patch_size=patch,
            in_chans=args.in_chans,
            num_classes=args.num_classes,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            drop_rate=args.drop_rate,
            attn_drop_rate=options.attn_drop_rate,
            drop_path_rate=args.drop_path_rate or 0.0,
        )

    return build


for _name, (_patch, _width, _depth, _heads, _params) in VIT_VARIANTS.items():
    register_model(_name, "vit", 224, _params, paper_num_classes=1000, options=AttentionOptions())(
        _make_vit_builder(_name, _patch, _width, _depth, _heads)
    )

# ViT-12/16 of the CCT paper's tables: 12 layers of width 768 in the compact-transformer layout
# (qkv without bias, class token), 85.63M parameters at 32 px with 10 classes.
register_model("vit_12_16", "vit", 32, 85.63, options=CompactOptions())(
    make_patch_builder("vit_12_16", 12, 16, False)
)
