"""Crops and resampling on uint8 batches ``[B, C, H, W]``: the tensor pipeline's geometry.

Training: timm's random-resized-crop (:func:`sample_rrc_boxes`: timm's parameter sampling exactly),
resampled by :func:`crop_resize` with PIL's kernels written as per-sample matrices (within 1-2 grey
levels of PIL: PIL rounds to uint8 between its two passes), horizontal and vertical flips folded into
those matrices for free; or a resize plus the zero-padded random crop (:func:`pad_crop`, CIFAR's).
Evaluation: timm's resize-shorter-side and centre crop (:func:`resize_center_crop`).

CPU speed (see docs/performance.md): no per-sample Python loops; the resampling is two batched
matmuls; row gathers use ``index_select`` (several times faster than advanced indexing on CPU); and
the matrices of every crop of a small image come from one precomputed table.

Why matrices: torch has no antialiased resize of a per-sample box (``F.interpolate`` and
torchvision's ``resized_crop`` take one box for the whole batch), and a box's matrix is exact for PIL's
bilinear and bicubic kernels, antialiasing included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from astrocli.data.tensor_draws import randint_inclusive, to_device, uniform


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
    target_area = uniform(gen, n * attempts, scale[0], scale[1]).view(n, attempts) * area
    log_ratio = uniform(gen, n * attempts, math.log(ratio[0]), math.log(ratio[1])).view(n, attempts)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target_area * aspect)).long()
    h = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    first = torch.argmax(fits.int(), dim=1)  # first fitting attempt (0 when none fits)
    any_fit = fits.any(dim=1)
    h = h.gather(1, first[:, None]).squeeze(1)
    w = w.gather(1, first[:, None]).squeeze(1)
    top = randint_inclusive(gen, (height - h).clamp(min=0))
    left = randint_inclusive(gen, (width - w).clamp(min=0))
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
