"""CCT: Compact Convolutional Transformers (names as SHI-Labs/Compact-Transformers ``src/cct.py``).

``cct_<layers>_<kernel>x<convs>_<img>``: a convolutional tokenizer of ``convs`` blocks
(conv kernel x kernel without bias -> ReLU -> max-pool 3/2/1), a compact transformer encoder
and SeqPool. Conv stride ``max(1, kernel // 2 - 1)``, padding ``max(1, kernel // 2)`` as
in the official code. ``_sine`` names use the fixed sinusoidal position embedding (really).
"""

from __future__ import annotations

from astrocli.models.compact_transformer import (
    CompactOptions,
    Tokenizer,
    TokenizerFactory,
    compact_builder,
)
from astrocli.models.registry import BuildArgs, register_model

# name -> published parameter count in millions (10 classes, learnable embedding,
# except cct_14_7x2_224: 1000 classes).
PAPER_PARAMS: dict[str, float] = {
    "cct_2_3x2_32": 0.284,
    "cct_4_3x2_32": 0.482,
    "cct_6_3x2_32": 3.327,
    "cct_7_3x2_32": 3.853,
    "cct_7_3x1_32": 3.760,
    "cct_14_7x2_224": 22.37,
}
# (size, kernel, conv layers, default img size)
VARIANTS = (
    (2, 3, 2, 32),
    (4, 3, 2, 32),
    (6, 3, 1, 32),
    (6, 3, 2, 32),
    (7, 3, 1, 32),
    (7, 3, 2, 32),
    (7, 7, 2, 224),
    (14, 7, 2, 224),
    (14, 7, 2, 384),
)


def conv_tokenizer(kernel: int, n_convs: int) -> TokenizerFactory:
    """CCT's tokenizer: ``n_convs`` blocks of a kernel x kernel conv (stride and padding as the official
    code), ReLU and a max-pool."""

    def make(args: BuildArgs, dim: int) -> Tokenizer:
        return Tokenizer(
            kernel_size=kernel,
            stride=max(1, kernel // 2 - 1),
            padding=max(1, kernel // 2),
            n_conv_layers=n_convs,
            n_input_channels=args.in_chans,
            n_output_channels=dim,
        )

    return make


def _register_all() -> None:
    for size, kernel, n_convs, img in VARIANTS:
        name = f"cct_{size}_{kernel}x{n_convs}_{img}"
        classes = 1000 if img > 32 else 10
        build = compact_builder(size, conv_tokenizer(kernel, n_convs), seq_pool=True)
        register_model(name, "cct", img, PAPER_PARAMS.get(name), classes, options=CompactOptions())(build)
        sine = CompactOptions(positional_embedding="sine")
        register_model(f"{name}_sine", "cct", img, None, classes, options=sine)(build)


_register_all()
