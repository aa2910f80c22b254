"""Blocks shared by CCT, CVT and ViT-Lite (Hassani et al., "Escaping the Big Data Paradigm with
Compact Transformers"), following SHI-Labs/Compact-Transformers ``src/utils/tokenizer.py`` and
``src/utils/transformers.py`` module for module, so parameter counts and behaviour match.

Differences from the official code, on purpose:
- ``positional_embedding="sine"`` really uses the fixed sinusoidal table (the official model
  builders never pass it on, so its ``_sine`` models silently get a learnable one). The table
  is a buffer, not a frozen parameter, so it is not counted as a parameter.
- Attention uses ``F.scaled_dot_product_attention`` when ``fused_attn`` is True; the explicit
  path (same math) is kept for ONNX export and FLOP counting, as timm does.
- Unknown constructor keywords are errors (the official classes swallow ``**kwargs``).

The encoder layer keeps the official (unusual) layout: ``x = x + attn(pre_norm(x))``,
then ``x = norm1(x)`` and ``x = x + mlp(x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from astrocli.models.registry import AttentionOptions, BuildArgs, ModelError


class Tokenizer(nn.Module):
    """n x (conv k x k, no bias -> activation -> max-pool 3/2/1), then flatten to tokens.

    With ``max_pool=False`` and ``activation=None`` it is the patch embedding of CVT/ViT-Lite.
    """

    def __init__(
        self,
        kernel_size: int,
        stride: int,
        padding: int,
        pooling_kernel_size: int = 3,
        pooling_stride: int = 2,
        pooling_padding: int = 1,
        n_conv_layers: int = 1,
        n_input_channels: int = 3,
        n_output_channels: int = 64,
        in_planes: int = 64,
        activation: type[nn.Module] | None = nn.ReLU,
        max_pool: bool = True,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        channels = [n_input_channels] + [in_planes] * (n_conv_layers - 1) + [n_output_channels]
        # Nested (conv, act, pool) blocks as the official code, so its checkpoints' keys match.
        self.conv_layers = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=conv_bias),
                    activation() if activation is not None else nn.Identity(),
                    nn.MaxPool2d(pooling_kernel_size, pooling_stride, pooling_padding)
                    if max_pool
                    else nn.Identity(),
                )
                for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
            )
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def sequence_length(self, img_size: int) -> int:
        """Number of tokens for a square ``img_size`` input (convolution size arithmetic)."""
        side = img_size
        for layer in self.conv_layers.modules():
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                kernel, stride, padding = (
                    _first(v) for v in (layer.kernel_size, layer.stride, layer.padding)
                )
                side = (side + 2 * padding - kernel) // stride + 1
        return side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(x).flatten(2).transpose(-2, -1)


def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


class Attention(nn.Module):
    """Multi-head self-attention: qkv without bias, output projection with bias (as official)."""

    def __init__(
        self, dim: int, num_heads: int = 8, attention_dropout: float = 0.1, projection_dropout: float = 0.1
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(projection_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout = self.attn_drop.p if self.training else 0.0
        # torch's CPU SDPA has no fused kernel with dropout: it falls back to its math path, which
        # measured 8% slower per CCT-7/3x1 training step than the explicit product below (2-core
        # CPU, torch 2.14.1). On CUDA the fused kernels handle dropout, so SDPA stays.
        if self.fused_attn and not (dropout > 0 and x.device.type == "cpu"):
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))


class TransformerEncoderLayer(nn.Module):
    """The official CCT encoder layer (see the module docstring for its layout)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, nhead, attention_dropout, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        src = src + self.drop_path(self.self_attn(self.pre_norm(src)))
        src = self.norm1(src)
        src2 = self.linear2(self.dropout1(F.gelu(self.linear1(src))))
        return src + self.drop_path(self.dropout2(src2))


def sinusoidal_embedding(num_tokens: int, dim: int) -> torch.Tensor:
    """The official fixed table: angle p / 10000^(2*(i//2)/dim), sin on even, cos on odd channels."""
    position = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(10000.0, exponent)
    table = torch.empty(num_tokens, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)


class TransformerClassifier(nn.Module):
    """Token sequence -> (+ position embedding) -> encoder layers -> LayerNorm -> pool -> Linear.

    ``seq_pool=True`` is CCT/CVT's SeqPool (attention-weighted mean of the tokens);
    ``seq_pool=False`` prepends a class token (ViT-Lite).
    """

    def __init__(
        self,
        sequence_length: int,
        embedding_dim: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        num_classes: int,
        seq_pool: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.1,
        stochastic_depth: float = 0.1,
        positional_embedding: str = "learnable",
    ) -> None:
        super().__init__()
        if positional_embedding not in ("learnable", "sine", "none"):
            raise ValueError(
                f"positional_embedding must be learnable, sine or none, not {positional_embedding!r}"
            )
        self.embedding_dim = embedding_dim
        self.seq_pool = seq_pool
        self.num_prefix_tokens = 0 if seq_pool else 1
        num_tokens = sequence_length + self.num_prefix_tokens
        if seq_pool:
            self.attention_pool = nn.Linear(embedding_dim, 1)
            self.class_emb = None
        else:
            self.class_emb = nn.Parameter(torch.zeros(1, 1, embedding_dim))
        self.positional_emb: nn.Parameter | None = None
        self.sine_emb: torch.Tensor | None
        if positional_embedding == "learnable":
            self.positional_emb = nn.Parameter(torch.zeros(1, num_tokens, embedding_dim))
            trunc_normal_(self.positional_emb, std=0.2)
        if positional_embedding == "sine":
            # Deterministic, so not saved: checkpoints stay loadable at another img_size.
            self.register_buffer(
                "sine_emb", sinusoidal_embedding(num_tokens, embedding_dim), persistent=False
            )
        else:
            self.sine_emb = None
        self.dropout = nn.Dropout(dropout)
        rates = torch.linspace(0, stochastic_depth, num_layers, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            TransformerEncoderLayer(
                embedding_dim, num_heads, int(embedding_dim * mlp_ratio), dropout, attention_dropout, rate
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embedding_dim)
        self.fc = nn.Linear(embedding_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weight)

    @staticmethod
    def _init_weight(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.class_emb is not None:
            x = torch.cat((self.class_emb.expand(x.shape[0], -1, -1), x), dim=1)
        if self.positional_emb is not None:
            x = x + self.positional_emb
        elif self.sine_emb is not None:
            x = x + self.sine_emb
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.seq_pool:
            weights = self.attention_pool(x).softmax(dim=1)  # [B, N, 1]
            return (weights.transpose(-1, -2) @ x).squeeze(-2)
        return x[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)))


class CompactTransformer(nn.Module):
    """Tokenizer + :class:`TransformerClassifier`: the CCT, CVT and ViT-Lite models."""

    def __init__(self, tokenizer: Tokenizer, classifier: TransformerClassifier, img_size: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.classifier = classifier
        self.img_size = img_size
        self.num_classes = classifier.fc.out_features if isinstance(classifier.fc, nn.Linear) else 0
        self.num_features = classifier.embedding_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Token features after the final LayerNorm, ``[B, N, C]``."""
        return self.classifier.forward_features(self.tokenizer(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.classifier.pool(x)
        return pooled if pre_logits else self.classifier.fc(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        dim = self.classifier.embedding_dim
        self.classifier.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"classifier.positional_emb", "classifier.class_emb"}


class CompactSize(NamedTuple):
    """One of the paper's model sizes (the number in ``cct_7_...``, ``cvt_7_...``)."""

    num_layers: int
    num_heads: int
    mlp_ratio: float
    dim: int


SIZES: dict[int, CompactSize] = {
    2: CompactSize(2, 2, 1.0, 128),
    4: CompactSize(4, 2, 1.0, 128),
    6: CompactSize(6, 4, 2.0, 256),
    7: CompactSize(7, 4, 2.0, 256),
    14: CompactSize(14, 6, 3.0, 384),
    12: CompactSize(12, 12, 4.0, 768),  # the paper's ViT-12/16 baseline (ViT-B width in the compact layout)
}


@dataclass(frozen=True)
class CompactOptions(AttentionOptions):
    """The keywords of every compact transformer besides :class:`BuildArgs`.

    ``positional_embedding``: learnable, sine (the fixed sinusoidal table) or none.
    """

    attn_drop_rate: float = 0.1
    positional_embedding: str = "learnable"


# Makes the tokenizer for the build arguments and the embedding dimension (raising ModelError
# for an img_size it cannot take).
TokenizerFactory = Callable[[BuildArgs, int], Tokenizer]


def build_compact_transformer(
    args: BuildArgs, options: CompactOptions, size: CompactSize, tokenizer: Tokenizer, seq_pool: bool
) -> CompactTransformer:
    """Assemble a compact transformer; ``args.drop_path_rate=None`` means the paper's 0.1."""
    drop_path_rate = 0.1 if args.drop_path_rate is None else args.drop_path_rate
    sequence_length = tokenizer.sequence_length(args.img_size)
    if sequence_length < 1:
        raise ModelError(f"img_size {args.img_size} is too small for this tokenizer; use a larger img_size")
    classifier = TransformerClassifier(
        sequence_length,
        size.dim,
        size.num_layers,
        size.num_heads,
        size.mlp_ratio,
        args.num_classes,
        seq_pool=seq_pool,
        dropout=args.drop_rate,
        attention_dropout=options.attn_drop_rate,
        stochastic_depth=drop_path_rate,
        positional_embedding=options.positional_embedding,
    )
    return CompactTransformer(tokenizer, classifier, args.img_size)


def compact_builder(
    size: int, tokenizer: TokenizerFactory, seq_pool: bool
) -> Callable[[BuildArgs, CompactOptions], CompactTransformer]:
    """The zoo builder of a compact transformer of size ``size`` (a key of :data:`SIZES`): CCT with its
    convolutional tokenizer, CVT and ViT-Lite with a patch tokenizer; SeqPool or a class token."""
    layout = SIZES[size]

    def build(args: BuildArgs, options: CompactOptions) -> CompactTransformer:
        return build_compact_transformer(args, options, layout, tokenizer(args, layout.dim), seq_pool)

    return build


def check_patch(img_size: int, patch: int, name: str) -> None:
    """Patch tokenizers need the image to be a multiple of the patch size."""
    if img_size % patch != 0:
        raise ModelError(f"{name}: img_size {img_size} is not a multiple of the patch size {patch}")


__all__ = [
    "Attention",
    "CompactOptions",
    "CompactSize",
    "CompactTransformer",
    "SIZES",
    "Tokenizer",
    "TransformerClassifier",
    "TransformerEncoderLayer",
    "TokenizerFactory",
    "build_compact_transformer",
    "check_patch",
    "compact_builder",
    "sinusoidal_embedding",
]
