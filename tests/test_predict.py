"""`astro predict` on real Galaxy10 JPEGs: files, directories, globs, bad files, outputs, ONNX, FITS."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import checkpoint_without_hflip, class_dirs, make_checkpoint, run_astro, run_astro_narrow
from PIL import Image

from astrocli.checkpoint import load_checkpoint, save_checkpoint
from astrocli.data import build_eval_transform
from astrocli.models import create_model

MODEL = "cct_2_3x2_32"


@pytest.fixture(scope="module")
def checkpoint(galaxy_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "best.safetensors",
        MODEL,
        32,
        galaxy_sample_dir,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        crop_pct=0.875,
    )


@pytest.fixture
def images(galaxy_sample_dir: Path, tmp_path: Path) -> Path:
    """images/<class>/: two real JPEGs of each of three classes."""
    root = tmp_path / "images"
    for cls in class_dirs(galaxy_sample_dir)[:3]:
        (root / cls.name).mkdir(parents=True)
        for jpg in sorted(cls.glob("*.jpg"))[:2]:
            shutil.copy(jpg, root / cls.name / jpg.name)
    return root


def expected_probs(checkpoint: Path, paths: list[Path]) -> np.ndarray:
    """Independent reference: the model and the eval transform built by hand from the metadata."""
    state, meta = load_checkpoint(checkpoint)
    model = create_model(meta.model, num_classes=meta.num_classes, img_size=meta.img_size).eval()
    model.load_state_dict(state)
    tf = build_eval_transform(meta.img_size, meta.crop_pct, meta.interpolation, meta.mean, meta.std, 3)
    batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        return torch.softmax(model(batch), dim=1).numpy()


def test_directory_to_json_matches_the_model(checkpoint, images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pred.json"
    code, stdout, _ = run_astro(
        ["predict", images, "-c", checkpoint, "--top-k", "3", "-o", out], monkeypatch, capsys
    )
    assert code == 0, stdout
    rows = json.loads(out.read_text())
    files = sorted(images.rglob("*.jpg"))
    assert [Path(r["path"]) for r in rows] == files
    probs = expected_probs(checkpoint, files)
    class_names = [p.name for p in class_dirs(Path(load_checkpoint(checkpoint)[1].recipe["data"]["root"]))]
    for row, p in zip(rows, probs, strict=True):
        assert set(row) == {"path", "label", "class_index", "score", "topk"}
        assert row["class_index"] == int(p.argmax()) and row["label"] == class_names[row["class_index"]]
        assert row["score"] == pytest.approx(float(p.max()), abs=1e-5)
        assert len(row["topk"]) == 3 and row["topk"][0]["label"] == row["label"]
        assert [t["class_index"] for t in row["topk"]] == list(np.argsort(-p)[:3])
        scores = [t["score"] for t in row["topk"]]
        assert scores == sorted(scores, reverse=True)
    assert "predictions" in stdout and rows[0]["label"] in stdout


def test_glob_expanded_by_the_tool_and_csv(checkpoint, images, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pred.csv"
    pattern = str(images / "*" / "*.jpg")  # quoted: the shell does not expand it, astro does
    code, stdout, _ = run_astro(
        ["predict", pattern, "-c", checkpoint, "-k", "2", "-o", out], monkeypatch, capsys
    )
    assert code == 0, stdout
    with out.open() as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == [
        "path", "label", "class_index", "score",
        "top1_label", "top1_index", "top1_score", "top2_label", "top2_index", "top2_score", "error",
    ]  # fmt: skip
    assert len(rows) == 6 and all(r["error"] == "" for r in rows)
    assert all(
        r["label"] == r["top1_label"] and float(r["top1_score"]) >= float(r["top2_score"]) for r in rows
    )
    assert sorted(os.listdir(tmp_path)) == ["images", "pred.csv"]  # written atomically: no temp file left


def test_bad_files_get_error_rows_and_exit_1(checkpoint, images, tmp_path, monkeypatch, capsys):
    good = sorted(images.rglob("*.jpg"))[0]
    truncated = images / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # a real JPEG cut short
    (images / "notes.jpg").write_text("this is not an image\n")
    out = tmp_path / "pred.json"
    code, stdout, _ = run_astro(
        ["predict", images, tmp_path / "missing.png", "-c", checkpoint, "-o", out], monkeypatch, capsys
    )
    assert code == 1
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert set(rows["truncated.jpg"]) == {"path", "error"} and "truncated" in rows["truncated.jpg"]["error"]
    assert set(rows["notes.jpg"]) == {"path", "error"} and "cannot identify" in rows["notes.jpg"]["error"]
    assert rows["missing.png"]["error"] == "no such file or directory"
    predicted = [r for r in rows.values() if "error" not in r]
    assert len(predicted) == 6  # the good images are still predicted
    assert "3 of 9 inputs could not be predicted" in stdout


def test_empty_directory_is_one_line_exit_2(checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_astro(["predict", tmp_path / "empty", "-c", checkpoint], monkeypatch, capsys)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and "empty directory" in stderr


def test_bad_output_extension_rejected_before_work(checkpoint, images, tmp_path, monkeypatch, capsys):
    code, _, stderr = run_astro(
        ["predict", images, "-c", checkpoint, "-o", tmp_path / "p.txt"], monkeypatch, capsys
    )
    assert code == 2 and ".json or .csv" in stderr and not (tmp_path / "p.txt").exists()


def test_default_checkpoint_is_the_latest_run(checkpoint, images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for i, run in enumerate(["older", "newer"]):
        (tmp_path / "runs" / run).mkdir(parents=True)
        shutil.copy(checkpoint, tmp_path / "runs" / run / "best.safetensors")
        os.utime(tmp_path / "runs" / run / "best.safetensors", (1_000_000 + i, 1_000_000 + i))
    code, stdout, _ = run_astro(["predict", images], monkeypatch, capsys)
    assert code == 0
    assert f"using the latest run's checkpoint: {Path('runs') / 'newer' / 'best.safetensors'}" in stdout


def test_no_run_and_no_checkpoint_is_one_line(images, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_astro(["predict", images], monkeypatch, capsys)
    assert code == 2 and "--checkpoint" in stderr and len(stderr.strip().splitlines()) == 1


def test_onnx_model_predicts_like_the_checkpoint(checkpoint, images, tmp_path, monkeypatch, capsys):
    from astrocli.inference.export import export_checkpoint

    onnx_path = export_checkpoint(checkpoint, "onnx", output=tmp_path / "m.onnx", exporter="torchscript").path
    outs = {}
    for name, model in (("torch", checkpoint), ("onnx", onnx_path)):
        outs[name] = tmp_path / f"{name}.json"
        code, stdout, _ = run_astro(["predict", images, "-c", model, "-o", outs[name]], monkeypatch, capsys)
        assert code == 0, stdout
    assert "(onnx," in stdout
    torch_rows, onnx_rows = (json.loads(outs[n].read_text()) for n in ("torch", "onnx"))
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert a["path"] == b["path"] and a["class_index"] == b["class_index"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_fits_image(checkpoint, galaxy_sample_dir, tmp_path, monkeypatch, capsys):
    from astropy.io import fits

    jpg = sorted(galaxy_sample_dir.glob("*/*.jpg"))[0]
    luminance = np.asarray(Image.open(jpg).convert("L"), dtype=np.float32) * 3.7 + 100.0  # float, not 0-255
    fits.PrimaryHDU(luminance).writeto(tmp_path / "galaxy.fits")
    out = tmp_path / "pred.json"
    code, stdout, _ = run_astro(
        ["predict", tmp_path / "galaxy.fits", "-c", checkpoint, "-o", out], monkeypatch, capsys
    )
    assert code == 0, stdout
    (row,) = json.loads(out.read_text())
    assert 0 <= row["class_index"] < 10 and 0 < row["score"] <= 1


@pytest.mark.parametrize("damage", ["wrong_architecture", "truncated", "pickle"])
def test_bad_checkpoint_one_line_exit_2(damage, checkpoint, images, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.safetensors"
    if damage == "wrong_architecture":
        state, meta = load_checkpoint(checkpoint)
        meta.model = "resnet20"
        save_checkpoint(bad, state, meta)
        expected = "do not fit architecture 'resnet20'"
    elif damage == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[:4096])
        expected = "not a readable safetensors file"
    else:
        bad = tmp_path / "model.pth"
        torch.save({"model": torch.zeros(3)}, bad)  # pickle, as torch.save writes
        expected = "never loads pickle"
    code, stdout, stderr = run_astro(["predict", images, "-c", bad], monkeypatch, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], stderr
    assert "Traceback" not in stdout + stderr


@pytest.fixture
def galaxy_checkpoint(galaxy_sample_dir: Path, tmp_path: Path) -> Path:
    return checkpoint_without_hflip(tmp_path, galaxy_sample_dir)


def test_predict_formats_and_unwrapped_paths(
    galaxy_checkpoint, galaxy_sample_dir, monkeypatch, capsys
) -> None:
    images = sorted(next(p for p in galaxy_sample_dir.iterdir() if p.is_dir()).glob("*.jpg"))[:2]
    args = ["predict", *images, "--checkpoint", galaxy_checkpoint, "-k", "2", "--device", "cpu"]
    code, out, _ = run_astro(args, monkeypatch, capsys)
    assert code == 0
    code, narrow = run_astro_narrow(args, monkeypatch, capsys)
    assert code == 0 and str(galaxy_checkpoint) in narrow and all(str(p) in narrow for p in images)

    code, out, err = run_astro([*args, "--format", "json"], monkeypatch, capsys)
    assert code == 0 and [r["path"] for r in json.loads(out)] == [str(p) for p in images]
    assert "model:" in err  # messages leave stdout to the data
    code, out, _ = run_astro([*args, "--format", "csv"], monkeypatch, capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["path"] for r in rows] == [str(p) for p in images] and "top2_label" in rows[0]
