"""ONNX prediction without PyTorch: numpy preprocessing, and `astro predict` in a torch-free process.

The torch-free process is a real subprocess whose ``sitecustomize`` puts a meta-path finder in
front of every import that refuses ``torch``, ``torchvision`` and ``timm`` (as if uninstalled).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import class_dirs
from PIL import Image

from astrocli.checkpoint import CheckpointMeta, save_checkpoint
from astrocli.data import build_eval_transform
from astrocli.images.pil import EvalPreprocess
from astrocli.inference.predict import predict_files
from astrocli.inference.runner import load_runner
from astrocli.models import create_model

MODEL = "cct_2_3x2_32"
REPO = Path(__file__).resolve().parents[1]

BLOCK_PYTORCH = textwrap.dedent(
    """
    import atexit, os, sys

    BLOCKED = ("torch", "torchvision", "timm")

    class BlockPyTorch:
        \"\"\"Behave as if PyTorch, torchvision and timm were not installed.\"\"\"

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockPyTorch())

    def _record_modules():
        with open(os.environ["ASTRO_TEST_MODULES"], "w") as handle:
            handle.write("\\n".join(sorted(sys.modules)))

    atexit.register(_record_modules)
    """
)


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a child Python in which torch / torchvision / timm cannot be imported."""
    site_dir = tmp_path_factory.mktemp("no_torch_site")
    (site_dir / "sitecustomize.py").write_text(BLOCK_PYTORCH)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site_dir), str(REPO), env.get("PYTHONPATH")]))
    env["ASTRO_TEST_MODULES"] = str(site_dir / "modules.txt")
    env["COLUMNS"] = "250"
    return env


def run_without_torch(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m astrocli ARGS`` with PyTorch blocked; the modules it imported are in ASTRO_TEST_MODULES."""
    return subprocess.run(
        [sys.executable, "-m", "astrocli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def imported_pytorch_modules(env: dict[str, str]) -> list[str]:
    names = Path(env["ASTRO_TEST_MODULES"]).read_text().split()
    return [n for n in names if n.split(".")[0] in ("torch", "torchvision", "timm")]


@pytest.fixture(scope="module")
def checkpoint(galaxy_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised CCT checkpoint for the 10 Galaxy10 classes (crop 0.875, bicubic)."""
    class_names = [p.name for p in class_dirs(galaxy_sample_dir)]
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=len(class_names), img_size=32)
    meta = CheckpointMeta(
        model=MODEL,
        num_classes=len(class_names),
        img_size=32,
        class_names=class_names,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        crop_pct=0.875,
        interpolation="bicubic",
    )
    path = tmp_path_factory.mktemp("ckpt") / "best.safetensors"
    save_checkpoint(path, model.state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def onnx_model(checkpoint: Path) -> Path:
    from astrocli.inference.export import export_checkpoint

    return export_checkpoint(
        checkpoint, "onnx", output=checkpoint.with_suffix(".onnx"), exporter="torchscript"
    ).path


@pytest.fixture(scope="module")
def galaxy_images(galaxy_sample_dir: Path) -> list[Path]:
    """Two real 256x256 Galaxy10 JPEGs from each of four classes."""
    classes = class_dirs(galaxy_sample_dir)[:4]
    return [jpg for cls in classes for jpg in sorted(cls.glob("*.jpg"))[:2]]


@pytest.mark.parametrize(
    ("img_size", "crop_pct", "interpolation", "in_chans"),
    [(32, 0.875, "bicubic", 3), (224, 1.0, "bilinear", 3), (64, 0.9, "lanczos", 1), (300, 1.0, "nearest", 3)],
)
def test_numpy_preprocess_matches_torchvision(galaxy_images, img_size, crop_pct, interpolation, in_chans):
    """Same pixels as timm/torchvision's eval transform (downscale, upscale, grayscale, odd crops)."""
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if in_chans == 3 else ([0.5], [0.25])
    reference = build_eval_transform(img_size, crop_pct, interpolation, mean, std, in_chans)
    ours = EvalPreprocess(img_size, crop_pct, interpolation, mean, std, in_chans)
    originals = [Image.open(p) for p in galaxy_images]
    # Non-square crops exercise the shorter-side rounding and the off-centre crop offsets.
    images = originals + [originals[0].crop((0, 0, 256, 173)), originals[1].crop((5, 0, 190, 256))]
    for img in images:
        img = img.convert("RGB" if in_chans == 3 else "L")
        expected = reference(img).numpy()
        got = ours(img)
        assert got.dtype == np.float32 and got.shape == expected.shape == (in_chans, img_size, img_size)
        # Measured: identical (max |diff| 0.0); PIL does the resize on both paths.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_numpy_preprocess_pads_like_torchvision_when_crop_exceeds_image(galaxy_images):
    """crop_pct > 1 resizes below the crop size; torchvision zero-pads before normalising."""
    args = (48, 1.3, "bilinear", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], 3)
    for w, h in itertools.product((30, 37), (29, 40)):
        img = Image.open(galaxy_images[0]).convert("RGB").resize((w, h))
        np.testing.assert_allclose(
            EvalPreprocess(*args)(img), build_eval_transform(*args)(img).numpy(), rtol=0, atol=1e-6
        )


def test_bad_preprocess_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        EvalPreprocess(32, 1.0, "cubic", [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match="mean/std need 1 values"):
        EvalPreprocess(32, 1.0, "bicubic", [0.5] * 3, [0.5] * 3, in_chans=1)


def test_onnx_predict_without_torch_matches_pytorch(
    checkpoint, onnx_model, galaxy_images, no_torch_env, tmp_path
):
    out = tmp_path / "out.json"
    args = ["predict", *map(str, galaxy_images), "--checkpoint", str(onnx_model), "-k", "3", "-o", str(out)]
    result = run_without_torch(args, no_torch_env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert imported_pytorch_modules(no_torch_env) == []
    assert "onnxruntime" in Path(no_torch_env["ASTRO_TEST_MODULES"]).read_text().split()
    rows = json.loads(out.read_text())

    # Reference: the PyTorch model from the checkpoint, fed by torchvision's transform.
    expected = predict_files(load_runner(checkpoint, device="cpu"), galaxy_images, top_k=3)
    assert [r["path"] for r in rows] == [str(p) for p in galaxy_images]
    for row, ref in zip(rows, expected, strict=True):
        assert row["label"] == ref["label"] and row["class_index"] == ref["class_index"]
        assert [t["label"] for t in row["topk"]] == [t["label"] for t in ref["topk"]]
        for got, want in zip(row["topk"], ref["topk"], strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)


def test_blocker_really_hides_torch(no_torch_env, tmp_path):
    """Guard for the tests here: in the child, `import torch` fails as if uninstalled."""
    result = subprocess.run(
        [sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr


def test_help_works_without_torch(no_torch_env, tmp_path):
    result = run_without_torch(["--help"], no_torch_env, tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("train", "eval", "predict", "export", "models"):
        assert command in result.stdout
    assert imported_pytorch_modules(no_torch_env) == []


@pytest.mark.parametrize(
    "args",
    [["models"], ["predict", "{image}", "--checkpoint", "{checkpoint}"]],
    ids=["models", "predict-safetensors"],
)
def test_pytorch_commands_fail_in_one_line_without_torch(
    args, checkpoint, galaxy_images, no_torch_env, tmp_path
):
    args = [a.format(image=galaxy_images[0], checkpoint=checkpoint) for a in args]
    result = run_without_torch(args, no_torch_env, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stdout + result.stderr
    assert "PyTorch" in lines[0] and "pip install torch" in lines[0]
