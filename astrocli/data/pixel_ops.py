"""RandAugment's pixel ops on float batches ``[n, C, H, W]`` in 0..255, one argument per sample.

Each op works on the whole slice of a batch that drew it, with a per-sample argument (a host
tensor ``[n]``), and has timm's calling shape: ``op(images, arg, fill=..., mode=...)``, where the
colour ops ignore the fill colour and interpolation that the geometric ops use
(:mod:`astrocli.data.rand_augment` holds the table of ops; colour jitter reuses the enhance ops).

Known differences from timm's PIL ops:

- the geometric ops keep the recipe's interpolation, as timm does (``create_transform`` passes
  ``interpolation`` into the RandAugment hparams; timm's own default there is bicubic too). Shear and
  translate are per-line 1-D resamplings with PIL's affine rules (its bicubic is the a = -1 cubic,
  taps past the edge repeat the edge pixel, the fill colour where the source centre is outside),
  within 1 grey level of PIL; rotate uses ``grid_sample`` (torch's bicubic has a = -0.75 and blends
  the fill in at the border, a few grey levels from PIL);
- the colour ops work on float values, and the caller rounds to integers after every op, as PIL's
  uint8 images are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from astrocli.data.tensor_draws import to_device

# Luma weights PIL uses for convert("L") (ITU-R 601-2).
_LUMA = (0.299, 0.587, 0.114)


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


# ------------------------------------------------------------------------------------------------
# Colour ops (the argument is unused by the first three)
# ------------------------------------------------------------------------------------------------


def auto_contrast(x: torch.Tensor, arg: torch.Tensor, **_: Any) -> torch.Tensor:
    return TF.autocontrast(x / 255.0) * 255.0


def equalize(x: torch.Tensor, arg: torch.Tensor, **_: Any) -> torch.Tensor:
    return TF.equalize(x.round().to(torch.uint8)).float()


def invert(x: torch.Tensor, arg: torch.Tensor, **_: Any) -> torch.Tensor:
    return 255.0 - x


def posterize(x: torch.Tensor, bits: torch.Tensor, **_: Any) -> torch.Tensor:
    """Keep the top ``bits`` bits (0..8) of every level."""
    bits = bits.long().clamp(0, 8)
    mask = to_device((255 - (2 ** (8 - bits) - 1)).to(torch.uint8), x.device).view(-1, 1, 1, 1)
    return (x.round().to(torch.uint8) & mask).float()


def solarize(x: torch.Tensor, threshold: torch.Tensor, **_: Any) -> torch.Tensor:
    """Invert the levels at or above ``threshold``."""
    return torch.where(x >= _per_sample(threshold, x), 255.0 - x, x)


def solarize_add(x: torch.Tensor, addition: torch.Tensor, **_: Any) -> torch.Tensor:
    """Add ``addition`` to the levels below 128 (clipped to 255)."""
    return torch.where(x < 128, (x + _per_sample(addition, x)).clamp(max=255), x)


def color(x: torch.Tensor, factor: torch.Tensor, **_: Any) -> torch.Tensor:
    """PIL ``ImageEnhance.Color``: blend with the grey image."""
    return _blend(_gray(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor, **_: Any) -> torch.Tensor:
    """PIL ``ImageEnhance.Contrast``: blend with the image's mean grey level."""
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True).round()  # PIL: int(mean + 0.5) of the L image
    return _blend(mean.expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor, **_: Any) -> torch.Tensor:
    """PIL ``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor, **_: Any) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with the smoothed image."""
    return _blend(_sharpen_degenerate(x), x, factor)


# ------------------------------------------------------------------------------------------------
# Rotate: a 2-D affine map through grid_sample
# ------------------------------------------------------------------------------------------------

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


def _rotate_matrices(degrees: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL ``Image.rotate``: counter-clockwise about the centre, as an output->input map ``[n, 2, 3]``."""
    a = -torch.deg2rad(degrees.double())
    cx, cy = w / 2.0, h / 2.0
    cos, sin = torch.cos(a), torch.sin(a)
    tx = cos * -cx + sin * -cy + cx
    ty = -sin * -cx + cos * -cy + cy
    return torch.stack([torch.stack([cos, sin, tx], 1), torch.stack([-sin, cos, ty], 1)], 1)


def rotate(
    x: torch.Tensor, degrees: torch.Tensor, *, fill: torch.Tensor, mode: str, **_: Any
) -> torch.Tensor:
    """PIL ``Image.rotate(degrees)`` with the fill colour outside the source image."""
    h, w = x.shape[-2:]
    return _affine(x, _rotate_matrices(degrees, h, w), fill, mode)


# ------------------------------------------------------------------------------------------------
# Shear and translate: per-line 1-D resampling
# ------------------------------------------------------------------------------------------------

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


def shift_lines(x: torch.Tensor, offsets: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
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


def shift_images(
    x: torch.Tensor, offsets: torch.Tensor, axis: str, fill: torch.Tensor, mode: str
) -> torch.Tensor:
    """:func:`shift_lines` along ``axis``: 'x' shifts within rows (``offsets`` ``[n, H]``), 'y' within
    columns (``offsets`` ``[n, W]``)."""
    if axis == "x":
        return shift_lines(x, offsets, fill, mode)
    return shift_lines(x.transpose(-1, -2), offsets, fill, mode).transpose(-1, -2)


# Per-line source offsets (pixels, host float64) of the shear/translate ops: [n, h] (one per row)
# for the x ops, [n, w] (one per column) for the y ops. PIL's affine data as an output -> input map.


def shear_x_offsets(factor: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """x_in = x + factor (y + 0.5)."""
    return factor.double()[:, None] * (torch.arange(h, dtype=torch.float64) + 0.5)


def shear_y_offsets(factor: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """y_in = y + factor (x + 0.5)."""
    return factor.double()[:, None] * (torch.arange(w, dtype=torch.float64) + 0.5)


def translate_x_offsets(fraction: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """x_in = x + fraction * width."""
    return (fraction.double() * w)[:, None].expand(-1, h)


def translate_y_offsets(fraction: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """y_in = y + fraction * height."""
    return (fraction.double() * h)[:, None].expand(-1, w)


ShiftOffsets = Callable[[torch.Tensor, int, int], torch.Tensor]


def shift(
    offsets: ShiftOffsets, axis: str, x: torch.Tensor, arg: torch.Tensor, *, fill: torch.Tensor, mode: str
) -> torch.Tensor:
    """A shear or translate op on its own: the ``offsets`` of ``arg`` resampled along ``axis``."""
    h, w = x.shape[-2:]
    return shift_images(x, offsets(arg, h, w), axis, fill, mode)
