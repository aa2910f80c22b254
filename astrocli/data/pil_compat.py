"""Keep timm's PIL augmentations working on every Pillow that astro's requirements allow.

Pillow 13 made ``ImageOps.posterize(img, 0)`` raise ``ValueError`` (Pillow <= 12 returned a
black image: keeping 0 bits masks every bit away). timm's ``PosterizeIncreasing`` maps
magnitude 10 to 0 bits, so RandAugment with ``rand-m9-mstd0.5-inc1`` (the CCT recipes) drew
it within the first epoch and the loader pipeline crashed. astro's own tensor pipeline
(:func:`astrocli.data.pixel_ops.posterize`) already treats 0 bits as Pillow 12 did; this wraps timm's
op to do the same, so both pipelines and every Pillow agree.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from timm.data import auto_augment


def _posterize_zero_bits_black(original: Any) -> Any:
    def posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
        if bits_to_keep <= 0:
            return img.point(lambda _: 0)  # Pillow <= 12's result for 0 bits, on every band
        return original(img, bits_to_keep, **kwargs)

    posterize.astro_zero_bits = True  # type: ignore[attr-defined]
    return posterize


def patch_timm_posterize() -> None:
    """Make timm's posterize ops accept 0 bits on Pillow 13 (idempotent; call before building ops).

    timm's ``AugmentOp`` looks its function up in ``NAME_TO_OP`` when constructed, so the table
    entries are replaced, not only the module attribute.
    """
    original = auto_augment.posterize
    if getattr(original, "astro_zero_bits", False):
        return
    patched = _posterize_zero_bits_black(original)
    auto_augment.posterize = patched
    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is original:
            auto_augment.NAME_TO_OP[name] = patched
