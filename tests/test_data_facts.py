"""What the images are decides the defaults, and a skipped image is always seen.

* Flips follow the images: 3-band FITS cutouts of real galaxies get both flips (not the grayscale
  rule), and the line printed says why; ``data.in_chans`` left unset follows the data (grayscale
  16-bit PNGs train on one channel).
* A file that cannot be read (a 15000 x 15000 PNG over Pillow's decompression-bomb limit, a truncated
  JPEG) among real galaxy images prints its ``warning:`` line even with ``PYTHONWARNINGS=ignore``, and
  ``RUN_DIR/skipped-images.txt`` lists it, with both pipelines, the tensor cache built or reused.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import class_dirs, one_thread, run_astro  # noqa: F401 (autouse fixture)
from PIL import Image

from astrocli.checkpoint import load_checkpoint
from astrocli.engine import train
from astrocli.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def small_galaxies(
    galaxy_sample_dir: Path, classes: int = 4, per_class: int = 6
) -> list[tuple[np.ndarray, int]]:
    """Real galaxies of ``classes`` Galaxy10 classes at 16 px, RGB uint8."""
    out = []
    for label, folder in enumerate(class_dirs(galaxy_sample_dir)[:classes]):
        for jpg in sorted(folder.glob("*.jpg"))[:per_class]:
            with Image.open(jpg) as img:
                out.append(
                    (np.asarray(img.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR)), label)
                )
    return out


def write_recipe(path: Path, root: Path, out: Path, **data: object) -> Path:
    recipe = {
        "model": {"name": "resnet20"},
        "data": {"source": "imagefolder", "root": str(root), "img_size": 16, "num_workers": 0,
                 "val_fraction": 0.25, **data},
        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "device": "cpu",
                  "calibrate": False},
        "output": {"dir": str(out), "name": "run", "plots": False},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_three_band_fits_gets_both_flips_and_says_why(
    galaxy_sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    fits = pytest.importorskip("astropy.io.fits")
    for i, (pixels, label) in enumerate(small_galaxies(galaxy_sample_dir)):
        folder = tmp_path / "fits" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        flux = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(3.2e-3) - np.float32(0.05)
        fits.PrimaryHDU(flux).writeto(folder / f"{i:03d}.fits")
    recipe = write_recipe(
        tmp_path / "r.yaml", tmp_path / "fits", tmp_path / "runs", in_chans=3, scaling="asinh"
    )
    code, out, err = run_astro(["train", "--recipe", recipe], monkeypatch, capsys)
    assert code == 0, err
    saved = load_recipe(tmp_path / "runs" / "run" / "recipe.yaml")
    assert (saved.augment.hflip, saved.augment.vflip) == (0.5, 0.5)
    flips = [line for line in out.splitlines() if line.startswith("flips:")]
    assert len(flips) == 1 and flips[0].startswith("flips: horizontal and vertical (scientific images")


def test_in_chans_left_unset_follows_grayscale_16bit_pngs(
    galaxy_sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for i, (pixels, label) in enumerate(small_galaxies(galaxy_sample_dir)):
        folder = tmp_path / "png16" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        luma = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.uint16) * 257  # 16-bit gray
        Image.fromarray(luma).save(folder / f"{i:03d}.png")
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "png16", tmp_path / "runs")
    code, out, err = run_astro(["train", "--recipe", recipe], monkeypatch, capsys)
    assert code == 0, err
    assert "data.in_chans=1, the images' band count (data.in_chans was not set)" in err
    run = tmp_path / "runs" / "run"
    assert load_recipe(run / "recipe.yaml").data.in_chans == 1
    assert load_checkpoint(run / "best.safetensors")[1].in_chans == 1
    # Set by the recipe, it is kept: 3 channels (the gray band repeated), as before.
    recipe = write_recipe(tmp_path / "r3.yaml", tmp_path / "png16", tmp_path / "runs3", in_chans=3)
    code, _, err = run_astro(["train", "--recipe", recipe], monkeypatch, capsys)
    assert code == 0, err
    assert load_recipe(tmp_path / "runs3" / "run" / "recipe.yaml").data.in_chans == 3


# ---------------------------------------------------------------------------------------------
# Skipped images
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def galaxies_with_bad_files(galaxy_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four classes of real Galaxy10 JPEGs (6 each), a 15000 x 15000 PNG and a truncated JPEG."""
    root = tmp_path_factory.mktemp("bad") / "data"
    for folder in class_dirs(galaxy_sample_dir)[:4]:
        (root / folder.name).mkdir(parents=True)
        for jpg in sorted(folder.glob("*.jpg"))[:6]:
            shutil.copy(jpg, root / folder.name / jpg.name)
    first = class_dirs(root)[0]
    Image.new("1", (15000, 15000)).save(first / "huge_15000.png")  # 225 Mpx: over Pillow's bomb limit
    data = next(first.glob("*.jpg")).read_bytes()
    (class_dirs(root)[1] / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return root


def overrides(root: Path, out: Path, pipeline: str) -> list[str]:
    values = {
        "data.source": "imagefolder", "data.root": root, "data.img_size": 8, "data.num_workers": 0,
        "data.val_fraction": 0.25, "data.pipeline": pipeline, "data.cache_dir": out.parent / "cache",
        "model.name": "resnet20", "train.epochs": 1, "train.batch_size": 8, "train.device": "cpu",
        "train.calibrate": False, "output.dir": out, "output.name": "run", "output.plots": False,
        "output.log": "quiet",
    }  # fmt: skip
    return [f"{k}={v}" for k, v in values.items()]


def check_listed(run: Path, err: str) -> None:
    assert re.search(r"warning: 1 unreadable image under .* skipped: .*huge_15000\.png", err), err
    assert re.search(r"warning: 1 unreadable image skipped: .*truncated\.jpg", err), err
    listed = (run / "skipped-images.txt").read_text()
    assert "huge_15000.png\tDecompressionBombError" in listed and "truncated.jpg\t" in listed
    assert len(listed.splitlines()) == 2


def test_skipped_images_are_seen_with_pythonwarnings_ignore(
    galaxies_with_bad_files: Path, tmp_path: Path
) -> None:
    out = tmp_path / "loader"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "astrocli", "train", "--recipe", "quickstart"]
    command += overrides(galaxies_with_bad_files, out, "loader")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    check_listed(out / "run", done.stderr)


def test_skipped_images_are_listed_by_the_tensor_pipeline_cached_or_not(
    galaxies_with_bad_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for attempt in ("decoded", "cached"):
        out = tmp_path / attempt
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what PYTHONWARNINGS=ignore does
            run = train(load_recipe(None, overrides(galaxies_with_bad_files, out, "tensor")))
        check_listed(run, capsys.readouterr().err)
    assert len(list((tmp_path / "cache").glob("tensors-train-*.safetensors"))) == 1  # reused
