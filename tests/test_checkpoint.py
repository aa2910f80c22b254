"""Checkpoints (astrocli/checkpoint.py), building a model from one (astrocli/models/loading.py) and
the atomic writes every file goes through (astrocli/files.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import one_thread  # noqa: F401 (autouse fixture)

from astrocli.checkpoint import FORMAT, CheckpointMeta, load_checkpoint, read_tensors, save_checkpoint
from astrocli.errors import CheckpointError, DiskFullError, OutputError
from astrocli.files import atomic_write_bytes, atomic_write_text, check_writable
from astrocli.models import create_model
from astrocli.models.loading import load_model_from_checkpoint

MODEL = "cct_2_3x2_32"


def meta(**changes: object) -> CheckpointMeta:
    values: dict[str, object] = {
        "model": MODEL,
        "num_classes": 3,
        "img_size": 32,
        "class_names": ["ring", "spiral", "smooth"],
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
        "recipe": {"data": {"pixels": "uint8"}},
        "epoch": 7,
        "metrics": {"val_top1": 81.5},
        "temperature": 1.43,
    }
    return CheckpointMeta(**{**values, **changes})  # type: ignore[arg-type]


def test_metadata_survives_a_save_and_load(tmp_path: Path) -> None:
    model = create_model(MODEL, num_classes=3, img_size=32)
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, model.state_dict(), meta())
    state_dict, loaded = load_checkpoint(path)
    assert loaded == meta()
    assert state_dict.keys() == model.state_dict().keys()
    assert all(torch.equal(state_dict[k], v) for k, v in model.state_dict().items())
    _, metadata = read_tensors(path)
    assert metadata["format"] == FORMAT and metadata["temperature"] == "1.43"


def test_an_older_checkpoint_reads_the_float_path_from_its_recipe() -> None:
    # Written before pixels/scaling/reader were keys of their own: the stored recipe says them.
    old = meta(recipe={"data": {"pixels": "float", "scaling": "asinh", "layout": "channels_last"}})
    metadata = {k: v for k, v in old.to_metadata().items() if k not in ("pixels", "scaling", "reader")}
    read = CheckpointMeta.from_metadata(metadata)
    assert read.pixels == "float" and read.scaling == "asinh"
    assert read.reader == {"fits_hdu": None, "layout": "channels_last", "nan_fill": None}


def test_foreign_and_pickled_files_are_refused_in_one_line(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2)}, pickled)
    with pytest.raises(CheckpointError, match="never loads pickle checkpoints") as err:
        load_checkpoint(pickled)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not an astro checkpoint"):
        CheckpointMeta.from_metadata({"format": "something-else"}, source="other.safetensors")


def test_a_model_is_built_from_its_checkpoint_and_wrong_weights_are_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=3, img_size=32).eval()
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, model.state_dict(), meta())
    rebuilt, loaded = load_model_from_checkpoint(path)
    images = torch.randn(2, 3, 32, 32)
    assert loaded.model == MODEL and not rebuilt.training
    assert torch.equal(rebuilt(images), model(images))

    other = create_model("resnet20", num_classes=3, img_size=32)
    save_checkpoint(path, other.state_dict(), meta())  # resnet weights under a CCT name
    with pytest.raises(CheckpointError, match=r"do not fit architecture 'cct_2_3x2_32' \(\d+ missing"):
        load_model_from_checkpoint(path)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "new" / "folder" / "summary.json"
    atomic_write_text(path, "first")  # missing folders are created
    assert path.read_text() == "first"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(
        DiskFullError, match="no space left on the device .* previous file of that name is intact"
    ):
        atomic_write_bytes(path, b"second")
    assert path.read_text() == "first"  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary file left


def test_check_writable_fails_before_any_work(tmp_path: Path) -> None:
    check_writable(tmp_path / "not" / "yet" / "there.json")  # missing folders are fine
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write .*a part of .* is a file, not a folder") as err:
        check_writable(blocker / "inside.json")
    assert "\n" not in str(err.value)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
