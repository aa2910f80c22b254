"""Temperature scaling: fitted after training and by `astro eval --calibrate`, stored in the checkpoint,
applied by `astro predict` on PyTorch and ONNX models alike; `astro eval` reports ECE before and after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_checkpoint, run_astro

from astrocli.calibration import calibration_summary, fit_temperature
from astrocli.checkpoint import CheckpointMeta, load_checkpoint
from astrocli.engine import train
from astrocli.images.load import load_image
from astrocli.inference.predict import collect_inputs, predict_files
from astrocli.inference.runner import load_runner
from astrocli.metrics import softmax
from astrocli.recipe import load_recipe


def test_temperature_lowers_ece_on_held_out_data_and_keeps_top1() -> None:
    """An over-confident model of real data (weakly regularised logistic regression on scikit-learn's
    digits): T fitted on one held-out half lowers the ECE of the other half; no prediction changes."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_held, y_train, y_held = train_test_split(x, y, train_size=300, random_state=0, stratify=y)
    logits = LogisticRegression(C=100, max_iter=2000).fit(x_train, y_train).decision_function(x_held)
    half = len(y_held) // 2
    t = fit_temperature(logits[:half], y_held[:half])
    assert t > 1.5  # over-confident: the fit softens it
    summary = calibration_summary(logits[half:], y_held[half:], t)
    assert summary["ece_calibrated"] < 0.75 * summary["ece"]
    assert (softmax(logits / t).argmax(1) == logits.argmax(1)).all()


def test_no_held_out_mistake_keeps_temperature_one() -> None:
    """All held-out images right (the quick start's 180 digits can be): the NLL has no finite minimum
    in T (it falls towards T = 0), so the fit keeps T = 1 instead of clamping to its lower bound."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 10, size=180)
    logits = rng.normal(size=(180, 10))
    logits[np.arange(180), targets] = logits.max(axis=1) + 0.5  # every argmax right, not certain
    assert fit_temperature(logits, targets) == 1.0
    logits[0, targets[0]] -= 10.0  # one mistake: a finite optimum again
    assert fit_temperature(logits, targets) != 1.0


def test_old_checkpoints_read_temperature_one() -> None:
    meta = CheckpointMeta(model="resnet20", num_classes=10, img_size=32, temperature=2.0)
    data = meta.to_metadata()
    assert CheckpointMeta.from_metadata(data).temperature == 2.0
    del data["temperature"]
    assert CheckpointMeta.from_metadata(data).temperature == 1.0


def test_predict_and_onnx_apply_the_stored_temperature(tmp_path: Path, galaxy_sample_dir: Path) -> None:
    from astrocli.inference.export import export_checkpoint

    ckpt = make_checkpoint(tmp_path / "best.safetensors", "resnet20", 32, galaxy_sample_dir, temperature=2.5)
    files = collect_inputs([str(galaxy_sample_dir / "0-disturbed")]).files[:3]
    runner = load_runner(ckpt, device="cpu")
    assert runner.meta.temperature == 2.5
    rows = predict_files(runner, files, top_k=10)
    batch = runner.stack([runner.transform(load_image(f, runner.meta.in_chans)) for f in files])
    expected = softmax(runner.logits(batch) / 2.5)
    for row, probs in zip(rows, expected, strict=True):
        got = {entry["class_index"]: entry["score"] for entry in row["topk"]}
        assert all(got[i] == pytest.approx(probs[i], abs=1e-6) for i in range(10))

    onnx_path = export_checkpoint(ckpt, "onnx", images=[str(f) for f in files]).path
    onnx_runner = load_runner(onnx_path)
    assert onnx_runner.kind == "onnx" and onnx_runner.meta.temperature == 2.5
    onnx_rows = predict_files(onnx_runner, files, top_k=10)
    for a, b in zip(rows, onnx_rows, strict=True):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on scikit-learn's digits (resnet20 at 8 px), calibrated at the end of training."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("calibrated")
    overrides = [
        "data.source=digits",
        "data.img_size=8",
        "data.num_workers=0",
        "data.pipeline=loader",
        "model.name=resnet20",
        "train.epochs=2",
        "train.batch_size=16",
        "train.max_steps_per_epoch=6",
        "train.device=cpu",
        "train.amp=none",  # astro eval --calibrate refits in fp32: the same logits as training's fit
        f"output.dir={out}",
        "output.log=quiet",
        "output.plots=false",
    ]
    return train(load_recipe(None, overrides))


def test_training_ends_with_a_fitted_temperature(trained_run: Path) -> None:
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["temperature"] > 0 and summary["temperature"] != 1.0
    assert summary["ece_calibrated"] <= summary["ece"] + 1e-9  # fitted on this split: never worse
    for name in ("best", "last"):
        _, meta = load_checkpoint(trained_run / f"{name}.safetensors")
        assert meta.temperature != 1.0 and "ece_calibrated" in meta.metrics
    # The short recipe got the data's defaults: digits are small and single-channel.
    recipe = load_recipe(trained_run / "recipe.yaml")
    assert (recipe.augment.crop, recipe.augment.padding, recipe.augment.hflip) == ("pad_crop", 1, 0.0)


def test_eval_calibrate_writes_the_temperature_and_reports_ece(
    trained_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    ckpt = trained_run / "last.safetensors"
    before = load_checkpoint(ckpt)[1].temperature
    report_path, plot = tmp_path / "report.json", tmp_path / "cm.png"
    args = ["eval", ckpt, "--calibrate", "--json", report_path, "--plot", plot, "--device", "cpu"]
    code, out, _ = run_astro(args, monkeypatch, capsys)
    assert code == 0 and "calibrated on the 'stratified' split" in out
    after = load_checkpoint(ckpt)[1].temperature
    assert after == pytest.approx(before, rel=1e-3)  # the same fit on the same split as training's
    report = json.loads(report_path.read_text())
    assert report["temperature"] == after and {"ece", "ece_calibrated"} <= set(report)
    assert report["ece_calibrated"] <= report["ece"] + 1e-9
    assert plot.is_file() and (tmp_path / "cm-reliability.png").is_file()
    assert sum(report["reliability"]["count"]) == report["num_samples"]
    assert np.isfinite(report["loss_calibrated"])
