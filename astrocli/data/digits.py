"""``digits``: scikit-learn's bundled handwritten digits, a real data set that needs no download.

1,797 images of 8x8 pixels with 17 gray levels (UCI optical digits), ten classes. The images are
upscaled to ``data.img_size`` once (bilinear) so every model sees its native resolution; the held-out
set is a seeded stratified split. This is what the quick start trains on, offline, in minutes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from astrocli.data.base import ArrayImageDataset, NumpyStore, SourceData
from astrocli.recipe import DataConfig

GRAY_LEVELS = 16  # sklearn's digits take values 0..16


def load_digit_images(img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 ``[N, img_size, img_size, 1]`` images, int64 labels) from scikit-learn's copy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(np.round(digits.images * (255.0 / GRAY_LEVELS)), 0, 255).astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(img).resize((img_size, img_size), Image.BILINEAR)) for img in small]
    )
    return big[..., None], digits.target.astype(np.int64)


def digits_source(cfg: DataConfig) -> SourceData:
    """All 1,797 digits as one ``train`` split (the held-out split is carved out, stratified)."""
    images, labels = load_digit_images(cfg.img_size)
    pixels = images.astype(np.float64) / 255.0
    mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)

    def train() -> ArrayImageDataset:
        return ArrayImageDataset(NumpyStore(images), np.arange(len(labels)), labels.tolist(), cfg.in_chans)

    info = {"origin": "scikit-learn load_digits (UCI optical recognition of handwritten digits)"}
    return SourceData({"train": train}, [str(d) for d in range(10)], (mean,), (std,), info)
