"""Batched training augmentation on tensors: per-sample random, executed batch-wide.

The tensor pipeline (``tensor_pipeline.py``) feeds a whole uint8 batch ``[B, C, H, W]`` through
:class:`BatchAugment` on the device the batch is on. Every random decision (crop boxes, flips,
RandAugment op choice and magnitude, erasing boxes) is drawn on the host from one seeded
``torch.Generator`` as a handful of small tensors, then copied to the device without a host sync;
only pixel work runs on the device. So the same seed gives the same parameters on CPU and GPU.

Why not timm/torchvision directly: their train transforms work on one PIL image at a time
(timm's ``RandomErasing`` accepts a batch but loops over it in Python), and torchvision's v2
functional ops take one magnitude per call. Here each op runs once per batch on the subset of
samples that drew it, with per-sample magnitudes. timm is still the reference: the RandAugment
string is parsed by timm's own ``rand_augment_transform`` (op list, probability, magnitude, std,
layers), mixup/cutmix *is* timm's ``Mixup`` (it already works on batched tensors), and the
distributions below copy timm's code. Known differences from the PIL pipeline:

- random-resized-crop: timm's parameter sampling exactly, and PIL's resampling kernels written as
  per-sample matrices (within 1-2 grey levels of PIL: PIL rounds to uint8 between its two passes);
- RandAugment geometric ops (rotate, shear, translate) use ``grid_sample`` with the recipe's
  interpolation; colour ops work on float values rounded to integers after every op, as PIL's
  uint8 images are; the 3-augment ops (Desaturate, GaussianBlur) are not implemented;
- colour jitter (used only without auto_augment) applies brightness, contrast, saturation in a
  fixed order, where torchvision shuffles the order per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data.auto_augment import rand_augment_transform
from torchvision.transforms.v2 import functional as TF

from astrocli.errors import RecipeError

# Luma weights PIL uses for convert("L") (ITU-R 601-2).
_LUMA = (0.299, 0.587, 0.114)
_LEVEL_DENOM = 10.0  # timm's magnitude scale: M10 is the maximum level


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to ``device`` without making the host wait (pinned, non-blocking).

    A plain ``.to("cuda")`` from pageable memory waits for the stream: a host sync per call."""
    if tensor.device.type != "cpu" or device.type != "cuda":
        return tensor.to(device)  # no host memory involved, or no GPU: nothing to wait for
    return tensor.pin_memory().to(device, non_blocking=True)


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low


def _randint_inclusive(gen: torch.Generator, high: torch.Tensor) -> torch.Tensor:
    """Per-element integers uniform in ``[0, high]`` (python's ``random.randint(0, high)``)."""
    u = torch.rand(high.shape, generator=gen, dtype=torch.float64)
    return torch.minimum((u * (high + 1).double()).floor().long(), high.long())


# ------------------------------------------------------------------------------------------------
# Crops
# ------------------------------------------------------------------------------------------------


def sample_rrc_boxes(
    gen: torch.Generator,
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    attempts: int = 10,
) -> torch.Tensor:
    """Random-resized-crop boxes ``[n, 4]`` (top, left, h, w), timm's sampling, vectorised.

    Each sample makes ``attempts`` tries at (area in ``scale``, log-uniform aspect in ``ratio``) and
    takes its first try that fits; samples with none fall back to timm's central crop.
    """
    area = height * width
    target_area = _uniform(gen, n * attempts, scale[0], scale[1]).view(n, attempts) * area
    log_ratio = _uniform(gen, n * attempts, math.log(ratio[0]), math.log(ratio[1])).view(n, attempts)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    first = torch.argmax(fits.int(), dim=1)  # first fitting attempt (0 when none fits)
    any_fit = fits.any(dim=1)
    h = h.gather(1, first[:, None]).squeeze(1)
    w = w.gather(1, first[:, None]).squeeze(1)
    top = _randint_inclusive(gen, (height - h).clamp(min=0))
    left = _randint_inclusive(gen, (width - w).clamp(min=0))
    fallback = _central_crop_fallback(height, width, ratio)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(any_fit[:, None], boxes, fallback[None, :])


def _central_crop_fallback(height: int, width: int, ratio: Sequence[float]) -> torch.Tensor:
    """timm's fallback when no attempt fits: the whole image, clamped to the ratio range."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return torch.tensor([(height - h) // 2, (width - w) // 2, h, w], dtype=torch.long)


def _pil_filter(x: torch.Tensor, interpolation: str) -> torch.Tensor:
    """PIL's resampling kernels: bicubic (a = -0.5, support 2) or bilinear (triangle, support 1)."""
    x = x.abs()
    if interpolation == "bicubic":
        a = -0.5
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = (((x - 5) * x + 8) * x - 4) * a
        return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
    return (1 - x).clamp(min=0)


def _crop_kernels(in_size: int, out_size: int, interpolation: str) -> torch.Tensor:
    """``[in_size + 1, out_size, in_size]``: the resampling matrix of a crop of each length at 0.

    PIL's ``resize`` of a cropped image, written as a matrix: the kernel is stretched by the scale
    when shrinking (antialiasing), and only pixels inside the crop contribute (torchvision crops
    before it resizes). torch has no per-sample-box antialiased resize, hence this.
    """
    length = torch.arange(in_size + 1, dtype=torch.float64).clamp(min=1)[:, None, None]
    scale = length / out_size
    centre = (torch.arange(out_size, dtype=torch.float64)[None, :, None] + 0.5) * scale
    pixel = torch.arange(in_size, dtype=torch.float64)[None, None, :]
    if interpolation == "nearest":
        weights = (pixel == torch.floor(centre)).double()
    else:
        weights = _pil_filter((pixel + 0.5 - centre) / scale.clamp(min=1.0), interpolation)
    weights = weights * (pixel < length)
    return (weights / weights.sum(dim=2, keepdim=True).clamp(min=1e-12)).float()


_KERNEL_TABLES: dict[tuple[int, int, str], torch.Tensor] = {}


def resample_weights(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, interpolation: str
) -> torch.Tensor:
    """Per-sample 1-D resampling matrices ``[n, out_size, in_size]`` for crops [start, start+length).

    The matrix of a crop depends on its length only, shifted by its start: look the length up in a
    table built once per (sizes, interpolation), then shift it.
    """
    key = (in_size, out_size, interpolation)
    if key not in _KERNEL_TABLES:
        _KERNEL_TABLES[key] = _crop_kernels(in_size, out_size, interpolation)
    kernels = _KERNEL_TABLES[key][length.long()]  # [n, out, in], crop at position 0
    shifted = torch.arange(in_size)[None, :] - start.long()[:, None]  # [n, in]: position in the crop
    inside = (shifted >= 0)[:, None, :]
    index = shifted.clamp(min=0)[:, None, :].expand(-1, out_size, -1)
    return kernels.gather(2, index) * inside


def crop_resize(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    interpolation: str = "bicubic",
    hflip: torch.Tensor | None = None,
    vflip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop every image to its box (top, left, h, w) and resize it to ``size`` x ``size``, as PIL.

    Separable: two batched matmuls with per-sample weight matrices (exact for PIL's bilinear and
    bicubic kernels, antialiasing included), which is also the fastest batched form on CPU and GPU.
    ``hflip``/``vflip`` (host bool ``[n]``) mirror those samples for free by reversing their matrices.
    """
    _, _, h, w = images.shape
    top, left, box_h, box_w = boxes.unbind(1)
    rows = resample_weights(top, box_h, h, size, interpolation)
    cols = resample_weights(left, box_w, w, size, interpolation)
    if vflip is not None:
        rows = torch.where(vflip[:, None, None], rows.flip(1), rows)
    if hflip is not None:
        cols = torch.where(hflip[:, None, None], cols.flip(1), cols)
    rows, cols = to_device(rows, images.device), to_device(cols, images.device)
    n, c = images.shape[:2]
    size_c = size * c
    # rows: [n, S, H] @ [n, H, C*W] -> [n, S, C*W]; cols: [n, S*C, W] @ [n, W, S] -> [n, S*C, S]
    x = torch.bmm(rows, images.permute(0, 2, 1, 3).reshape(n, h, c * w).float())
    x = torch.bmm(x.view(n, size_c, w), cols.transpose(1, 2))
    return x.view(n, size, c, size).permute(0, 2, 1, 3).contiguous()


def pad_crop(images: torch.Tensor, offsets: torch.Tensor, padding: int, size: int) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a ``size`` crop at per-sample (top, left) ``offsets``."""
    padded = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    ar = torch.arange(size, device=device)
    rows = (offsets[:, 0:1].to(device) + ar)[:, :, None]  # [B, size, 1]
    cols = (offsets[:, 1:2].to(device) + ar)[:, None, :]  # [B, 1, size]
    batch = torch.arange(len(images), device=device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def resize_square(images: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize float images to ``size`` x ``size`` (antialiased when shrinking, as PIL)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "nearest"
    antialias = mode != "nearest"
    return F.interpolate(images, size=(size, size), mode=mode, antialias=antialias, align_corners=False)


def resize_center_crop(images: torch.Tensor, size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
    """Evaluation geometry of timm: resize the shorter side to ``size / crop_pct``, centre-crop ``size``."""
    scale_size = int(math.floor(size / crop_pct))
    h, w = images.shape[-2:]
    if (h, w) == (size, size) and scale_size == size:
        return images.float()
    short = min(h, w)
    new_h, new_w = round(h * scale_size / short), round(w * scale_size / short)
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "nearest"
    out = F.interpolate(images.float(), size=(new_h, new_w), mode=mode, antialias=mode != "nearest")
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return out[..., top : top + size, left : left + size].clamp(0, 255)


# ------------------------------------------------------------------------------------------------
# RandAugment ops on float images in [0, 255], one per-sample argument each
# ------------------------------------------------------------------------------------------------


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return to_device(values.to(x.dtype), x.device).view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = _LUMA  # Python scalars: no weight tensor to copy to the device
    return r * x[:, 0:1] + g * x[:, 1:2] + b * x[:, 2:3]


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, factor)`` with a per-sample factor, clipped to [0, 255]."""
    f = _per_sample(factor, x)
    return (degenerate + f * (x - degenerate)).clamp(0, 255)


def _sharpen_degenerate(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre weight 5, sum 13) inside, original pixels on the border."""
    # (3x3 sum + 4 x centre) / 13 via avg_pool2d: far cheaper than a depthwise conv2d on CPU.
    smooth = (F.avg_pool2d(x, 3, stride=1) * 9 + 4 * x[..., 1:-1, 1:-1]) / 13
    out = x.clone()
    out[..., 1:-1, 1:-1] = smooth
    return out


def _affine(x: torch.Tensor, matrices: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply PIL-convention affine maps (output pixel -> input pixel, [n, 2, 3]) with a fill colour."""
    n, _, h, w = x.shape
    to_norm = torch.tensor([[2.0 / w, 0, -1], [0, 2.0 / h, -1], [0, 0, 1]], dtype=torch.float64)
    from_norm = torch.linalg.inv(to_norm)
    full = torch.cat([matrices, torch.tensor([0.0, 0, 1], dtype=torch.float64).expand(n, 1, 3)], dim=1)
    theta = to_device((to_norm @ full @ from_norm)[:, :2].float(), x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    shifted = x - fill.view(1, -1, 1, 1)  # zeros padding of (x - fill) + fill = fill outside the image
    out = F.grid_sample(shifted, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return (out + fill.view(1, -1, 1, 1)).clamp(0, 255)


def _rotate_matrices(degrees: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL ``Image.rotate``: counter-clockwise about the centre, as an output->input map."""
    a = -torch.deg2rad(degrees.double())
    cx, cy = w / 2.0, h / 2.0
    cos, sin = torch.cos(a), torch.sin(a)
    tx = cos * -cx + sin * -cy + cx
    ty = -sin * -cx + cos * -cy + cy
    return torch.stack([torch.stack([cos, sin, tx], 1), torch.stack([-sin, cos, ty], 1)], 1)


def _simple_matrices(n: int, a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> torch.Tensor:
    """``[n, 2, 3]`` PIL affine data (a, b, c, d, e, f); any argument may be a per-sample tensor."""
    cols = [torch.as_tensor(v, dtype=torch.float64).expand(n) for v in (a, b, c, d, e, f)]
    return torch.stack(cols, 1).view(n, 2, 3)


def _signed(gen: torch.Generator, values: torch.Tensor) -> torch.Tensor:
    """timm's ``_randomly_negate``: flip the sign with probability 0.5."""
    flip = torch.rand(values.shape, generator=gen) > 0.5
    return torch.where(flip, -values, values)


GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def geometric_matrices(name: str, arg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL affine data ``[n, 2, 3]`` (output -> input pixel) of timm's geometric ops."""
    n, arg = len(arg), arg.double()
    if name == "Rotate":
        return _rotate_matrices(arg, h, w)
    if name == "ShearX":
        return _simple_matrices(n, b=arg)
    if name == "ShearY":
        return _simple_matrices(n, d=arg)
    if name == "TranslateXRel":
        return _simple_matrices(n, c=arg * w)
    return _simple_matrices(n, f=arg * h)  # TranslateYRel


_ENHANCE_OPS = ("Color", "Contrast", "Brightness", "Sharpness")


@dataclass
class _OpContext:
    gen: torch.Generator
    fill: torch.Tensor  # [C] fill colour in 0..255 for geometric ops
    mode: str  # grid_sample interpolation
    translate_pct: float


def _op_arg(name: str, level: torch.Tensor, ctx: _OpContext) -> torch.Tensor:
    """timm's ``LEVEL_TO_ARG`` for a vector of levels (0..10), random negation included."""
    frac = level / _LEVEL_DENOM
    if name == "Rotate":
        return _signed(ctx.gen, frac * 30.0)
    if name in ("ShearX", "ShearY"):
        return _signed(ctx.gen, frac * 0.3)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _signed(ctx.gen, frac * ctx.translate_pct)
    if name.removesuffix("Increasing") in _ENHANCE_OPS and name.endswith("Increasing"):
        return 1.0 + _signed(ctx.gen, frac * 0.9)
    if name in _ENHANCE_OPS:
        return frac * 1.8 + 0.1
    if name == "Posterize":
        return (frac * 4).floor()
    if name == "PosterizeIncreasing":
        return 4 - (frac * 4).floor()
    if name == "PosterizeOriginal":
        return (frac * 4).floor() + 4
    if name == "Solarize":
        return (frac * 256).floor().clamp(max=256)
    if name == "SolarizeIncreasing":
        return 256 - (frac * 256).floor().clamp(max=256)
    if name == "SolarizeAdd":
        return (frac * 110).floor().clamp(max=128)
    return level  # AutoContrast, Equalize, Invert take no argument


def _apply_op(name: str, x: torch.Tensor, arg: torch.Tensor, ctx: _OpContext) -> torch.Tensor:
    """One RandAugment op on a float [n, C, H, W] subset in 0..255, ``arg`` per sample."""
    h, w = x.shape[-2:]
    base = name.removesuffix("Increasing").removesuffix("Original")
    if base == "AutoContrast":
        return TF.autocontrast(x / 255.0) * 255.0
    if base == "Equalize":
        return TF.equalize(x.round().to(torch.uint8)).float()
    if base == "Invert":
        return 255.0 - x
    if base == "Posterize":
        bits = arg.long().clamp(0, 8)
        mask = to_device((255 - (2 ** (8 - bits) - 1)).to(torch.uint8), x.device).view(-1, 1, 1, 1)
        return (x.round().to(torch.uint8) & mask).float()
    if base == "Solarize":
        return torch.where(x >= _per_sample(arg, x), 255.0 - x, x)
    if base == "SolarizeAdd":
        return torch.where(x < 128, (x + _per_sample(arg, x)).clamp(max=255), x)
    if base == "Color":
        return _blend(_gray(x).expand_as(x), x, arg)
    if base == "Contrast":
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True).round()  # PIL: int(mean + 0.5) of the L image
        return _blend(mean.expand_as(x), x, arg)
    if base == "Brightness":
        return _blend(torch.zeros_like(x), x, arg)
    if base == "Sharpness":
        return _blend(_sharpen_degenerate(x), x, arg)
    if base in GEOMETRIC_OPS:
        return _affine(x, geometric_matrices(base, arg, h, w), ctx.fill, ctx.mode)
    raise RecipeError(f"RandAugment op '{name}' has no batched version; set data.pipeline=loader to use it")


SUPPORTED_OPS = {
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "PosterizeIncreasing", "PosterizeOriginal",
    "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing", "Contrast",
    "ContrastIncreasing", "Brightness", "BrightnessIncreasing", "Sharpness", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
}  # fmt: skip


class BatchRandAugment:
    """timm RandAugment (``rand-m9-mstd0.5-inc1`` and friends), per-sample random, batch-wide.

    The config string is parsed by timm itself; we read back its op names, probability, magnitude,
    magnitude std/max and layer count, then draw for every sample and layer: an op (with
    replacement, or timm's weights without replacement), whether it applies (``prob``) and its
    magnitude (gaussian around M, clipped to [0, mmax]; uniform when mstd is inf). Each op then runs
    once on the samples that drew it.

    ``trivialaugment`` is TrivialAugment on timm's op set: one op per image, always applied, magnitude
    uniform in [0, 10] (torchvision's TrivialAugmentWide uses wider magnitude ranges).
    """

    def __init__(self, config: str, img_size: int, mean: Sequence[float], interpolation: str) -> None:
        hparams = {
            "translate_const": int(img_size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in mean),
        }
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
        self.names = [op.name for op in timm_ra.ops]
        unsupported = sorted(set(self.names) - SUPPORTED_OPS)
        if unsupported:
            raise RecipeError(
                f"augment.auto_augment '{config}' uses {', '.join(unsupported)}, which the tensor pipeline "
                "does not implement; set data.pipeline=loader"
            )
        first = timm_ra.ops[0]
        self.num_layers = timm_ra.num_layers
        self.prob = prob_override if prob_override is not None else first.prob
        self.magnitude = float(first.magnitude)
        self.magnitude_std = float(first.magnitude_std)
        if self.magnitude_std > 100:
            self.magnitude_std = float("inf")  # timm's own parsing maps mstd > 100 to uniform
        self.magnitude_max = float(first.magnitude_max or _LEVEL_DENOM)
        self.translate_pct = float(first.hparams.get("translate_pct", 0.45))
        weights = timm_ra.choice_weights
        self.choice_weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.fill = torch.tensor(hparams["img_mean"], dtype=torch.float32)
        self.mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"

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
        ctx = _OpContext(gen, to_device(self.fill[: x.shape[1]], x.device), self.mode, self.translate_pct)
        total_order = torch.arange(n)
        for layer in range(self.num_layers):
            levels = self.sample_levels(gen, n)
            x, order = self._apply_layer(x, ops[total_order, layer], levels, ctx)
            total_order = total_order[order]
        return x, total_order

    def _apply_layer(
        self, x: torch.Tensor, ops: torch.Tensor, levels: torch.Tensor, ctx: _OpContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Sort the samples by op on the host (no device sync): each colour op then runs once on its
        # slice, and the geometric ops, sorted last, share one grid_sample (one affine per sample).
        rank = self._sort_rank[ops + 1]  # skipped samples first, geometric ops last
        order = torch.argsort(rank, stable=True)
        x = x[to_device(order, x.device)]
        levels, ops = levels[order], ops[order]
        counts = torch.bincount(rank[order], minlength=len(self.names) + 1).tolist()
        start = counts[0]  # samples that skip this layer keep their pixels
        h, w = x.shape[-2:]
        geo_start, geo_mats = None, []
        for count in counts[1:]:
            if count == 0:
                continue
            name = self.names[int(ops[start])]
            arg = _op_arg(name, levels[start : start + count], ctx)
            if name in GEOMETRIC_OPS:
                geo_start = start if geo_start is None else geo_start
                geo_mats.append(geometric_matrices(name, arg, h, w))
            else:
                part = x[start : start + count]
                part.copy_(_apply_op(name, part, arg, ctx).round_().clamp_(0, 255))
            start += count
        if geo_start is not None:
            part = x[geo_start:]
            part.copy_(_affine(part, torch.cat(geo_mats), ctx.fill, ctx.mode).round_())
        return x, order

    @property
    def _sort_rank(self) -> torch.Tensor:
        """Sort key per op index + 1 (0: skipped): colour ops in list order, then geometric ops."""
        if not hasattr(self, "_rank_table"):
            colour = [i for i, name in enumerate(self.names) if name not in GEOMETRIC_OPS]
            geometric = [i for i, name in enumerate(self.names) if name in GEOMETRIC_OPS]
            table = torch.zeros(len(self.names) + 1, dtype=torch.long)
            for position, op_index in enumerate(colour + geometric, start=1):
                table[op_index + 1] = position
            self._rank_table = table
        return self._rank_table


# ------------------------------------------------------------------------------------------------
# Colour jitter, random erasing
# ------------------------------------------------------------------------------------------------


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """torchvision ``ColorJitter(s, s, s)`` per sample: brightness, contrast, saturation (fixed order)."""
    n = len(x)
    low = max(0.0, 1.0 - strength)
    for name in ("Brightness", "Contrast", "Color"):
        factor = _uniform(gen, n, low, 1.0 + strength)
        x = _apply_op(name, x, factor, None)  # colour ops need no context
    return x


def sample_erase_boxes(
    gen: torch.Generator,
    n: int,
    height: int,
    width: int,
    prob: float,
    max_count: int = 1,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
) -> torch.Tensor:
    """timm ``RandomErasing`` boxes ``[n, max_count, 4]`` (top, left, h, w); h = w = 0 means no box.

    Per sample: erase with probability ``prob``; count uniform in [1, max_count]; each box makes 10
    tries at (area uniform in [min_area, max_area] / count, log-uniform aspect in
    [min_aspect, 1/min_aspect]) and keeps the first that fits strictly inside the image.
    """
    attempts = 10
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    erase = torch.rand(n, generator=gen, dtype=torch.float64) <= prob
    count = torch.randint(1, max_count + 1, (n,), generator=gen)
    boxes = torch.zeros(n, max_count, 4, dtype=torch.long)
    for slot in range(max_count):
        target = _uniform(gen, n * attempts, min_area, max_area).view(n, attempts) * height * width
        target = target / count[:, None]
        aspect = torch.exp(_uniform(gen, n * attempts, log_lo, log_hi).view(n, attempts))
        h = torch.round(torch.sqrt(target * aspect)).long()
        w = torch.round(torch.sqrt(target / aspect)).long()
        fits = (w < width) & (h < height)
        first = torch.argmax(fits.int(), dim=1)
        h = h.gather(1, first[:, None]).squeeze(1)
        w = w.gather(1, first[:, None]).squeeze(1)
        top = _randint_inclusive(gen, (height - h).clamp(min=0))
        left = _randint_inclusive(gen, (width - w).clamp(min=0))
        active = erase & fits.any(dim=1) & (slot < count)
        boxes[:, slot] = torch.where(active[:, None], torch.stack([top, left, h, w], 1), 0)
    return boxes


def box_mask(boxes: torch.Tensor, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Boolean mask ``[n, 1, H, W]``: True inside any of each sample's boxes (top, left, h, w)."""
    boxes = to_device(boxes, device)
    rows = torch.arange(height, device=device).view(1, 1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, width)
    top, left, h, w = (boxes[..., i].view(*boxes.shape[:2], 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return inside.any(dim=1, keepdim=True)


def random_erase(
    x: torch.Tensor, mask: torch.Tensor, mode: str, noise_gen: torch.Generator | None = None
) -> torch.Tensor:
    """Fill the masked pixels of normalised images: 'pixel' normal noise, 'rand' one normal colour
    per sample, 'const' zeros (timm's modes). Pass only the samples that have a box: noise is drawn
    for every pixel of ``x``."""
    if mode == "pixel":
        fill = torch.randn(x.shape, generator=noise_gen, device=x.device, dtype=x.dtype)
    elif mode == "rand":
        fill = torch.randn(len(x), x.shape[1], 1, 1, generator=noise_gen, device=x.device, dtype=x.dtype)
    else:
        fill = torch.zeros((), device=x.device, dtype=x.dtype)
    return torch.where(mask, fill, x)
