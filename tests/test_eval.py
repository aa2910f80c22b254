"""`astro eval` on a real CIFAR-10 image folder: metrics vs an independent computation, options, errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import checkpoint_without_hflip, class_dirs, run_astro
from torchvision.datasets import ImageFolder

from astrocli.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from astrocli.data import build_eval_transform
from astrocli.models import create_model
from astrocli.recipe import Recipe

MODEL = "resnet20"


def make_checkpoint(path: Path, class_names: list[str], data_root: str, seed: int = 0) -> Path:
    """A resnet20 checkpoint (random init) whose recipe points at ``data_root``, like `astro train` writes."""
    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=len(class_names), img_size=32)
    recipe = Recipe()
    recipe.model.name = MODEL
    recipe.data.root, recipe.data.num_workers = data_root, 0
    recipe.data.split = "test"  # a run that validated on test/ (auto now carves val out of train)
    meta = CheckpointMeta(
        model=MODEL,
        num_classes=len(class_names),
        img_size=32,
        class_names=class_names,
        mean=[0.4914, 0.4822, 0.4465],
        std=[0.2470, 0.2435, 0.2616],
        recipe=recipe.to_dict(),
    )
    save_checkpoint(path, model.state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def cifar_classes(cifar10_small: Path) -> list[str]:
    return [p.name for p in class_dirs(cifar10_small / "train")]


@pytest.fixture(scope="module")
def checkpoint(
    cifar10_small: Path, cifar_classes: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """resnet20 whose classifier is a nearest-centroid fit on the 200 training images' features.

    A freshly initialised network puts every image in the same class, which would make the
    metric checks trivial; one forward pass and no training keeps this fixture fast.
    """
    path = make_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "best.safetensors", cifar_classes, str(cifar10_small)
    )
    state, meta = load_checkpoint(path)
    model = create_model(MODEL, num_classes=10, img_size=32).eval()
    model.load_state_dict(state)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    features: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    tf = build_eval_transform(32, meta.crop_pct, meta.interpolation, meta.mean, meta.std, 3)
    train = ImageFolder(str(cifar10_small / "train"), transform=tf)
    with torch.inference_mode():
        model(torch.stack([train[i][0] for i in range(len(train))]))
    hook.remove()
    mean_feature = features[0].mean(0)
    feats = features[0] - mean_feature
    scale = 5.0 / feats.norm(dim=1).mean()  # logits of a few units: a realistic, uncertain classifier
    targets = torch.tensor(train.targets)
    centroids = torch.stack([feats[targets == k].mean(0) for k in range(10)])
    state = dict(model.state_dict())
    head_name = next(name for name, m in model.named_modules() if m is head)
    state[f"{head_name}.weight"] = centroids * scale
    state[f"{head_name}.bias"] = -(centroids * scale) @ mean_feature
    save_checkpoint(path, state, meta)
    return path


def reference_probs(checkpoint: Path, folder: Path, tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: torchvision's ImageFolder + the model, batch by hand."""
    state, meta = load_checkpoint(checkpoint)
    model = create_model(meta.model, num_classes=meta.num_classes, img_size=32).eval()
    model.load_state_dict(state)
    tf = build_eval_transform(32, meta.crop_pct, meta.interpolation, meta.mean, meta.std, 3)
    data = ImageFolder(str(folder), transform=tf)
    x = torch.stack([data[i][0] for i in range(len(data))])
    with torch.inference_mode():
        probs = torch.softmax(model(x).double(), 1)
        if tta:
            probs = (probs + torch.softmax(model(torch.flip(x, dims=[3])).double(), 1)) / 2
    return probs.numpy(), np.array(data.targets)


@pytest.mark.parametrize("tta", [False, True])
def test_eval_json_and_plot_match_reference(tta, checkpoint, cifar10_small, tmp_path, monkeypatch, capsys):
    out_json, out_png = tmp_path / "report.json", tmp_path / "cm.png"
    args = ["eval", checkpoint, "--json", out_json, "--plot", out_png, "--workers", "0"] + (
        ["--tta"] if tta else []
    )
    code, stdout, stderr = run_astro(args, monkeypatch, capsys)
    assert code == 0, stdout + stderr
    report = json.loads(out_json.read_text())
    assert {
        "top1",
        "top5",
        "loss",
        "ece",
        "per_class",
        "confusion_matrix",
        "num_samples",
        "macro",
        "weighted",
    } <= set(report)
    probs, targets = reference_probs(checkpoint, cifar10_small / "test", tta)
    preds = probs.argmax(1)
    assert report["num_samples"] == len(targets) == 50  # the recipe's held-out split: test/
    assert report["tta"] is tta
    assert report["top1"] == pytest.approx((preds == targets).mean() * 100)
    top5 = (np.argsort(-probs, 1)[:, :5] == targets[:, None]).any(1).mean() * 100
    assert report["top5"] == pytest.approx(top5)
    assert report["loss"] == pytest.approx(-np.log(probs[np.arange(50), targets]).mean(), rel=1e-4)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 50 and cm.trace() == (preds == targets).sum()
    assert [c["support"] for c in report["per_class"]] == [5] * 10
    assert len(set(preds)) > 1  # a model that predicts one class only would make these checks weak
    assert 0.0 <= report["ece"] <= 1.0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1 (%)" in stdout and "macro avg" in stdout and "confusion matrix" in stdout


def test_overrides_choose_the_data(cifar10_small, cifar_classes, tmp_path, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path / "best.safetensors", cifar_classes, str(tmp_path / "moved-away"))
    code, _, stderr = run_astro(["eval", ckpt], monkeypatch, capsys)
    assert code == 2 and "moved-away" in stderr and len(stderr.strip().splitlines()) == 1
    out = tmp_path / "r.json"
    overrides = [f"data.root={cifar10_small}", "data.split=test"]
    code, stdout, _ = run_astro(
        ["eval", ckpt, *overrides, "--json", out, "--workers", "0"], monkeypatch, capsys
    )
    assert code == 0, stdout
    assert json.loads(out.read_text())["num_samples"] == 50  # 5 test images per class


def test_bad_override_is_one_line(checkpoint, monkeypatch, capsys):
    code, _, stderr = run_astro(["eval", checkpoint, "data.rooot=/x"], monkeypatch, capsys)
    assert code == 2 and "unknown recipe key 'data.rooot'" in stderr and len(stderr.strip().splitlines()) == 1


def test_class_count_mismatch_is_one_line(cifar10_small, tmp_path, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path / "best.safetensors", ["a", "b", "c"], str(cifar10_small))
    code, _, stderr = run_astro(["eval", ckpt], monkeypatch, capsys)
    assert code == 2 and "10 classes but the model predicts 3" in stderr


def test_onnx_model_evaluates_like_the_checkpoint(checkpoint, tmp_path, monkeypatch, capsys):
    from astrocli.inference.export import export_checkpoint

    onnx_path = export_checkpoint(checkpoint, "onnx", output=tmp_path / "m.onnx", exporter="torchscript").path
    reports = {}
    for name, model in (("torch", checkpoint), ("onnx", onnx_path)):
        out = tmp_path / f"{name}.json"
        code, stdout, _ = run_astro(["eval", model, "--json", out, "--workers", "0"], monkeypatch, capsys)
        assert code == 0, stdout
        reports[name] = json.loads(out.read_text())
    assert reports["onnx"]["confusion_matrix"] == reports["torch"]["confusion_matrix"]
    assert reports["onnx"]["loss"] == pytest.approx(reports["torch"]["loss"], abs=1e-4)


@pytest.mark.parametrize("damage", ["truncated", "not_safetensors"])
def test_bad_checkpoint_one_line_exit_2(damage, checkpoint, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.safetensors"
    if damage == "truncated":
        bad.write_bytes(checkpoint.read_bytes()[:-100])
    else:
        bad.write_text("just some text\n")
    code, stdout, stderr = run_astro(["eval", bad], monkeypatch, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "not a readable safetensors file" in lines[0]
    assert "Traceback" not in stdout + stderr


@pytest.fixture
def galaxy_checkpoint(galaxy_sample_dir: Path, tmp_path: Path) -> Path:
    return checkpoint_without_hflip(tmp_path, galaxy_sample_dir)


def test_eval_formats_and_tta_flip_warning(galaxy_checkpoint, monkeypatch, capsys) -> None:
    base = ["eval", galaxy_checkpoint, "--workers", "0", "--device", "cpu"]
    code, out, err = run_astro([*base, "--format", "csv", "--tta"], monkeypatch, capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 12 and rows[-1]["label"] == "weighted avg"  # 10 classes + 2 averages
    assert "augment.hflip=0" in err and "warning" in err
    code, out, err = run_astro([*base, "--format", "json"], monkeypatch, capsys)
    report = json.loads(out)
    assert code == 0 and report["num_samples"] > 0 and "top1" in report and "hflip" not in err
