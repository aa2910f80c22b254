"""Batched training augmentation on tensors: per-sample random, executed batch-wide.

The tensor pipeline (``tensor_pipeline.py``) feeds a whole uint8 batch ``[B, C, H, W]`` through
:class:`BatchAugment` on the device the batch is on. Every random decision (crop boxes, flips,
RandAugment op choice and magnitude, erasing boxes) is drawn on the host from one seeded
``torch.Generator`` as a handful of small tensors, then copied to the device without a host sync;
only pixel work runs on the device. So the same seed gives the same parameters on CPU and GPU.

CPU speed (see docs/performance.md): no per-sample Python loops; each op runs once per batch on
the slice of samples that drew it; row gathers use ``index_select`` (several times faster than
advanced indexing on CPU); the crop's resampling matrices for small images come from one
precomputed table; and ``tensor_pipeline.keep_freed_batch_buffers`` stops glibc from unmapping
batch-sized buffers after every batch.

Why not timm/torchvision directly: their train transforms work on one PIL image at a time
(timm's ``RandomErasing`` accepts a batch but loops over it in Python), and torchvision's v2
functional ops take one magnitude per call. Here each op runs once per batch on the subset of
samples that drew it, with per-sample magnitudes. timm is still the reference: the RandAugment
string is parsed by timm's own ``rand_augment_transform`` (op list, probability, magnitude, std,
layers), mixup/cutmix *is* timm's ``Mixup`` (it already works on batched tensors), and the
distributions below copy timm's code. Known differences from the PIL pipeline:

- random-resized-crop: timm's parameter sampling exactly, and PIL's resampling kernels written as
  per-sample matrices (within 1-2 grey levels of PIL: PIL rounds to uint8 between its two passes);
- RandAugment geometric ops keep the recipe's interpolation, as timm does (``create_transform``
  passes ``interpolation`` into the RandAugment hparams; timm's own default there is bicubic too):
  shear and translate are per-line 1-D resamplings with PIL's affine rules (its bicubic is the
  a = -1 cubic, taps past the edge repeat the edge pixel, the fill colour where the source centre
  is outside), within 1 grey level of PIL; rotate uses ``grid_sample`` (torch's bicubic has
  a = -0.75 and blends the fill in at the border, a few grey levels from PIL). Colour ops work on
  float values rounded to integers after every op, as PIL's uint8 images are; the 3-augment ops
  (Desaturate, GaussianBlur) are not implemented;
- colour jitter (used only without auto_augment) applies brightness, contrast, saturation in a
  fixed order, where torchvision shuffles the order per image.
"""

from __future__ import annotations

import functools
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
_PLACED_TABLES: dict[tuple[int, int, str], torch.Tensor | None] = {}
PLACED_TABLE_MAX_BYTES = 32 * 2**20  # small images (CIFAR: 8.6 MB) get every crop's matrix precomputed


def _length_kernels(in_size: int, out_size: int, interpolation: str) -> torch.Tensor:
    key = (in_size, out_size, interpolation)
    if key not in _KERNEL_TABLES:
        _KERNEL_TABLES[key] = _crop_kernels(in_size, out_size, interpolation)
    return _KERNEL_TABLES[key]


def _shift_kernels(kernels: torch.Tensor, start: torch.Tensor, in_size: int) -> torch.Tensor:
    """Move crop-at-0 matrices ``[n, out, in]`` to start at ``start`` (zero before it)."""
    shifted = torch.arange(in_size)[None, :] - start.long()[:, None]  # [n, in]: position in the crop
    inside = (shifted >= 0)[:, None, :]
    index = shifted.clamp(min=0)[:, None, :].expand(-1, kernels.shape[1], -1)
    return kernels.gather(2, index) * inside


def _placed_kernels(in_size: int, out_size: int, interpolation: str) -> torch.Tensor | None:
    """``[2 * (in_size + 1) * in_size, out, in]``: the matrix of every (mirrored, length, start)
    crop, so a batch's matrices are one ``index_select``; None when that table would be too big."""
    key = (in_size, out_size, interpolation)
    if key not in _PLACED_TABLES:
        count = (in_size + 1) * in_size
        if 2 * count * out_size * in_size * 4 > PLACED_TABLE_MAX_BYTES:
            _PLACED_TABLES[key] = None
        else:
            lengths = torch.arange(in_size + 1).repeat_interleave(in_size)
            starts = torch.arange(in_size).repeat(in_size + 1)
            kernels = _length_kernels(in_size, out_size, interpolation)[lengths]
            placed = _shift_kernels(kernels, starts, in_size)
            _PLACED_TABLES[key] = torch.cat([placed, placed.flip(1)])
    return _PLACED_TABLES[key]


def resample_weights(
    start: torch.Tensor,
    length: torch.Tensor,
    in_size: int,
    out_size: int,
    interpolation: str,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample 1-D resampling matrices ``[n, out_size, in_size]`` for crops [start, start+length),
    with the output reversed where ``flip`` (bool ``[n]``) is set.

    The matrix of a crop depends on its length only, shifted by its start: small sizes look every
    (flip, length, start) up in one precomputed table; larger ones look the length up in a table
    built once per (sizes, interpolation), then shift it.
    """
    placed = _placed_kernels(in_size, out_size, interpolation)
    if placed is not None:
        index = length.long() * in_size + start.long()
        if flip is not None:
            index = index + flip.long() * ((in_size + 1) * in_size)
        return placed.index_select(0, index)
    weights = _shift_kernels(_length_kernels(in_size, out_size, interpolation)[length.long()], start, in_size)
    return weights if flip is None else torch.where(flip[:, None, None], weights.flip(1), weights)


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
    Returns a float view that is not contiguous (call ``.contiguous()`` if that matters).
    """
    _, _, h, w = images.shape
    top, left, box_h, box_w = boxes.unbind(1)
    rows = resample_weights(top, box_h, h, size, interpolation, vflip)
    cols = resample_weights(left, box_w, w, size, interpolation, hflip)
    rows, cols = to_device(rows, images.device), to_device(cols, images.device)
    n, c = images.shape[:2]
    size_c = size * c
    # rows: [n, S, H] @ [n, H, C*W] -> [n, S, C*W]; cols: [n, S*C, W] @ [n, W, S] -> [n, S*C, S]
    # One copy turns uint8 [n, C, H, W] into float [n, H, C, W] (reshape then .float() would make two).
    rows_major = images.permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)
    x = torch.bmm(rows, rows_major.view(n, h, c * w))
    x = torch.bmm(x.view(n, size_c, w), cols.transpose(1, 2))
    # A [n, C, size, size] view of the [n, size, C, size] result: whatever copies it next (the
    # RandAugment sort, or .contiguous()) fixes the layout in the same pass.
    return x.view(n, size, c, size).permute(0, 2, 1, 3)


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


def resize_center_crop(
    images: torch.Tensor, size: int, crop_pct: float, interpolation: str, float_pixels: bool = False
) -> torch.Tensor:
    """Evaluation geometry of timm: resize the shorter side to ``size / crop_pct``, centre-crop ``size``.

    8-bit levels are clipped to 0..255 after resampling; ``float_pixels`` (the float path) are not.
    """
    scale_size = int(math.floor(size / crop_pct))
    h, w = images.shape[-2:]
    if (h, w) == (size, size) and scale_size == size:
        return images.float()
    short = min(h, w)
    new_h, new_w = round(h * scale_size / short), round(w * scale_size / short)
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "nearest"
    out = F.interpolate(images.float(), size=(new_h, new_w), mode=mode, antialias=mode != "nearest")
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = out[..., top : top + size, left : left + size]
    return out if float_pixels else out.clamp(0, 255)


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
    # (3x3 sum + 4 x centre) / 13, the 3x3 sum as two separable sums of shifted slices: ~10x faster
    # on CPU than avg_pool2d (and than a depthwise conv2d), and plain elementwise work on a GPU.
    rows = x[..., :-2] + x[..., 1:-1] + x[..., 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    out = x.clone()
    out[..., 1:-1, 1:-1] = (box + 4 * x[..., 1:-1, 1:-1]) / 13
    return out


_PIXEL_CENTRES: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _pixel_centres(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``[h * w, 3]`` rows (x + 0.5, y + 0.5, 1) of every output pixel centre, row-major."""
    key = (h, w, device)
    if key not in _PIXEL_CENTRES:
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w)], dim=1)
        _PIXEL_CENTRES[key] = centres.to(device)
    return _PIXEL_CENTRES[key]


def _affine(x: torch.Tensor, matrices: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply PIL-convention affine maps (output pixel -> input pixel, [n, 2, 3]) with a fill colour."""
    n, _, h, w = x.shape
    # The sampling grid in one GEMM: [h*w, 3] pixel centres @ [3, n*2] maps (pixel -> grid_sample's
    # normalised coordinates, align_corners=False). F.affine_grid builds an [n, h*w, 3] base and a
    # batched matmul, several times slower on CPU for the same result.
    to_norm = torch.tensor([[2.0 / w, 0, -1], [0, 2.0 / h, -1]], dtype=torch.float64)
    full = torch.cat([matrices, torch.tensor([0.0, 0, 1], dtype=torch.float64).expand(n, 1, 3)], dim=1)
    maps = to_device((to_norm @ full).permute(2, 0, 1).reshape(3, n * 2).float(), x.device)
    grid = (_pixel_centres(h, w, x.device) @ maps).view(h, w, n, 2).permute(2, 0, 1, 3).contiguous()
    shifted = x - fill.view(1, -1, 1, 1)  # zeros padding of (x - fill) + fill = fill outside the image
    out = F.grid_sample(shifted, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return (out + fill.view(1, -1, 1, 1)).clamp(0, 255)


def _shift_lines(x: torch.Tensor, offsets: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample each line (last axis) of ``x`` [n, C, R, L]: output pixel i of line r of sample k
    takes the input at i + ``offsets[k, r]`` pixels (a host float64 [n, R]), as PIL's affine does.

    Shear and translate are such 1-D resamplings (PIL's 2-D filter degenerates to 1-D for them),
    and along one line the shift's fraction, hence the filter taps' weights, is constant: so each
    line is one window copy (``index_select`` of overlapping windows of the edge-padded lines)
    and 1-4 multiply-adds, a fraction of ``grid_sample``'s 16-tap 2-D work, and PIL's own rules:
    its bicubic is the a = -1 cubic (``Geometry.c``), taps past the edge repeat the edge pixel,
    pixels whose source centre falls outside the image get the fill colour.
    """
    n, c, r, length = x.shape
    # Host side, a few ops on [n, R] tensors: first tap, tap weights, which pixels are inside.
    first_step, polynomial = _LINE_FILTERS[mode]
    base = torch.floor(offsets + 0.5) if mode == "nearest" else torch.floor(offsets)
    frac = (offsets - base)[..., None]
    # tap weights = [1, t, t^2, t^3] @ polynomial: two ops instead of a piecewise kernel
    weights = frac ** torch.arange(len(polynomial), dtype=torch.float64) @ polynomial
    taps = polynomial.shape[1]
    pad = int(base.abs().max()) + 2 if n else 2
    line_start = torch.arange(n * c * r).view(n, c, r) * (length + 2 * pad) + pad + first_step
    first = (line_start + base.long()[:, None, :]).flatten()
    position = torch.arange(length, dtype=torch.float64) + offsets[:, :, None]
    inside = ((position >= -0.5) & (position < length - 0.5))[:, None]
    # Device side: pad with the edge pixels, copy each line's window, weight and sum its taps.
    # Edge padding by concatenation: ~3x faster on CPU than F.pad(mode="replicate").
    edges = (x[..., :1].expand(-1, -1, -1, pad), x, x[..., -1:].expand(-1, -1, -1, pad))
    padded = torch.cat(edges, dim=-1).reshape(-1)
    span = length + taps - 1
    windows = padded.as_strided((padded.numel() - span + 1, span), (1, 1))  # every window, no copy
    lines = windows.index_select(0, to_device(first, x.device)).view(n, c, r, span)
    weights = to_device(weights.to(x.dtype), x.device)[:, None, :, None, :]  # [n, 1, R, 1, taps]
    out = lines[..., 0:length] * weights[..., 0]
    for tap in range(1, taps):
        out.addcmul_(lines[..., tap : tap + length], weights[..., tap])
    return torch.where(to_device(inside, x.device), out, fill.view(1, -1, 1, 1)).clamp_(0, 255)


# Per interpolation: the first tap's position relative to floor(x), and the matrix from the
# powers of the fraction t to the tap weights. PIL's affine bicubic (Geometry.c, BICUBIC macro) is
# v2 + t (v3 - v1) + t^2 (2 v1 - 2 v2 + v3 - v4) + t^3 (-v1 + v2 - v3 + v4): the a = -1 cubic.
_LINE_FILTERS = {
    "bicubic": (
        -1,
        torch.tensor([[0.0, 1, 0, 0], [-1, 0, 1, 0], [2, -2, 1, -1], [-1, 1, -1, 1]], dtype=torch.float64),
    ),
    "bilinear": (0, torch.tensor([[1.0, 0], [-1, 1]], dtype=torch.float64)),
    "nearest": (0, torch.tensor([[1.0]], dtype=torch.float64)),
}

SHIFT_OPS = {"ShearX": "x", "TranslateXRel": "x", "ShearY": "y", "TranslateYRel": "y"}


def shift_offsets(name: str, arg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-line source offsets (pixels, host float64) of a shear/translate op: ``[n, h]`` (one per
    row) for the x ops, ``[n, w]`` (one per column) for the y ops."""
    arg = arg.double()
    if name == "ShearX":  # x_in = x + b (y + 0.5)
        return arg[:, None] * (torch.arange(h, dtype=torch.float64) + 0.5)
    if name == "ShearY":  # y_in = y + d (x + 0.5)
        return arg[:, None] * (torch.arange(w, dtype=torch.float64) + 0.5)
    if name == "TranslateXRel":
        return (arg * w)[:, None].expand(-1, h)
    return (arg * h)[:, None].expand(-1, w)  # TranslateYRel


def shift_images(
    x: torch.Tensor, offsets: torch.Tensor, axis: str, fill: torch.Tensor, mode: str
) -> torch.Tensor:
    """Apply :func:`shift_offsets` offsets along ``axis`` ('x': rows shift, 'y': columns shift)."""
    if axis == "x":
        return _shift_lines(x, offsets, fill, mode)
    return _shift_lines(x.transpose(-1, -2), offsets, fill, mode).transpose(-1, -2)


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


def _level_to_arg(name: str, translate_pct: float) -> tuple[float, float, bool, bool, float, float]:
    """timm's ``LEVEL_TO_ARG`` of ``name`` as (scale, cap, floor, signed, out_scale, offset):
    v = (level / 10) * scale, floored and capped when ``floor``, negated half the time when
    ``signed``, then arg = offset + out_scale * v. One form for every op, so a whole layer's
    arguments are a few vector ops (see :func:`op_arguments`) instead of a few per op."""
    inf = float("inf")
    if name == "Rotate":
        return 30.0, inf, False, True, 1.0, 0.0
    if name in ("ShearX", "ShearY"):
        return 0.3, inf, False, True, 1.0, 0.0
    if name in ("TranslateXRel", "TranslateYRel"):
        return translate_pct, inf, False, True, 1.0, 0.0
    if name.removesuffix("Increasing") in _ENHANCE_OPS and name.endswith("Increasing"):
        return 0.9, inf, False, True, 1.0, 1.0
    if name in _ENHANCE_OPS:
        return 1.8, inf, False, False, 1.0, 0.1
    if name.startswith("Posterize"):
        out, offset = {"Posterize": (1.0, 0.0), "PosterizeIncreasing": (-1.0, 4.0)}.get(name, (1.0, 4.0))
        return 4.0, inf, True, False, out, offset
    if name == "Solarize":
        return 256.0, 256.0, True, False, 1.0, 0.0
    if name == "SolarizeIncreasing":
        return 256.0, 256.0, True, False, -1.0, 256.0
    if name == "SolarizeAdd":
        return 110.0, 128.0, True, False, 1.0, 0.0
    return _LEVEL_DENOM, inf, False, False, 1.0, 0.0  # AutoContrast, Equalize, Invert: the level


@functools.lru_cache(maxsize=16)
def _level_to_arg_table(names: tuple[str, ...], translate_pct: float) -> torch.Tensor:
    return torch.tensor([_level_to_arg(name, translate_pct) for name in names], dtype=torch.float64)


def op_arguments(
    names: Sequence[str], ops: torch.Tensor, levels: torch.Tensor, gen: torch.Generator, translate_pct: float
) -> torch.Tensor:
    """Per-sample op arguments (float64) for op indices ``ops`` (-1: skipped) and ``levels`` (0..10)."""
    table = _level_to_arg_table(tuple(names), translate_pct)
    scale, cap, floor, signed, out_scale, offset = table[ops.clamp(min=0)].unbind(1)
    v = levels.double() / _LEVEL_DENOM * scale
    v = torch.where(floor.bool(), torch.minimum(v.floor(), cap), v)
    negate = (torch.rand(len(v), generator=gen) > 0.5) & signed.bool()  # timm's _randomly_negate
    return offset + out_scale * torch.where(negate, -v, v)


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
    if base == "Rotate":
        return _affine(x, geometric_matrices(base, arg, h, w), ctx.fill, ctx.mode)
    if base in SHIFT_OPS:
        return shift_images(x, shift_offsets(base, arg, h, w), SHIFT_OPS[base], ctx.fill, ctx.mode)
    raise RecipeError(f"RandAugment op '{name}' has no batched version; set data.pipeline=loader to use it")


SUPPORTED_OPS = {
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "PosterizeIncreasing", "PosterizeOriginal",
    "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing", "Contrast",
    "ContrastIncreasing", "Brightness", "BrightnessIncreasing", "Sharpness", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
}  # fmt: skip


def _apply_shift_groups(groups: list[tuple[torch.Tensor, torch.Tensor, str]], ctx: _OpContext) -> None:
    """Shear/translate in place: ``groups`` holds (images, offsets, axis) per axis. Square images
    go through one resampling call: the y group transposed joins the x group (one call fewer per
    layer, which matters on a CPU where these slices are small and per-call overhead dominates)."""
    if not groups:
        return
    h, w = groups[0][0].shape[-2:]
    if h != w:
        for part, offsets, axis in groups:
            part.copy_(shift_images(part, offsets, axis, ctx.fill, ctx.mode).round_())
        return
    lines = torch.cat([part if axis == "x" else part.transpose(-1, -2) for part, _, axis in groups])
    out = _shift_lines(lines, torch.cat([offsets for _, offsets, _ in groups]), ctx.fill, ctx.mode).round_()
    for (part, _, axis), done in zip(groups, out.split([len(part) for part, _, _ in groups]), strict=True):
        part.copy_(done if axis == "x" else done.transpose(-1, -2))


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
            name = self.names[int(ops[start])]
            arg = args[start : start + count]
            if name in SHIFT_OPS:
                first, offsets = shifts.setdefault(SHIFT_OPS[name], (start, []))
                offsets.append(shift_offsets(name, arg, h, w))
            else:
                part = x[start : start + count]
                part.copy_(_apply_op(name, part, arg, ctx).round_())  # every op stays in 0..255
            start += count
        groups = [
            (x[first : first + sum(map(len, offs))], torch.cat(offs), axis)
            for axis, (first, offs) in shifts.items()
        ]
        _apply_shift_groups(groups, ctx)
        return x, order

    @property
    def _sort_rank(self) -> torch.Tensor:
        """Sort key per op index + 1 (0: skipped): ops in list order, then the x shifts, then the y."""
        if not hasattr(self, "_rank_table"):
            axis_order = {None: 0, "x": 1, "y": 2}
            ordered = sorted(range(len(self.names)), key=lambda i: axis_order[SHIFT_OPS.get(self.names[i])])
            table = torch.zeros(len(self.names) + 1, dtype=torch.long)
            for position, op_index in enumerate(ordered, start=1):
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
    per sample, 'const' zeros (timm's modes). ``mask`` (bool ``[n, 1, H, W]``) may be a host tensor:
    then 'pixel' counts the erased pixels without a device sync and, like timm, draws noise only
    for them (a fifth of the pixels of an erased image on average, not all of them)."""
    if mode == "pixel":
        count = int(mask.sum()) * x.shape[1]  # on a host mask: no device sync
        noise = torch.randn(count, generator=noise_gen, device=x.device, dtype=x.dtype)
        return x.masked_scatter(to_device(mask, x.device).expand_as(x), noise)
    mask = to_device(mask, x.device)
    if mode == "rand":
        fill = torch.randn(len(x), x.shape[1], 1, 1, generator=noise_gen, device=x.device, dtype=x.dtype)
    else:
        fill = torch.zeros((), device=x.device, dtype=x.dtype)
    return torch.where(mask, fill, x)
