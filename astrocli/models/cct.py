"""CCT: Compact Convolutional Transformers (names as SHI-Labs/Compact-Transformers ``src/cct.py``).

``cct_<layers>_<kernel>x<convs>_<img>``: a convolutional tokenizer of ``convs`` blocks
(conv kernel x kernel without bias -> ReLU -> max-pool 3/2/1), a compact transformer encoder
and SeqPool. Conv stride ``max(1, kernel // 2 - 1)``, padding ``max(1, kernel // 2)`` as
in the official code. ``_sine`` names use the fixed sinusoidal position embedding (really).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from astrocli.models.compact_transformer import SIZES, Tokenizer, build_compact_transformer
from astrocli.models.registry import register_model

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


def _make_builder(size: int, kernel: int, n_convs: int, embedding: str) -> Callable[..., nn.Module]:
    num_layers, num_heads, mlp_ratio, dim = SIZES[size]

    def build(
        num_classes: int,
        img_size: int,
        in_chans: int,
        drop_rate: float,
        drop_path_rate: float | None,
        attn_drop_rate: float = 0.1,
        positional_embedding: str = embedding,
    ) -> nn.Module:
        tokenizer = Tokenizer(
            kernel_size=kernel,
            stride=max(1, kernel // 2 - 1),
            padding=max(1, kernel // 2),
            n_conv_layers=n_convs,
            n_input_channels=in_chans,
            n_output_channels=dim,
        )
        return build_compact_transformer(
            img_size=img_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embedding_dim=dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            tokenizer=tokenizer,
            seq_pool=True,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            attn_drop_rate=attn_drop_rate,
            positional_embedding=positional_embedding,
        )

    return build


def _register_all() -> None:
    for size, kernel, n_convs, img in VARIANTS:
        name = f"cct_{size}_{kernel}x{n_convs}_{img}"
        classes = 1000 if img > 32 else 10
        register_model(name, "cct", img, PAPER_PARAMS.get(name), classes)(
            _make_builder(size, kernel, n_convs, "learnable")
        )
        register_model(f"{name}_sine", "cct", img, None, classes)(
            _make_builder(size, kernel, n_convs, "sine")
        )


_register_all()
