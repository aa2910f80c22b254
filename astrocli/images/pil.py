"""Image helpers that need only numpy and Pillow: file types, mode conversion, eval preprocessing.

``astro predict --checkpoint model.onnx`` must run where PyTorch is not installed (a deployment
with onnxruntime only), so nothing here imports torch, torchvision or timm, and neither may
anything this module imports. :mod:`astrocli.data.base` re-exports the conversion helpers.

    preprocess = EvalPreprocess(img_size=32, crop_pct=0.875, interpolation="bicubic",
                                mean=[0.5] * 3, std=[0.5] * 3, in_chans=3)
    batch = np.stack([preprocess(img) for img in images])   # float32 [B, C, H, W]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

# timm's interpolation names -> the Pillow filters torchvision's Resize hands to PIL for PIL images.
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


# What PIL raises for a file it cannot decode. DecompressionBombError (an image over twice
# Image.MAX_IMAGE_PIXELS, e.g. 15000x15000) derives from Exception, not OSError: without it here
# one oversized file stopped a whole training run instead of being skipped like a corrupt one.
UNREADABLE_IMAGE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has an image extension PIL reads."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def image_mode(in_chans: int) -> str:
    """The PIL mode datasets yield for ``in_chans`` channels (1: ``L``, 3: ``RGB``)."""
    if in_chans == 1:
        return "L"
    if in_chans == 3:
        return "RGB"
    raise ValueError(f"in_chans must be 1 or 3 for image data, got {in_chans}")


def convert_image(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image (grayscale, palette, RGBA, 16-bit, float) to ``mode`` (``RGB`` or ``L``).

    Transparent pixels are composited over black: astronomical images have a dark sky, and
    PIL's plain ``convert("RGB")`` would expose whatever colour hides under alpha 0.
    """
    if img.mode == mode:
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL clips wide integer/float images to 0..255 when converting; rescale by the range instead.
        array = np.asarray(img, dtype=np.float32)
        lo, hi = float(array.min()), float(array.max())
        scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        img = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert(mode)


def shorter_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """``(width, height)`` with the shorter side ``short`` and the aspect ratio kept.

    The longer side is truncated, not rounded, exactly as torchvision's ``Resize(int)`` computes it.
    """
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size x size`` of an ``[H, W, C]`` array, zero-padded first if it is smaller.

    Offsets round like torchvision's ``CenterCrop`` (``round((H - size) / 2)``, banker's rounding)
    and padding splits the extra pixel the same way, so crops agree pixel for pixel.
    """
    height, width = pixels.shape[:2]
    if size > height or size > width:
        pad_h, pad_w = max(size - height, 0), max(size - width, 0)
        pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = pixels.shape[:2]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return pixels[top : top + size, left : left + size]


class EvalPreprocess:
    """The evaluation transform in numpy + Pillow: PIL image -> float32 ``[C, H, W]``.

    It is timm's ``transforms_imagenet_eval`` (centre mode) step for step: resize the shorter side
    to ``floor(img_size / crop_pct)`` with PIL and the checkpoint's filter (torchvision's Resize
    calls the same ``Image.resize`` for PIL images), centre-crop ``img_size``, scale to [0, 1],
    normalise with ``mean``/``std``. Written by hand because torchvision and timm import torch, and
    an ONNX deployment has neither; on real images it matches torchvision's output exactly.
    """

    def __init__(
        self,
        img_size: int,
        crop_pct: float,
        interpolation: str,
        mean: Sequence[float],
        std: Sequence[float],
        in_chans: int = 3,
    ) -> None:
        if interpolation not in PIL_FILTERS:
            raise ValueError(f"unknown interpolation '{interpolation}'; use one of {sorted(PIL_FILTERS)}")
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(
                f"mean/std need {in_chans} values for in_chans={in_chans}, got {len(mean)}/{len(std)}"
            )
        self.img_size = img_size
        self.scale_size = math.floor(img_size / (crop_pct or 0.875))  # timm's default crop_pct when unset
        self.resample = PIL_FILTERS[interpolation]
        self.mode = image_mode(in_chans)
        # float32 like torchvision's Normalize, which subtracts and divides in the image's dtype.
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Preprocess one image (any PIL mode; converted to ``L``/``RGB`` first)."""
        img = convert_image(img, self.mode)
        size = shorter_side_size(img.width, img.height, self.scale_size)
        if size != img.size:  # torchvision skips the resize when the size already fits
            img = img.resize(size, self.resample)
        pixels = np.asarray(img)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pixels = center_crop(pixels, self.img_size)
        scaled = pixels.astype(np.float32) / np.float32(255.0)
        normalised = (scaled - self.mean) / self.std
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))
