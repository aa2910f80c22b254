"""Per-channel normalisation statistics: ImageNet's, and adapting any to a model's channel count."""

from __future__ import annotations

from astrocli.errors import DataError

# ImageNet statistics (timm's IMAGENET_DEFAULT_MEAN/STD): the default for image folders.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def adapt_channels(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_chans`` channels: repeat a gray value, or luma-weight colour.

    The luma-weighted mean is exact for grayscale converted with PIL's weights; the weighted std
    is an approximation (it ignores the correlation between channels), fine for normalisation.
    """
    if len(values) == in_chans:
        return tuple(float(v) for v in values)
    if len(values) == 1:
        return (float(values[0]),) * in_chans
    if len(values) == 3 and in_chans == 1:
        weights = (0.299, 0.587, 0.114)
        return (round(sum(w * v for w, v in zip(weights, values, strict=True)), 4),)
    raise DataError(f"cannot adapt {len(values)}-channel statistics to {in_chans} channels")
