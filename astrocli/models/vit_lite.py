"""ViT-Lite: compact ViTs with a class token, ``vit_lite_<size>_<patch>_<img>`` (CCT paper baselines)."""

from __future__ import annotations

from astrocli.models.compact_transformer import CompactOptions
from astrocli.models.cvt import make_patch_builder
from astrocli.models.registry import register_model

# Published parameter counts in millions, 10 classes (7/8 and 7/16 from the paper's table).
PAPER_PARAMS: dict[str, float] = {"vit_lite_7_4_32": 3.717, "vit_lite_7_8_32": 3.74, "vit_lite_7_16_32": 3.89}
VARIANTS = ((2, 4), (4, 4), (6, 4), (7, 4), (7, 8), (7, 16))  # (size, patch)

for _size, _patch in VARIANTS:
    _name = f"vit_lite_{_size}_{_patch}_32"
    register_model(_name, "vit_lite", 32, PAPER_PARAMS.get(_name), options=CompactOptions())(
        make_patch_builder(_name, _size, _patch, False)
    )
