"""Shared fixtures: the real data in ../shared/data, and small torch settings for a 2-core CPU."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ASTRO_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    """Return ``path``; in CI a missing data file fails the test, elsewhere it skips with the reason."""
    if path.exists():
        return path
    message = (
        f"real test data missing: {path} (set ASTRO_SHARED_DATA or place ../shared/data beside the repo)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def galaxy_sample_dir() -> Path:
    """100 real Galaxy10 DECaLS JPEGs, ``<index>-<name>/*.jpg``, 10 per class, 256x256 RGB."""
    return _require(SHARED_DATA / "galaxy10-decals-sample")


@pytest.fixture(scope="session")
def cifar10_zip() -> Path:
    """The CIFAR-10 JPEG image-folder zip (train/<class>/*.jpg, test/<class>/*.jpg)."""
    return _require(SHARED_DATA / "cifar10-jpeg.zip")


@pytest.fixture(scope="session")
def cifar10_small(cifar10_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real CIFAR-10 image folder: 20 train and 5 test images per class, extracted once."""
    root = tmp_path_factory.mktemp("cifar10_small")
    per_split = {"train": 20, "test": 5}
    counts: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(cifar10_zip) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if len(parts) != 3 or not parts[2]:
                continue
            split, cls, _ = parts
            if split not in per_split or counts.get((split, cls), 0) >= per_split[split]:
                continue
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            archive.extract(name, root)
    return root
