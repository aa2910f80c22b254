"""Astroformer (Dagli, 2023): a CoAtNet-style hybrid, ``astroformer_0`` ... ``astroformer_5``.

The official code (Rishit-dagli/Astroformer ``astroformer.py``) is a copy of timm's
``maxxvit.py`` with a C-C-C-T stage layout; timm's ``MaxxVit`` builds the same network from a
``MaxxVitCfg``, so we configure timm instead of copying it:

- stem: 3x3 conv stride 2 -> BN + GELU -> 3x3 conv (no bias);
- stages 1-3: MBConv (pre-norm BN, 1x1 expand x4, 3x3 depthwise carrying the stride, SE 0.25
  with SiLU, 1x1 project; 2x2 avg-pool + 1x1 conv shortcut when downsampling);
- stage 4: transformer blocks (pre-norm LayerNorm2d, global multi-head self-attention with a
  learned relative-position bias added to the logits -- passed to SDPA as the float mask --
  head dim 32, MLP ratio 4);
- head: global average pool -> LayerNorm -> Linear(C, C) -> tanh -> Linear(C, classes).

Our fix over the official code: the relative-position table is sized for the ``img_size`` the
model is built at (the official builders always use 224, so CIFAR at 32 px fails, its issue 6),
and :func:`astrocli.models.adapt_state_dict` interpolates it to load a checkpoint trained at
another size. Any ``img_size`` that is a multiple of 32 works.

Parameter counts (10 classes, 256 px) match the released code's configs, not the README:
22.77M, 37.39M, 66.37M, 148.89M, 241.09M, 593.56M.
"""

from __future__ import annotations

import torch
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitConvCfg, MaxxVitTransformerCfg

from astrocli.models.registry import AttentionOptions, BuildArgs, Builder, ModelError, register_model

# variant -> (widths, depths, stem width, released-code params in millions: 10 classes, 256 px)
VARIANTS: dict[int, tuple[tuple[int, ...], tuple[int, ...], int, float]] = {
    0: ((96, 192, 384, 768), (2, 3, 5, 2), 64, 22.77),
    1: ((96, 192, 384, 768), (2, 6, 14, 2), 64, 37.39),
    2: ((128, 256, 512, 1024), (2, 6, 14, 2), 128, 66.37),
    3: ((192, 384, 768, 1536), (2, 6, 14, 2), 192, 148.89),
    4: ((192, 384, 768, 1536), (2, 12, 28, 2), 192, 241.09),
    5: ((256, 512, 1280, 2048), (2, 12, 28, 2), 192, 593.56),
}
DEFAULT_IMG_SIZE = 256
SIZE_MULTIPLE = 32  # stem and four stages each halve the resolution


def astroformer_cfg(
    widths: tuple[int, ...], depths: tuple[int, ...], stem_width: int, attn_drop: float
) -> MaxxVitCfg:
    """The official ``AstroformerCfg`` expressed as timm's ``MaxxVitCfg`` (same defaults otherwise)."""
    return MaxxVitCfg(
        embed_dim=widths,
        depths=depths,
        block_type=("C", "C", "C", "T"),
        stem_width=stem_width,
        stem_bias=False,
        conv_cfg=MaxxVitConvCfg(block_type="mbconv", expand_ratio=4.0, attn_layer="se", attn_ratio=0.25),
        transformer_cfg=MaxxVitTransformerCfg(
            dim_head=32, expand_ratio=4.0, rel_pos_type="bias", attn_drop=attn_drop
        ),
        head_hidden_size=widths[-1],
        weight_init="vit_eff",
    )


class Astroformer(MaxxVit):
    """timm's MaxxVit in the Astroformer configuration, remembering the size it was built for."""

    def __init__(self, cfg: MaxxVitCfg, img_size: int, **kwargs: object) -> None:
        super().__init__(cfg, img_size=img_size, **kwargs)
        self.img_size = img_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            # The relative-position bias is sized for the build size; say so instead of a shape error.
            raise ValueError(
                f"Astroformer built for {self.img_size} px got a {tuple(x.shape[-2:])} input; build it with "
                f"img_size={x.shape[-1]} and load weights through adapt_state_dict"
            )
        return super().forward_features(x)


def _make_builder(variant: int) -> Builder:
    widths, depths, stem_width, _ = VARIANTS[variant]

    def build(args: BuildArgs, options: AttentionOptions) -> Astroformer:
        if args.img_size % SIZE_MULTIPLE != 0:
            raise ModelError(f"astroformer_{variant}: img_size must be a multiple of 32, not {args.img_size}")
        return Astroformer(
            astroformer_cfg(widths, depths, stem_width, options.attn_drop_rate),
            img_size=args.img_size,
            in_chans=args.in_chans,
            num_classes=args.num_classes,
            drop_rate=args.drop_rate,
            drop_path_rate=args.drop_path_rate or 0.0,
        )

    return build


for _variant, (_w, _d, _s, _params) in VARIANTS.items():
    register_model(
        f"astroformer_{_variant}",
        "astroformer",
        DEFAULT_IMG_SIZE,
        _params,
        paper_img_size=256,
        options=AttentionOptions(),
    )(_make_builder(_variant))
