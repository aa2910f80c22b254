"""Pictures of dataset items for people: 8-bit thumbnails as inline ``data:`` URIs (torch-free).

:func:`to_pil` turns what a dataset yields (a PIL image, or a float ``[C, H, W]`` array already scaled
by the recipe) into an 8-bit picture; :func:`data_uri` makes the small JPEG a report inlines.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

THUMB_SIDE = 112  # pixels: sharp on a laptop screen at the gallery's 112-px cells, small in the page


def to_pil(item: Any) -> Image.Image:
    """An 8-bit RGB or L picture of a dataset item: PIL as it is, float ``[C, H, W]`` (scaled by the
    recipe, about 0..1) clipped to 0..255; one band is gray, three or more show the first three."""
    if isinstance(item, Image.Image):
        return item if item.mode in ("RGB", "L") else item.convert("RGB")
    array = np.asarray(item, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.dtype != np.uint8 and float(np.nanmax(array, initial=0.0)) > 1.5:
        array = array / 255.0  # an unscaled 8-bit cache read as floats
    pixels = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if pixels.shape[0] >= 3:
        return Image.fromarray(np.moveaxis(pixels[:3], 0, -1), "RGB")
    return Image.fromarray(pixels[0], "L")


def data_uri(img: Image.Image, side: int = THUMB_SIDE) -> str:
    """A small inline image: ``side`` px on its long edge (small images scaled up, pixels kept sharp)."""
    img = img.copy()
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
