"""CVT: Compact Vision Transformers (patch tokenizer + SeqPool), ``cvt_<size>_<patch>_<img>``."""

from __future__ import annotations

from astrocli.models.compact_transformer import CompactOptions, Tokenizer, check_patch, compact_builder
from astrocli.models.registry import BuildArgs, Builder, register_model

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


def make_patch_builder(name: str, size: int, patch: int, seq_pool: bool) -> Builder:
    """Builder of a patch-tokenizer compact transformer (CVT with SeqPool, ViT-Lite with a class token)."""

    def tokenizer(args: BuildArgs, dim: int) -> Tokenizer:
        check_patch(args.img_size, patch, name)
        return patch_tokenizer(patch, args.in_chans, dim)

    return compact_builder(size, tokenizer, seq_pool)


for _size, _patch in VARIANTS:
    _name = f"cvt_{_size}_{_patch}_32"
    register_model(_name, "cvt", 32, PAPER_PARAMS.get(_name), options=CompactOptions())(
        make_patch_builder(_name, _size, _patch, True)
    )
