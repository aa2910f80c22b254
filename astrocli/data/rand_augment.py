"""timm's RandAugment on a batch: per-sample random, executed batch-wide, driven by one op table.

:class:`BatchRandAugment` takes a timm RandAugment string (``rand-m9-mstd0.5-inc1`` and friends, or
``trivialaugment``). timm parses it (op list, probability, magnitude, magnitude std, layers); then,
for every sample and layer, an op, whether it applies and its magnitude are drawn on the host with
timm's distributions, and each op runs once on the slice of the batch that drew it, with
per-sample arguments. timm's own transform works on one PIL image at a time, and torchvision's v2
functional ops take one magnitude per call: hence this.

What each op is lives in one place, :data:`OPS`, in timm's style (its ``NAME_TO_OP`` and
``LEVEL_TO_ARG`` side by side): name -> :class:`Op`, that is how the level becomes the op's argument
(:class:`LevelToArg`), the batched pixel op (:mod:`astrocli.data.pixel_ops`) and its kind (a colour
op, the rotation, or a shear/translate, which a layer resamples in one call per axis). Adding an op
is one row. timm's ops missing from the table (the 3-augment ops Desaturate and GaussianBlur, the
absolute translates) are refused with a one-line error that points at the loader pipeline.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from timm.data.auto_augment import rand_augment_transform

from astrocli.data import pixel_ops
from astrocli.data.tensor_draws import to_device
from astrocli.errors import RecipeError

LEVEL_DENOM = 10.0  # timm's magnitude scale: M10 is the maximum level


class PixelOp(Protocol):
    """A batched op: float images ``[n, C, H, W]`` in 0..255 and one argument per sample ``[n]``
    (host tensor) -> the images; the geometric ops fill with ``fill`` (``[C]``) and resample with
    ``mode``, the colour ops ignore both."""

    def __call__(
        self, x: torch.Tensor, arg: torch.Tensor, *, fill: torch.Tensor, mode: str
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class LevelToArg:
    """timm's ``LEVEL_TO_ARG`` entry of an op, in the one form every op fits.

    ``v = level / 10 * scale`` (times the hparams' ``translate_pct`` when ``by_translate_pct``),
    floored and capped at ``cap`` when ``floor``, negated half the time when ``signed`` (timm's
    ``_randomly_negate``); the argument is ``offset + out_scale * v``. One form, so a whole layer's
    arguments are a few vector ops (:func:`op_arguments`), not a few per op.
    """

    scale: float = LEVEL_DENOM  # the default maps the level to itself (ops that take no argument)
    cap: float = math.inf
    floor: bool = False
    signed: bool = False
    out_scale: float = 1.0
    offset: float = 0.0
    by_translate_pct: bool = False

    def row(self, translate_pct: float) -> tuple[float, float, bool, bool, float, float]:
        """(scale, cap, floor, signed, out_scale, offset): this op's row of the layer's table."""
        scale = self.scale * translate_pct if self.by_translate_pct else self.scale
        return scale, self.cap, self.floor, self.signed, self.out_scale, self.offset


@dataclass(frozen=True)
class Op:
    """One RandAugment op: its level -> argument map, the batched op, and its kind.

    ``kind``: ``colour`` (pixel values only), ``affine`` (the rotation, a 2-D resampling) or
    ``shift`` (shear and translate: 1-D resamplings along ``axis``; a layer stacks the samples of all
    shift ops of one axis and resamples them in one :func:`~astrocli.data.pixel_ops.shift_lines` call,
    from each op's per-line ``offsets``).
    """

    level: LevelToArg
    apply: PixelOp
    kind: Literal["colour", "affine", "shift"] = "colour"
    axis: Literal["", "x", "y"] = ""
    offsets: pixel_ops.ShiftOffsets | None = None

    @property
    def geometric(self) -> bool:
        """Whether the op moves pixels (and so fills and resamples)."""
        return self.kind != "colour"


def _shift_op(offsets: pixel_ops.ShiftOffsets, axis: Literal["x", "y"], level: LevelToArg) -> Op:
    return Op(level, functools.partial(pixel_ops.shift, offsets, axis), "shift", axis, offsets)


# timm's level -> argument functions (timm/data/auto_augment.py), by the name timm gives them.
_LEVEL = LevelToArg()  # AutoContrast, Equalize, Invert: no argument (the level, unused)
_ROTATE = LevelToArg(scale=30.0, signed=True)
_SHEAR = LevelToArg(scale=0.3, signed=True)
_TRANSLATE_REL = LevelToArg(scale=1.0, signed=True, by_translate_pct=True)
_ENHANCE = LevelToArg(scale=1.8, offset=0.1)
_ENHANCE_INCREASING = LevelToArg(scale=0.9, signed=True, offset=1.0)
_POSTERIZE = LevelToArg(scale=4.0, floor=True)
_POSTERIZE_INCREASING = LevelToArg(scale=4.0, floor=True, out_scale=-1.0, offset=4.0)
_POSTERIZE_ORIGINAL = LevelToArg(scale=4.0, floor=True, offset=4.0)
_SOLARIZE = LevelToArg(scale=256.0, cap=256.0, floor=True)
_SOLARIZE_INCREASING = LevelToArg(scale=256.0, cap=256.0, floor=True, out_scale=-1.0, offset=256.0)
_SOLARIZE_ADD = LevelToArg(scale=110.0, cap=128.0, floor=True)

#: Every op the tensor pipeline implements, by timm's name.
OPS: dict[str, Op] = {
    "AutoContrast": Op(_LEVEL, pixel_ops.auto_contrast),
    "Equalize": Op(_LEVEL, pixel_ops.equalize),
    "Invert": Op(_LEVEL, pixel_ops.invert),
    "Rotate": Op(_ROTATE, pixel_ops.rotate, "affine"),
    "Posterize": Op(_POSTERIZE, pixel_ops.posterize),
    "PosterizeIncreasing": Op(_POSTERIZE_INCREASING, pixel_ops.posterize),
    "PosterizeOriginal": Op(_POSTERIZE_ORIGINAL, pixel_ops.posterize),
    "Solarize": Op(_SOLARIZE, pixel_ops.solarize),
    "SolarizeIncreasing": Op(_SOLARIZE_INCREASING, pixel_ops.solarize),
    "SolarizeAdd": Op(_SOLARIZE_ADD, pixel_ops.solarize_add),
    "Color": Op(_ENHANCE, pixel_ops.color),
    "ColorIncreasing": Op(_ENHANCE_INCREASING, pixel_ops.color),
    "Contrast": Op(_ENHANCE, pixel_ops.contrast),
    "ContrastIncreasing": Op(_ENHANCE_INCREASING, pixel_ops.contrast),
    "Brightness": Op(_ENHANCE, pixel_ops.brightness),
    "BrightnessIncreasing": Op(_ENHANCE_INCREASING, pixel_ops.brightness),
    "Sharpness": Op(_ENHANCE, pixel_ops.sharpness),
    "SharpnessIncreasing": Op(_ENHANCE_INCREASING, pixel_ops.sharpness),
    "ShearX": _shift_op(pixel_ops.shear_x_offsets, "x", _SHEAR),
    "ShearY": _shift_op(pixel_ops.shear_y_offsets, "y", _SHEAR),
    "TranslateXRel": _shift_op(pixel_ops.translate_x_offsets, "x", _TRANSLATE_REL),
    "TranslateYRel": _shift_op(pixel_ops.translate_y_offsets, "y", _TRANSLATE_REL),
}


@functools.lru_cache(maxsize=16)
def _level_to_arg_table(names: tuple[str, ...], translate_pct: float) -> torch.Tensor:
    return torch.tensor([OPS[name].level.row(translate_pct) for name in names], dtype=torch.float64)


def op_arguments(
    names: Sequence[str], ops: torch.Tensor, levels: torch.Tensor, gen: torch.Generator, translate_pct: float
) -> torch.Tensor:
    """Per-sample op arguments (float64) for op indices ``ops`` (-1: skipped) and ``levels`` (0..10)."""
    table = _level_to_arg_table(tuple(names), translate_pct)
    scale, cap, floor, signed, out_scale, offset = table[ops.clamp(min=0)].unbind(1)
    v = levels.double() / LEVEL_DENOM * scale
    v = torch.where(floor.bool(), torch.minimum(v.floor(), cap), v)
    negate = (torch.rand(len(v), generator=gen) > 0.5) & signed.bool()  # timm's _randomly_negate
    return offset + out_scale * torch.where(negate, -v, v)


@dataclass
class _LayerContext:
    gen: torch.Generator
    fill: torch.Tensor  # [C] fill colour in 0..255 for geometric ops, on the batch's device
    mode: str  # interpolation of the geometric ops
    translate_pct: float


def _apply_shift_groups(groups: list[tuple[torch.Tensor, torch.Tensor, str]], ctx: _LayerContext) -> None:
    """Shear/translate in place: ``groups`` holds (images, offsets, axis) per axis. Square images
    go through one resampling call: the y group transposed joins the x group (one call fewer per
    layer, which matters on a CPU where these slices are small and per-call overhead dominates)."""
    if not groups:
        return
    h, w = groups[0][0].shape[-2:]
    if h != w:
        for part, offsets, axis in groups:
            part.copy_(pixel_ops.shift_images(part, offsets, axis, ctx.fill, ctx.mode).round_())
        return
    lines = torch.cat([part if axis == "x" else part.transpose(-1, -2) for part, _, axis in groups])
    offsets = torch.cat([offsets for _, offsets, _ in groups])
    out = pixel_ops.shift_lines(lines, offsets, ctx.fill, ctx.mode).round_()
    for (part, _, axis), done in zip(groups, out.split([len(part) for part, _, _ in groups]), strict=True):
        part.copy_(done if axis == "x" else done.transpose(-1, -2))


def _parse_config(config: str, hparams: dict[str, Any]) -> tuple[Any, float | None]:
    """timm's RandAugment for ``config``, and the probability that overrides its own (or None).

    ``trivialaugment`` is TrivialAugment on timm's op set: one op per image, always applied,
    magnitude uniform in [0, 10] (torchvision's TrivialAugmentWide uses wider magnitude ranges).
    """
    if config == "trivialaugment":
        config = "rand-n1-m10-mstd101-inc1"  # mstd > 100: timm's uniform magnitude sampling
        prob_override = 1.0
    elif config.startswith("rand"):
        prob_override = None
    else:
        raise RecipeError(
            f"augment.auto_augment '{config}' has no batched version in the tensor pipeline "
            "(rand-... and trivialaugment do); set data.pipeline=loader to use it"
        )
    try:
        timm_ra = rand_augment_transform(config, hparams)
    except Exception as exc:  # timm raises assertion/value errors on bad strings
        raise RecipeError(
            f"augment.auto_augment '{config}' is not a valid timm RandAugment string: {exc}"
        ) from None
    unsupported = sorted({op.name for op in timm_ra.ops} - OPS.keys())
    if unsupported:
        raise RecipeError(
            f"augment.auto_augment '{config}' uses {', '.join(unsupported)}, which the tensor pipeline "
            "does not implement; set data.pipeline=loader"
        )
    return timm_ra, prob_override


class BatchRandAugment:
    """timm RandAugment (``rand-m9-mstd0.5-inc1`` and friends, or ``trivialaugment``) on a batch.

    For every sample and layer it draws an op (with replacement, or timm's weights without
    replacement), whether it applies (``prob``) and its magnitude (gaussian around M, clipped to
    [0, mmax]; uniform when mstd is inf), as timm does; each op then runs once on the samples that
    drew it. ``mean`` gives the fill colour of the geometric ops, ``interpolation`` their resampling.
    """

    def __init__(self, config: str, img_size: int, mean: Sequence[float], interpolation: str) -> None:
        hparams = {
            "translate_const": int(img_size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in mean),
        }
        timm_ra, prob_override = _parse_config(config, hparams)
        self.names = [op.name for op in timm_ra.ops]
        self.ops = [OPS[name] for name in self.names]
        first = timm_ra.ops[0]
        self.num_layers = timm_ra.num_layers
        self.prob = prob_override if prob_override is not None else first.prob
        self.magnitude = float(first.magnitude)
        self.magnitude_std = float(first.magnitude_std)
        if self.magnitude_std > 100:
            self.magnitude_std = float("inf")  # timm's own parsing maps mstd > 100 to uniform
        self.magnitude_max = float(first.magnitude_max or LEVEL_DENOM)
        self.translate_pct = float(first.hparams.get("translate_pct", 0.45))
        weights = timm_ra.choice_weights
        self.choice_weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.fill = torch.tensor(hparams["img_mean"], dtype=torch.float32)
        self.mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        self._sort_rank = self._sort_rank_table()

    def sample_levels(self, gen: torch.Generator, n: int) -> torch.Tensor:
        """Per-sample magnitudes as timm's ``AugmentOp`` draws them."""
        if self.magnitude_std == float("inf"):
            level = torch.rand(n, generator=gen, dtype=torch.float64) * self.magnitude
        elif self.magnitude_std > 0:
            level = self.magnitude + self.magnitude_std * torch.randn(n, generator=gen, dtype=torch.float64)
        else:
            level = torch.full((n,), self.magnitude, dtype=torch.float64)
        return level.clamp(0.0, self.magnitude_max)

    def sample_ops(self, gen: torch.Generator, n: int) -> torch.Tensor:
        """Op indices ``[n, num_layers]``; -1 where the op was skipped (probability ``1 - prob``)."""
        k = len(self.names)
        if self.choice_weights is None:
            ops = torch.randint(k, (n, self.num_layers), generator=gen)
        else:
            ops = torch.multinomial(self.choice_weights.expand(n, k), self.num_layers, generator=gen)
        skipped = torch.rand(n, self.num_layers, generator=gen) > self.prob
        return torch.where(skipped, -1, ops)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment float images in 0..255 ``[B, C, H, W]``.

        Returns the augmented images *in a new order* and that order (a host tensor: output ``i`` is
        input ``order[i]``): each layer sorts the batch by op so every op works on a contiguous
        slice, with no gather or scatter per op. The caller reorders the labels to match.
        """
        n = len(x)
        ops = self.sample_ops(gen, n)
        ctx = _LayerContext(gen, to_device(self.fill[: x.shape[1]], x.device), self.mode, self.translate_pct)
        total_order = torch.arange(n)
        for layer in range(self.num_layers):
            levels = self.sample_levels(gen, n)
            x, order = self._apply_layer(x, ops[total_order, layer], levels, ctx)
            total_order = total_order[order]
        return x, total_order

    def _apply_layer(
        self, x: torch.Tensor, ops: torch.Tensor, levels: torch.Tensor, ctx: _LayerContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Sort the samples by op on the host (no device sync): each op then runs once on its
        # contiguous slice, with no gather or scatter per op. Shear/translate along x (and along y)
        # sort next to each other and share one resampling call: fewer, larger calls.
        rank = self._sort_rank[ops + 1]  # skipped samples first
        order = torch.argsort(rank, stable=True)
        x = x.index_select(0, to_device(order, x.device))  # ~6x faster than x[order] on CPU
        ops = ops[order]
        args = op_arguments(self.names, ops, levels[order], ctx.gen, ctx.translate_pct)
        counts = torch.bincount(rank[order], minlength=len(self.names) + 1).tolist()
        start = counts[0]  # samples that skip this layer keep their pixels
        h, w = x.shape[-2:]
        shifts: dict[str, tuple[int, list[torch.Tensor]]] = {}  # axis -> (first sample, offsets)
        for count in counts[1:]:
            if count == 0:
                continue
            op = self.ops[int(ops[start])]
            arg = args[start : start + count]
            if op.offsets is not None:  # a shift op: resampled below, with the others of its axis
                first, offsets = shifts.setdefault(op.axis, (start, []))
                offsets.append(op.offsets(arg, h, w))
            else:
                part = x[start : start + count]
                part.copy_(op.apply(part, arg, fill=ctx.fill, mode=ctx.mode).round_())  # stays in 0..255
            start += count
        groups = [
            (x[first : first + sum(map(len, offs))], torch.cat(offs), axis)
            for axis, (first, offs) in shifts.items()
        ]
        _apply_shift_groups(groups, ctx)
        return x, order

    def _sort_rank_table(self) -> torch.Tensor:
        """Sort key per op index + 1 (0: skipped): ops in list order, then the x shifts, then the y."""
        axis_order = {"": 0, "x": 1, "y": 2}
        ordered = sorted(range(len(self.ops)), key=lambda i: axis_order[self.ops[i].axis])
        table = torch.zeros(len(self.ops) + 1, dtype=torch.long)
        for position, op_index in enumerate(ordered, start=1):
            table[op_index + 1] = position
        return table
