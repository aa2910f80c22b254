"""Shared fixtures: the real data in ../shared/data, and small torch settings for a 2-core CPU."""

from __future__ import annotations

import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from battery import IS_ROOT, train_args
from helpers import class_dirs
from PIL import Image

from astrocli.engine import train
from astrocli.recipe import load_recipe

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


# -- the bad-input battery (test_bad_inputs.py, test_run_guard.py) --------------------------------


@pytest.fixture(scope="module")
def data(galaxy_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 real galaxies (3 classes x 6) at 32 px: a tiny image-folder tree."""
    root = tmp_path_factory.mktemp("bad_inputs") / "data"
    for cls in class_dirs(galaxy_sample_dir)[:3]:
        (root / cls.name).mkdir(parents=True)
        for path in sorted(cls.glob("*.jpg"))[:6]:
            Image.open(path).convert("RGB").resize((32, 32)).save(root / cls.name / path.name)
    return root


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder nobody can write: a read-only tmpfs as root (chmod does not stop root)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if IS_ROOT:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=False)
        if done.returncode != 0:
            pytest.skip("running as root but cannot mount a read-only tmpfs")
        yield folder
        subprocess.run(["umount", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two small tmpfs mounts (24 MB and 2 MB); the full-disk tests need root to mount them."""
    if not IS_ROOT:
        pytest.skip("full-disk tests mount a small tmpfs, which needs root")
    mounts = []
    for name, size in (("disk", "24m"), ("tiny", "2m")):
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False
        )
        if done.returncode != 0:
            pytest.skip("running as root but cannot mount a tmpfs (no CAP_SYS_ADMIN in this container?)")
        mounts.append(folder)
    yield mounts[0], mounts[1]
    for folder in mounts:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture(scope="module")
def trained_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (with resume.safetensors and last.safetensors)."""
    out = tmp_path_factory.mktemp("trained")
    recipe = load_recipe("quickstart", [a for a in train_args(data, out) if "=" in a])
    return train(recipe, log="quiet")
