"""``train.compile``: auto's choice, the eager fallback, compile time in summary.json, and the one
inductor cache folder the runs of an ``astro cv`` share.

``torch.compile`` is replaced by a stand-in that records its calls (a real inductor compile takes
minutes on the 2-core CPU); the trainer's own code paths around it run for real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import one_thread, tiny_digits_overrides  # noqa: F401 (autouse fixture)

from astrocli.engine import compiling, train
from astrocli.errors import AstroError
from astrocli.experiments import cv
from astrocli.recipe import load_recipe


class Recorder:
    """Stands in for ``torch.compile``: records the inductor cache folder at each call, then runs the
    module eagerly, or fails like a broken backend at the first forward pass."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.cache_dirs = fail, []

    def __call__(self, module: torch.nn.Module, **kwargs: object) -> torch.nn.Module:
        self.cache_dirs.append(os.environ.get(compiling.CACHE_ENV))
        recorder = self

        class Compiled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = module

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                if recorder.fail:
                    raise RuntimeError("backend compiler failed\nC++ compile error below")
                return self.inner(images)

        return Compiled()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(torch, "compile", rec)
    # set, then deleted: monkeypatch puts back the original state, so the folder the trainer sets
    # does not leak into later tests
    monkeypatch.setenv(compiling.CACHE_ENV, "placeholder")
    monkeypatch.delenv(compiling.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))  # platformdirs' cache root
    return rec


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_auto_compiles_on_cuda_and_on_the_cpu_only_where_measured_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert compiling.wants_compile("auto", "cuda", "resnet20")
    assert not compiling.wants_compile("auto", "cpu", "resnet20")
    assert compiling.wants_compile(True, "cpu", "resnet20") and not compiling.wants_compile(
        False, "cuda", "x"
    )
    monkeypatch.setattr(compiling, "CPU_COMPILE_FASTER", frozenset({"resnet20"}))
    assert compiling.wants_compile("auto", "cpu", "resnet20")
    assert not compiling.wants_compile("auto", "cpu", "cct_2_3x2_32")


def test_auto_trains_eagerly_on_the_cpu(recorder: Recorder, tmp_path: Path) -> None:
    run_dir = train(load_recipe(None, tiny_digits_overrides(tmp_path)))  # train.compile left at auto
    assert recorder.cache_dirs == []  # torch.compile never called
    s = summary(run_dir)
    assert s["compile"] == "auto" and s["compiled"] is False and s["compile_seconds"] is None
    assert "compile: auto" in (run_dir / "recipe.yaml").read_text()


def test_compiled_run_reports_compile_seconds_and_uses_the_stable_cache(
    recorder: Recorder, tmp_path: Path
) -> None:
    run_dir = train(load_recipe(None, tiny_digits_overrides(tmp_path, **{"train.compile": True})))
    expected = str(tmp_path / "user-cache" / "astro" / "inductor")
    assert recorder.cache_dirs == [expected]
    s = summary(run_dir)
    assert s["compiled"] is True and s["compile"] is True
    assert isinstance(s["compile_seconds"], float) and 0 < s["compile_seconds"] < s["total_seconds"]


def test_failing_compile_trains_eagerly_with_one_warning(
    recorder: Recorder, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recorder.fail = True
    run_dir = train(load_recipe(None, tiny_digits_overrides(tmp_path, **{"train.compile": True})))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "torch.compile" in line]
    assert len(warnings) == 1
    assert "torch.compile failed (RuntimeError: backend compiler failed); training eagerly" in warnings[0]
    s = summary(run_dir)
    assert s["compiled"] is False and s["compile"] is True and (run_dir / "last.safetensors").is_file()


def test_cv_folds_share_one_compile_cache(recorder: Recorder, cifar10_small: Path, tmp_path: Path) -> None:
    overrides = [
        "data.source=imagefolder", f"data.root={cifar10_small}", "data.img_size=8", "data.num_workers=0",
        "data.pipeline=loader", "model.name=resnet20", "train.epochs=1", "train.batch_size=16",
        "train.max_steps_per_epoch=1", "train.device=cpu", f"output.dir={tmp_path / 'runs'}",
        "output.name=tiny", "output.log=quiet", "output.plots=false", "train.compile=true",
    ]  # fmt: skip
    parent = cv.run_cv(load_recipe(None, overrides), folds=2, log="quiet")
    expected = str(tmp_path / "user-cache" / "astro" / "inductor")
    assert recorder.cache_dirs == [expected, expected]  # one compile per fold, the same folder
    assert all(summary(parent / f"fold{i}-seed0")["compiled"] for i in range(2))
    assert os.environ[compiling.CACHE_ENV] == expected  # what --parallel's subprocesses inherit


def test_a_cache_dir_the_user_set_is_kept(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "mine"))
    train(load_recipe(None, tiny_digits_overrides(tmp_path, **{"train.compile": True})))
    assert recorder.cache_dirs == [str(tmp_path / "mine")]


def test_bad_compile_value_is_one_line() -> None:
    with pytest.raises(AstroError, match="train.compile' must be one of 'auto' or bool"):
        load_recipe(None, ["train.compile=sometimes"])
