"""Scientific data on real pixels: FITS cubes, 16-bit PNG, 5-band .npy, h5/npz arrays, scaling.

Every format is made here from the real Galaxy10 sample (downscaled to 32 px): float32 3-band FITS
cubes in flux-like units with noise, 16-bit grayscale PNGs, 5-band channel-last ``.npy`` files,
an h5 file with nested custom keys. Each trains a tiny model briefly, evaluates, exports to ONNX,
and predicts; the ONNX predictions must equal the checkpoint's on the same files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy import visualization
from astropy.io import fits
from helpers import run_astro
from PIL import Image

from astrocli.checkpoint import CheckpointMeta, load_checkpoint
from astrocli.data import build_datasets
from astrocli.engine.launch import train
from astrocli.errors import DataError, RecipeError
from astrocli.images.arrays import ArrayReader
from astrocli.images.scaling import check_scaling, scale_image
from astrocli.inference.evaluate import evaluate
from astrocli.inference.export import export_checkpoint
from astrocli.inference.predict import predict_files
from astrocli.inference.runner import load_runner
from astrocli.recipe import load_recipe, recipe_from_dict

CLASSES = 4  # four Galaxy10 classes, ten galaxies each: enough to train a few steps on


@pytest.fixture(scope="module")
def galaxies(galaxy_sample_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 [40, 32, 32, 3] real galaxies, labels, class names) from four Galaxy10 classes."""
    folders = sorted(p for p in galaxy_sample_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = folders[:CLASSES]
    images, labels = [], []
    for label, folder in enumerate(folders):
        for jpg in sorted(folder.glob("*.jpg"))[:10]:
            with Image.open(jpg) as img:
                images.append(np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)))
            labels.append(label)
    return np.stack(images), np.asarray(labels), [f.name for f in folders]


def flux(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Physical-looking float32 flux [3, H, W] from 8-bit RGB: scale, sky offset, Gaussian noise."""
    rng = np.random.default_rng(seed)
    cube = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(3.2e-3) - np.float32(0.05)
    return (cube + rng.normal(0.0, 0.01, cube.shape)).astype(np.float32)


def write_folder(root: Path, galaxies, write) -> list[Path]:
    """``root/<class>/<i>.<ext>`` via ``write(path_without_suffix, image, index)``; returns the files."""
    images, labels, names = galaxies
    files = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        files.append(write(folder / f"{i:03d}", image, i))
    return files


def recipe(tmp_path: Path, name: str, **overrides) -> object:
    """A tiny resnet20 run: 32 px, one epoch of a few steps, the tensor pipeline, CPU."""
    base = {
        "model": {"name": "resnet20"},
        "data": {"root": str(tmp_path / "data"), "img_size": 32, "num_workers": 0, "val_fraction": 0.25},
        "augment": {"crop": "pad_crop", "padding": 2},
        "train": {"epochs": 1, "batch_size": 10, "max_steps_per_epoch": 2, "device": "cpu", "lr": 2e-3},
        "output": {"dir": str(tmp_path / "runs"), "name": name, "plots": False, "log": "quiet"},
    }
    for key, value in overrides.items():
        section, field = key.split(".", 1)
        base[section][field] = value
    return recipe_from_dict(base)


def export_and_compare(run_dir: Path, files: list[Path]) -> list[dict]:
    """Export to ONNX; predictions of the .onnx equal the checkpoint's on ``files``. Returns them."""
    checkpoint = run_dir / "best.safetensors"
    onnx_path = export_checkpoint(
        checkpoint, "onnx", output=run_dir / "model.onnx", exporter="torchscript"
    ).path
    expected = predict_files(load_runner(checkpoint, device="cpu"), files, top_k=3)
    got = predict_files(load_runner(onnx_path), files, top_k=3)
    assert all("error" not in row for row in expected), expected
    for row, ref in zip(got, expected, strict=True):
        assert row["class_index"] == ref["class_index"]
        assert [t["class_index"] for t in row["topk"]] == [t["class_index"] for t in ref["topk"]]
        for a, b in zip(row["topk"], ref["topk"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    return got


def check_eval(run_dir: Path, expected: int = 10) -> dict:
    """``astro eval``'s computation on the run's held-out split (``expected`` images)."""
    runner = load_runner(run_dir / "best.safetensors", device="cpu")
    bundle = build_datasets(recipe_from_dict(runner.meta.recipe).data)
    report = evaluate(runner, bundle.val, batch_size=16)
    assert report["num_samples"] == len(bundle.val) == expected
    return report


# ------------------------------------------------------------------------------------------------
# Formats end to end
# ------------------------------------------------------------------------------------------------


def test_fits_cubes_train_eval_export_predict(tmp_path, galaxies):
    def write(stem, image, i):
        path = stem.with_suffix(".fits")
        fits.PrimaryHDU(flux(image, i)).writeto(path)
        return path

    files = write_folder(tmp_path / "data", galaxies, write)
    # The shipped recipe, shrunk: its float-path settings, augmentations (RRC, flips, mixup) and scaling.
    shrink = {
        "model.name": "resnet20",
        "data.root": tmp_path / "data",
        "data.img_size": 32,
        "data.num_workers": 0,
        "data.val_fraction": 0.25,
        "data.scaling_params.a": 0.2,
        "train.epochs": 1,
        "train.batch_size": 10,
        "train.max_steps_per_epoch": 2,
        "train.device": "cpu",
        "train.amp": "none",  # astro eval runs in fp32: both losses in full precision, pixel paths compared
        "output.dir": tmp_path / "runs",
        "output.plots": False,
        "output.log": "quiet",
    }
    run_dir = train(load_recipe("galaxy10_fits", [f"{k}={v}" for k, v in shrink.items()]))

    split = json.loads((run_dir / "split.json").read_text())
    assert split["pixels"] == "float" and split["layout"] == "channels_first"
    assert split["cache_dtype"] == "float16" and split["stats"].startswith("computed from the 30")
    assert len(split["mean"]) == 3 and all(0.0 < m < 1.0 for m in split["mean"])  # asinh lands in 0..1
    _, meta = load_checkpoint(run_dir / "best.safetensors")
    assert (meta.pixels, meta.scaling, meta.in_chans) == ("float", "asinh", 3)
    assert meta.scaling_params == {"percent": 99.5, "a": 0.2}

    # The reader gives what astropy gives for the same cube.
    cube = fits.getdata(files[0])
    interval = visualization.PercentileInterval(99.5)
    lo, hi = interval.get_limits(cube[1])
    reference = visualization.AsinhStretch(0.2)(np.clip((cube[1] - lo) / (hi - lo), 0, 1))
    np.testing.assert_allclose(
        ArrayReader.from_config(recipe_from_dict(meta.recipe).data).read(files[0])[1], reference, atol=1e-6
    )

    report = check_eval(run_dir)
    history = (run_dir / "metrics.csv").read_text().splitlines()
    val_loss = float(history[-1].split(",")[history[0].split(",").index("val_loss")])
    assert report["loss"] == pytest.approx(val_loss, abs=1e-3)  # tensor pipeline and numpy path agree
    export_and_compare(run_dir, files[::7])


def test_16bit_png_keeps_the_low_byte(tmp_path, galaxies):
    """Two classes of the same galaxies that differ only below the top 8 bits are told apart."""
    images, _, _ = galaxies
    # 16 px: the point is the bit depth, and a quarter of the pixels trains four times faster.
    small = [
        Image.fromarray(im).convert("L").resize((16, 16), Image.Resampling.BILINEAR) for im in images[:20]
    ]
    luma = np.asarray([np.asarray(im) for im in small], dtype=np.uint16)
    high = np.full_like(luma, 100 << 8)  # the top 8 bits: one flat level for every image of both classes
    dim, bright = high + luma // 2, high + 128 + luma // 2  # the class lives in the low byte only
    root = tmp_path / "data"
    files = []
    for name, stack in (("dim", dim), ("bright", bright)):
        (root / name).mkdir(parents=True)
        for i, pixels in enumerate(stack):
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
            files.append(root / name / f"{i:02d}.png")
    assert np.array_equal(dim >> 8, bright >> 8)  # an 8-bit reduction sees the same images

    r = recipe(tmp_path, "png16", **{"data.in_chans": 1, "data.val_fraction": 0.2, "data.img_size": 16})
    r.train.epochs, r.train.max_steps_per_epoch, r.train.batch_size, r.train.lr = 6, None, 8, 5e-3
    r.augment.hflip = 0.5
    bundle = build_datasets(r.data)
    cache = bundle.train.cache_array()
    assert bundle.split_info["pixels"] == "float" and cache.dtype == np.float16
    targets = np.asarray(bundle.train.targets)
    dim_mean = cache[targets == bundle.class_names.index("dim")].astype(np.float64).mean()
    bright_mean = cache[targets == bundle.class_names.index("bright")].astype(np.float64).mean()
    assert bright_mean - dim_mean == pytest.approx(128 / 65535, rel=0.1)  # the low byte reached the model

    run_dir = train(r)
    assert check_eval(run_dir, expected=8)["top1"] >= 80.0  # a short training separates them
    export_and_compare(run_dir, files[::5])


def test_five_band_npy_folder_channel_last(tmp_path, galaxies):
    def write(stem, image, i):
        rgb = image.astype(np.float32) / 255.0
        extra = np.stack([rgb[..., 0] - rgb[..., 1], rgb.mean(axis=-1) ** 2], axis=-1)  # two derived bands
        path = stem.with_suffix(".npy")
        np.save(path, np.concatenate([rgb, extra], axis=-1).astype(np.float32))  # [32, 32, 5]
        return path

    files = write_folder(tmp_path / "data", galaxies, write)
    run_dir = train(recipe(tmp_path, "npy5", **{"data.in_chans": 5, "data.scaling": "percentile"}))
    split = json.loads((run_dir / "split.json").read_text())
    assert split["layout"] == "channels_last" and len(split["mean"]) == len(split["std"]) == 5
    _, meta = load_checkpoint(run_dir / "best.safetensors")
    assert meta.in_chans == 5
    check_eval(run_dir)
    rows = export_and_compare(run_dir, files[::9])
    assert len(rows) == 5


def test_h5_custom_keys_channel_first(tmp_path, galaxies):
    images, labels, names = galaxies
    path = tmp_path / "cutouts.h5"
    with h5py.File(path, "w") as handle:
        handle["cutouts/flux"] = np.stack([flux(im, i) for i, im in enumerate(images)])  # [N, 3, 32, 32]
        handle["meta/label"] = labels
    r = recipe(
        tmp_path,
        "h5",
        **{
            "data.source": "h5",
            "data.root": str(path),
            "data.images_key": "cutouts/flux",
            "data.labels_key": "meta/label",
            "data.class_names": names,
            "data.scaling": "zscale",
        },
    )
    run_dir = train(r)
    split = json.loads((run_dir / "split.json").read_text())
    assert split["source"] == "h5" and split["layout"] == "channels_first" and split["class_names"] == names
    check_eval(run_dir)
    # Predict on files holding the same rows (channel-first .npy): both runners agree.
    files = []
    for i in (0, 13, 27):
        files.append(tmp_path / f"row{i}.npy")
        np.save(files[-1], flux(images[i], i))
    export_and_compare(run_dir, files)


def test_npz_of_8bit_images_keeps_a_uint8_cache(tmp_path, galaxies):
    images, labels, _ = galaxies
    np.savez(tmp_path / "set.npz", x=images, y=labels)
    cfg = recipe(tmp_path, "npz", **{"data.source": "npz", "data.root": str(tmp_path / "set.npz")}).data
    cfg.images_key, cfg.labels_key = "x", "y"
    bundle = build_datasets(cfg)
    assert bundle.split_info["cache_dtype"] == "uint8" and bundle.class_names == [
        f"class_{i}" for i in range(4)
    ]
    cache = bundle.train.cache_array()
    assert cache.shape == (30, 3, 32, 32)
    first = bundle.train.indices[0]
    np.testing.assert_array_equal(cache[0], images[first].transpose(2, 0, 1))
    np.testing.assert_allclose(bundle.train[0][0], images[first].transpose(2, 0, 1) / 255.0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# One clear line for each bad input
# ------------------------------------------------------------------------------------------------


def fits_folder(tmp_path: Path, galaxies, make_hdus) -> Path:
    images, _, _ = galaxies
    root = tmp_path / "data"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(5):
            make_hdus(flux(images[c * 10 + i], i)).writeto(root / f"c{c}" / f"{i}.fits")
    return root


def build(tmp_path: Path, **overrides):
    cfg = recipe(tmp_path, "bad", **{"data.val_fraction": 0.4, **overrides}).data
    bundle = build_datasets(cfg)
    return bundle


def test_wrong_band_count_is_one_line(tmp_path, galaxies):
    fits_folder(tmp_path, galaxies, lambda cube: fits.PrimaryHDU(cube))
    with pytest.raises(DataError, match=r"\.fits: 3 bands but data\.in_chans is 5; set data\.in_chans=3"):
        build(tmp_path, **{"data.in_chans": 5})


def test_nan_pixels_are_refused_or_filled(tmp_path, galaxies):
    def with_nan(cube):
        cube[0, 3:5, 3:5] = np.nan
        return fits.PrimaryHDU(cube)

    fits_folder(tmp_path, galaxies, with_nan)
    with pytest.raises(DataError, match=r"\.fits: 4 NaN/inf pixels; .*data\.nan_fill=0"):
        build(tmp_path)
    bundle = build(tmp_path, **{"data.nan_fill": 0.0})
    assert np.isfinite(bundle.train.cache_array().astype(np.float32)).all()


def test_hdu_without_image_is_one_line(tmp_path, galaxies):
    def with_table(cube):
        table = fits.BinTableHDU.from_columns(
            [fits.Column(name="z", format="E", array=np.zeros(3))], name="CAT"
        )
        return fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube, name="SCI"), table])

    fits_folder(tmp_path, galaxies, with_table)
    with pytest.raises(DataError, match=r"HDU 'CAT' holds no image \(BinTableHDU\); point data\.fits_hdu"):
        build(tmp_path, **{"data.fits_hdu": "CAT"})
    with pytest.raises(DataError, match=r"no HDU 'RAW' \(data\.fits_hdu\); the file has: PRIMARY, SCI, CAT"):
        build(tmp_path, **{"data.fits_hdu": "RAW"})
    assert build(tmp_path, **{"data.fits_hdu": "SCI"}).train.cache_array().shape == (6, 3, 32, 32)
    assert build(tmp_path).split_info["pixels"] == "float"  # default: the first HDU holding an image


def test_missing_h5_key_is_one_line_from_the_cli(tmp_path, galaxies, monkeypatch, capsys):
    images, labels, _ = galaxies
    with h5py.File(tmp_path / "set.h5", "w") as handle:
        handle["images"], handle["labels"] = images, labels
    (tmp_path / "r.yaml").write_text(
        f"data: {{source: h5, root: {tmp_path / 'set.h5'}, images_key: cutouts}}\n"
        f"output: {{dir: {tmp_path / 'runs'}}}\n"
    )
    code, out, err = run_astro(["train", "-r", tmp_path / "r.yaml"], monkeypatch, capsys)
    assert code == 2
    message = (out + err).strip()
    assert "no array 'cutouts' (data.images_key); the file has: images, labels" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def test_colour_augmentations_refused_for_five_bands(tmp_path, galaxies):
    images, labels, _ = galaxies
    five = np.concatenate([images, images[..., :2]], axis=-1)  # uint8 [N, 32, 32, 5]
    np.savez(tmp_path / "five.npz", images=five, labels=labels)
    r = recipe(
        tmp_path, "aa", **{"data.source": "npz", "data.root": str(tmp_path / "five.npz"), "data.in_chans": 5}
    )
    r.augment.auto_augment = "rand-m9-mstd0.5-inc1"
    with pytest.raises(RecipeError, match="set augment.auto_augment=null augment.color_jitter=null"):
        train(r)


# ------------------------------------------------------------------------------------------------
# Scaling, recipe keys, checkpoint metadata
# ------------------------------------------------------------------------------------------------


def test_scalings_follow_astropy(galaxies):
    cube = flux(galaxies[0][5], 5)
    for method, interval in (
        ("minmax", visualization.MinMaxInterval()),
        ("percentile", visualization.PercentileInterval(99.5)),
        ("zscale", visualization.ZScaleInterval()),
    ):
        lo, hi = interval.get_limits(cube[2])
        np.testing.assert_allclose(
            scale_image(cube, method, {})[2], np.clip((cube[2] - lo) / (hi - lo), 0, 1), atol=1e-6
        )
    np.testing.assert_array_equal(scale_image(cube, "none"), cube)
    assert scale_image(np.ones((2, 4, 4), np.float32), "minmax").max() == 0.0  # a flat band: zeros
    with pytest.raises(
        RecipeError, match=r"\['q'\] not understood by scaling 'asinh' \(valid: a, lower, percent, upper\)"
    ):
        check_scaling("asinh", {"q": 1})


def test_scaling_params_override_and_old_checkpoints(tmp_path):
    r = load_recipe(None, ["data.scaling=asinh", "data.scaling_params.a=0.05", "data.in_chans=4"])
    assert r.data.scaling_params == {"a": 0.05} and isinstance(r.data.scaling_params["a"], float)
    with pytest.raises(RecipeError, match="data.scaling"):
        load_recipe(None, ["data.scaling=log"])
    # A checkpoint written before the float path has none of its keys: it reads as 8-bit.
    old = CheckpointMeta(model="resnet20", num_classes=2, img_size=32).to_metadata()
    for key in ("pixels", "scaling", "scaling_params", "reader"):
        old.pop(key)
    meta = CheckpointMeta.from_metadata(old)
    assert (meta.pixels, meta.scaling, meta.scaling_params) == ("uint8", "none", {})
    new = CheckpointMeta(model="resnet20", num_classes=2, img_size=32, in_chans=5, recipe=r.to_dict())
    new.recipe["data"]["pixels"] = "float"
    again = CheckpointMeta.from_metadata(CheckpointMeta(**{**new.__dict__, "pixels": None}).to_metadata())
    assert (again.pixels, again.scaling, again.scaling_params["a"]) == ("float", "asinh", 0.05)
    assert again.reader == {"fits_hdu": None, "layout": "auto", "nan_fill": None}


def test_onnx_predict_of_fits_needs_no_torch(tmp_path, galaxies):
    """The float path's readers and preprocessing import neither torch nor timm."""
    import subprocess

    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'timm'): sys.modules[name] = None  # as if not installed\n"
        "from astrocli.images.arrays import ArrayReader, FloatEvalPreprocess\n"
        "from astrocli.inference.runner import Runner\n"
        "r = ArrayReader(in_chans=3, scaling='asinh'); x = r.read(sys.argv[1])\n"
        "print(FloatEvalPreprocess(32, 1.0, 'bicubic', [0.1] * 3, [0.2] * 3)(x).shape)\n"
    )
    path = tmp_path / "g.fits"
    fits.PrimaryHDU(flux(galaxies[0][0], 0)).writeto(path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 32, 32)"
