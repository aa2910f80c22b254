"""timm's PIL augmentations on every Pillow astro allows (CI also runs this against the newest deps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from astrocli.data import build_datasets, build_train_transform
from astrocli.recipe import load_recipe


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_posterize_increasing_at_magnitude_10_gives_black_not_an_error(
    mode: str, galaxy_sample_dir: Path
) -> None:
    from timm.data.auto_augment import AugmentOp

    build_train_transform(load_recipe(None, ["augment.auto_augment=rand-m9-mstd0.5-inc1"]), [0.5], [0.5])
    path = sorted(galaxy_sample_dir.glob("*/*.jpg"))[0]
    img = Image.open(path).convert(mode)
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)  # timm: 4 - 10 * 4 / 10 = 0 bits kept
    out = np.asarray(op(img))
    assert out.shape == np.asarray(img).shape and not out.any()  # Pillow <= 12's answer: all black
    kept = np.asarray(AugmentOp("Posterize", prob=1.0, magnitude=5)(img))  # 2 bits: the normal path
    assert (kept & 0x3F == 0).all() and kept.any()


def test_randaugment_inc1_at_full_magnitude_runs_on_real_images(galaxy_sample_dir: Path) -> None:
    recipe = load_recipe(
        None,
        [
            f"data.root={galaxy_sample_dir}",
            "data.img_size=32",
            "augment.crop=pad_crop",
            "augment.auto_augment=rand-n3-m10-mstd0-inc1",  # magnitude 10 every draw: posterize to 0 bits
            "data.val_fraction=0.2",
        ],
    )
    bundle = build_datasets(recipe.data)
    transform = build_train_transform(recipe)
    torch.manual_seed(0)
    out = torch.stack([transform(bundle.train[i][0]) for i in range(24)])
    assert out.shape == (24, 3, 32, 32) and torch.isfinite(out).all()
