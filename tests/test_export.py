"""`astro export`: ONNX parity for every zoo family, TorchScript, safetensors + config.json, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import class_dirs, make_checkpoint, run_astro
from safetensors.torch import load_file

from astrocli.checkpoint import save_checkpoint
from astrocli.inference.export import ATOL, RTOL, export_checkpoint
from astrocli.models import create_model

GALAXY_CLASSES = 10


@pytest.fixture(scope="module")
def sample_images(galaxy_sample_dir: Path) -> list[str]:
    """Two real Galaxy10 JPEGs from different classes, for the real-input checks."""
    classes = class_dirs(galaxy_sample_dir)
    return [str(sorted(classes[0].glob("*.jpg"))[0]), str(sorted(classes[5].glob("*.jpg"))[0])]


# One model of every zoo family, at 32 px: astroformer_0 is the smallest Astroformer; vit_12_16
# has 85M parameters, so ViT is covered by timm's tiny ViT built at 32 px; mobilenetv2_050 stands
# for the timm CNN baselines (resnet18, efficientnet_b0 export through the same path; each model
# costs 5-30 s of dynamo export on a 2-core CPU, which is why they are not all here).
FAMILY_MODELS = [
    "astroformer_0",
    "cct_2_3x2_32",
    "cvt_2_4_32",
    "vit_lite_2_4_32",
    "timm/vit_tiny_patch16_224",
    "resnet20",
    "mobilenetv2_050",
]


@pytest.mark.parametrize("model_name", FAMILY_MODELS)
def test_onnx_parity_every_family(model_name, tmp_path, galaxy_sample_dir, sample_images):
    ckpt = make_checkpoint(tmp_path / "best.safetensors", model_name, 32, galaxy_sample_dir)
    result = export_checkpoint(ckpt, "onnx", images=sample_images)

    assert result.path == tmp_path / "best.onnx" and result.path.is_file()
    assert [c.batch for c in result.checks] == [3, 2]  # random batch of 3, two real images
    assert "real images" in result.checks[1].inputs
    # Independent re-check through a fresh onnxruntime session on a batch size never seen (5).
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    model = create_model(model_name, num_classes=GALAXY_CLASSES, img_size=32)
    model.load_state_dict(load_file(ckpt))
    model.eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = model(x).numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_onnx_metadata_and_dynamic_batch(tmp_path, galaxy_sample_dir, sample_images, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path / "model.safetensors", "cct_2_3x2_32", 32, galaxy_sample_dir)
    out = tmp_path / "deploy" / "galaxy.onnx"
    code, stdout, _ = run_astro(
        ["export", ckpt, "--format", "onnx", "--output", out, "--opset", "18", "--images", sample_images[0]],
        monkeypatch,
        capsys,
    )
    assert code == 0, stdout
    assert "max abs diff" in stdout and "random" in stdout and "real images" in stdout
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == [p.name for p in class_dirs(galaxy_sample_dir)]
    assert props["img_size"] == "32" and props["model"] == "cct_2_3x2_32"
    assert json.loads(props["mean"]) == [0.5, 0.5, 0.5] and json.loads(props["std"]) == [0.5, 0.5, 0.5]
    assert {"crop_pct", "interpolation", "in_chans"} <= props.keys()
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) == 18
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, i.e. dynamic
    assert sorted(p.name for p in out.parent.iterdir()) == ["galaxy.onnx"]  # no temp files left


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_verified_and_reloadable(tmp_path, galaxy_sample_dir, sample_images):
    ckpt = make_checkpoint(tmp_path / "best.safetensors", "vit_lite_2_4_32", 32, galaxy_sample_dir)
    result = export_checkpoint(ckpt, "torchscript", images=sample_images)
    assert result.path == tmp_path / "best.torchscript.pt"
    assert len(result.checks) == 2 and all(c.max_abs_diff <= ATOL + RTOL for c in result.checks)
    extra = {"astro.json": ""}
    scripted = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra["astro.json"])["model"] == "vit_lite_2_4_32"
    model = create_model("vit_lite_2_4_32", num_classes=GALAXY_CLASSES, img_size=32)
    model.load_state_dict(load_file(ckpt))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), model(x), rtol=RTOL, atol=ATOL)


def test_safetensors_export_timm_layout(tmp_path, galaxy_sample_dir, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path / "best.safetensors", "resnet20", 32, galaxy_sample_dir)
    code, stdout, _ = run_astro(["export", ckpt, "--format", "safetensors"], monkeypatch, capsys)
    assert code == 0, stdout
    out_dir = tmp_path / "best-safetensors"
    config = json.loads((out_dir / "config.json").read_text())
    assert config["architecture"] == "resnet20" and config["num_classes"] == GALAXY_CLASSES
    assert config["img_size"] == 32 and config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["mean"] == [0.5, 0.5, 0.5] and config["pretrained_cfg"]["std"] == [0.5, 0.5, 0.5]
    assert config["label_names"][0] == "0-disturbed" and len(config["label_names"]) == GALAXY_CLASSES
    assert {"interpolation", "crop_pct"} <= config.keys()
    weights = load_file(out_dir / "model.safetensors")
    original = load_file(ckpt)
    assert weights.keys() == original.keys()
    assert all(torch.equal(weights[k], original[k]) for k in weights)
    # The pair rebuilds the model from config.json alone.
    rebuilt = create_model(
        config["architecture"], num_classes=config["num_classes"], img_size=config["img_size"]
    )
    rebuilt.load_state_dict(weights, strict=True)


def test_failed_check_is_an_error_and_writes_nothing(tmp_path, galaxy_sample_dir, monkeypatch, capsys):
    """An exported graph that does not match PyTorch (here: another model's weights) must fail."""
    import astrocli.inference.export as export_module

    ckpt = make_checkpoint(tmp_path / "best.safetensors", "cct_2_3x2_32", 32, galaxy_sample_dir)
    real_onnx_bytes = export_module.onnx_bytes

    def export_other_weights(model, example, opset, exporter):
        torch.manual_seed(123)
        other = create_model("cct_2_3x2_32", num_classes=GALAXY_CLASSES, img_size=32).eval()
        return real_onnx_bytes(other, example, opset, exporter)

    monkeypatch.setattr(export_module, "onnx_bytes", export_other_weights)
    code, stdout, stderr = run_astro(["export", ckpt, "--format", "onnx"], monkeypatch, capsys)
    assert code == 1
    assert "differs from PyTorch" in stderr and "max abs diff" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "best.onnx").exists()


@pytest.mark.parametrize("damage", ["wrong_architecture", "truncated", "pickle"])
def test_bad_checkpoint_one_line_exit_2(damage, tmp_path, galaxy_sample_dir, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path / "best.safetensors", "cct_2_3x2_32", 32, galaxy_sample_dir)
    if damage == "wrong_architecture":
        from astrocli.checkpoint import load_checkpoint

        state, meta = load_checkpoint(ckpt)
        meta.model = "resnet20"
        save_checkpoint(ckpt, state, meta)
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    else:
        ckpt = tmp_path / "model.pt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)  # a pickle file, as torch.save writes
    code, stdout, stderr = run_astro(["export", ckpt, "--format", "onnx"], monkeypatch, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr + stdout
    assert not list(tmp_path.glob("*.onnx"))


def test_torchscript_based_onnx_exporter(tmp_path, galaxy_sample_dir, sample_images, monkeypatch, capsys):
    """The fallback exporter (dynamo=False), chosen explicitly, yields a verified dynamic-batch model."""
    ckpt = make_checkpoint(tmp_path / "best.safetensors", "cct_2_3x2_32", 32, galaxy_sample_dir)
    args = [
        "export",
        ckpt,
        "--exporter",
        "torchscript",
        "--images",
        sample_images[0],
        "--images",
        sample_images[1],
    ]
    code, stdout, _ = run_astro(args, monkeypatch, capsys)
    assert code == 0, stdout
    assert "TorchScript-based" in stdout and "2 images from --images" in stdout
    session = ort.InferenceSession(str(tmp_path / "best.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": np.zeros((4, 3, 32, 32), dtype=np.float32)})
    assert logits.shape == (4, GALAXY_CLASSES)
