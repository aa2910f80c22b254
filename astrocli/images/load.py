"""Opening any image file for an 8-bit model (``astro predict``, ONNX export checks): JPEG, PNG, ...
through Pillow, FITS through :func:`astrocli.images.arrays.read_fits` with the usual display stretch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from astrocli.images.arrays import FITS_EXTENSIONS, read_fits
from astrocli.images.pil import convert_image, image_mode


def load_fits(path: Path) -> Any:
    """Read the first image HDU of a FITS file as an 8-bit PIL image.

    Astronomical pixels are floats with arbitrary range; they are clipped to the 0.5-99.5
    percentile range and scaled linearly to 0-255 (the usual display stretch), since the model
    was trained on 8-bit images. 2-D data becomes grayscale, ``[3, H, W]`` cubes become RGB.
    """
    array = np.asarray(read_fits(path, hdu=None), dtype=np.float64)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)
    elif array.ndim != 2:
        raise ValueError(f"unsupported FITS image shape {array.shape} (need [H, W] or [1|3, H, W])")
    array = np.nan_to_num(array, nan=np.nanmin(array) if np.isfinite(array).any() else 0.0)
    lo, hi = np.percentile(array, [0.5, 99.5])
    scaled = np.clip((array - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(array)
    pixels = (scaled * 255).round().astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L")


def load_image(path: Path, in_chans: int) -> Any:
    """Open and fully decode an image (JPEG, PNG, ... or FITS) in the model's channel mode.

    Raises whatever PIL/astropy raise for an unreadable file; the caller turns it into an error row.
    """
    if path.name.lower().endswith(FITS_EXTENSIONS):
        img = load_fits(path)
    else:
        with Image.open(path) as handle:
            handle.load()  # decode now: a truncated file fails here, not later inside a batch
            img = handle.copy()
    return convert_image(img, image_mode(in_chans))
