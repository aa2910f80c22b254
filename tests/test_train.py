"""The training engine and `astro train`: run-dir layout, exact resume, SIGTERM, NaN stop, atomic saves.

Everything trains on real data (scikit-learn's bundled digits, offline) with a tiny ResNet at 8 px
for a few steps, so the whole file runs in about a minute or two on a 2-core CPU.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import one_thread, tiny_digits_overrides  # noqa: F401 (autouse fixture)

from astrocli.checkpoint import load_checkpoint, read_tensors
from astrocli.engine import NonFiniteLoss, TrainingInterrupted, train
from astrocli.engine.run_dir import RESUME_FILE
from astrocli.engine.state import Progress, load_resume_state, save_resume_state
from astrocli.errors import AstroError
from astrocli.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(out: Path, name: str = "run", **extra: object) -> list[str]:
    """A recipe that trains resnet20 on 8-px digits for 2 short epochs, quietly, on the CPU."""
    return tiny_digits_overrides(out, name, **extra)


def tiny_recipe(out: Path, name: str = "run", **extra: object):
    return load_recipe(None, tiny_overrides(out, name, **extra))


def stop_after(epoch: int, step: int):
    """A step hook that raises the SIGTERM flag before ``step`` of ``epoch`` (what the handler does)."""

    def hook(trainer, e: int, s: int) -> None:
        if (e, s) == (epoch, step):
            trainer.stop_signal = signal.SIGTERM

    return hook


def test_run_dir_layout_checkpoints_and_suffix(tmp_path: Path) -> None:
    run_dir = train(tiny_recipe(tmp_path, **{"output.plots": True}))
    assert run_dir == tmp_path / "run"
    for name in (
        "recipe.yaml",
        "split.json",
        "metrics.csv",
        "last.safetensors",
        "best.safetensors",
        RESUME_FILE,
        "summary.json",
        "curves.png",
    ):
        assert (run_dir / name).is_file(), name

    umask = os.umask(0)
    os.umask(umask)
    assert (run_dir / "last.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_top1",
        "val_top5",
        "val_macro_f1",
        "val_balanced_accuracy",
        "lr",
        "img_per_s",
        "seconds",
    ]
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    for row in rows[1:]:
        values = [float(v) for v in row]
        assert all(v == v for v in values)  # no NaN
        assert 0 <= values[3] <= values[4] <= 100  # top-1 <= top-5
        assert 0 <= values[5] <= 100 and 0 <= values[6] <= 100  # macro-F1, balanced accuracy
        assert values[8] > 0 and values[9] > 0

    state, meta = load_checkpoint(run_dir / "last.safetensors")
    assert meta.model == "resnet20" and meta.num_classes == 10 and meta.img_size == 8
    assert meta.class_names == [str(i) for i in range(10)] and meta.epoch == 2 and meta.weights == "model"
    assert meta.recipe["train"]["epochs"] == 2 and len(meta.mean) == 3
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())

    summary = json.loads((run_dir / "summary.json").read_text())
    best_rows = [float(r[3]) for r in rows[1:]]
    assert summary["best_top1"] == pytest.approx(max(best_rows))
    assert summary["best_epoch"] == 1 + best_rows.index(max(best_rows))
    assert summary["params"] == sum(
        t.numel() for k, t in state.items() if "running" not in k and "num_batches" not in k
    )
    _, best_meta = load_checkpoint(run_dir / "best.safetensors")
    assert best_meta.epoch == summary["best_epoch"]
    split = json.loads((run_dir / "split.json").read_text())
    assert split["class_names"] == meta.class_names

    # A second run with the same name gets a suffix instead of overwriting.
    again = train(tiny_recipe(tmp_path, **{"train.epochs": 1, "train.max_steps_per_epoch": 1}))
    assert again == tmp_path / "run-2"
    assert load_checkpoint(run_dir / "last.safetensors")[1].epoch == 2


def _compare_tensors(a: Path, b: Path) -> None:
    ta, _ = read_tensors(a)
    tb, _ = read_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


@pytest.mark.parametrize(
    ("pipeline", "stop_step"),
    [("loader", 0), ("loader", 1), ("tensor", 1)],
    ids=["loader-epoch-boundary", "loader-mid-epoch", "tensor-mid-epoch"],
)
def test_resume_gives_the_same_weights(tmp_path: Path, pipeline: str, stop_step: int) -> None:
    features = {
        "train.ema": True,
        "augment.mixup": 0.8,
        "augment.cutmix": 1.0,
        "augment.label_smoothing": 0.1,
        "train.accum_steps": 2 if stop_step == 0 else 1,  # accumulation across a whole-epoch stop
        "train.grad_clip": 1.0,
        "augment.auto_augment": "rand-m9-mstd0.5",
        "model.drop_rate": 0.1,
        "data.pipeline": pipeline,
        "data.cache_dir": str(tmp_path / "cache"),
    }
    straight = train(tiny_recipe(tmp_path, "straight", **features))

    # The signal flag goes up during epoch 1's last step (the run stops at the epoch boundary), or
    # during epoch 2's first step (the run stops mid-epoch, after one step).
    hook = stop_after(0, 2) if stop_step == 0 else stop_after(1, 0)
    with pytest.raises(TrainingInterrupted, match="astro train --resume"):
        train(tiny_recipe(tmp_path, "split", **features), step_hook=hook)
    split_dir = tmp_path / "split"
    progress = load_resume_state(split_dir / RESUME_FILE).progress
    assert (progress.epoch, progress.step_in_epoch) == ((1, 0) if stop_step == 0 else (1, 1))

    assert train(resume_dir=split_dir) == split_dir
    _compare_tensors(straight / "last.safetensors", split_dir / "last.safetensors")
    _compare_tensors(straight / "best.safetensors", split_dir / "best.safetensors")
    straight_rows = (straight / "metrics.csv").read_text().splitlines()
    split_rows = (split_dir / "metrics.csv").read_text().splitlines()
    assert len(split_rows) == len(straight_rows) == 3
    if stop_step == 0:  # whole epochs on both sides: identical losses and accuracies too
        strip = [",".join(r.split(",")[:6]) for r in straight_rows]
        assert strip == [",".join(r.split(",")[:6]) for r in split_rows]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    def poison(trainer, epoch: int, step: int) -> None:
        if (epoch, step) == (1, 0):
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match="NaN/inf in epoch 2") as info:
        train(tiny_recipe(tmp_path), step_hook=poison)
    assert "last.safetensors (epoch 1)" in str(info.value) and info.value.exit_code == 1
    state, meta = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta.epoch == 1
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert load_resume_state(tmp_path / "run" / RESUME_FILE).progress.epoch == 1
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_interrupted_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    path = tmp_path / RESUME_FILE
    save_resume_state(
        path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        progress=Progress(epoch=3, global_step=7),
        recipe={"train": {"epochs": 5}},
    )
    before = path.read_bytes()

    def fail_midway(fd: int) -> None:  # the bytes are written; the disk "fails" before the rename
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail_midway)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_resume_state(
            path, model=model, optimizer=optimizer, scheduler=scheduler, progress=Progress(epoch=4), recipe={}
        )
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [RESUME_FILE]
    state = load_resume_state(path)
    assert state.progress.epoch == 3 and state.progress.global_step == 7

    # And the state round-trips into fresh objects, RNG included.
    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, 1)
    state.apply(model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert torch.allclose(fresh.weight, model.weight - 1.0)
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert torch.equal(
        fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_rng_state_round_trip(tmp_path: Path) -> None:
    import random

    import numpy as np

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    save_resume_state(
        tmp_path / RESUME_FILE,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        progress=Progress(),
        recipe={},
    )
    draws = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    load_resume_state(tmp_path / RESUME_FILE).apply(model=model, optimizer=optimizer, scheduler=scheduler)
    again = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_sigterm_saves_and_says_how_to_resume(tmp_path: Path) -> None:
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(tiny_recipe(tmp_path, **{"train.epochs": 200}).to_yaml())
    proc = subprocess.Popen(
        [sys.executable, "-m", "astrocli", "train", "--recipe", str(recipe_file), "--jsonl"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in proc.stdout:  # wait until an epoch is done, so the run is mid-way
            if json.loads(line).get("event") == "epoch":
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    run_dir = tmp_path / "run"
    assert f"astro train --resume {run_dir}" in " ".join(err.split())
    progress = load_resume_state(run_dir / RESUME_FILE).progress
    assert 1 <= progress.epoch < 200
    assert load_checkpoint(run_dir / "last.safetensors")[1].epoch == progress.epoch


def test_cli_print_recipe_and_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from astrocli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", "--print-recipe", *tiny_overrides(tmp_path)])
    assert isinstance(result.exception, AstroError) and "give --recipe" in str(result.exception)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("train:\n  lr: 55e-5\n  epochs: 3\n")
    result = runner.invoke(app, ["train", "--recipe", str(recipe_file), "--print-recipe", "train.epochs=7"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.00055" in result.output and "epochs: 7" in result.output and "name: r" in result.output

    # Bad input becomes one line on stderr and exit 2 through the real entry point.
    proc = subprocess.run(
        [sys.executable, "-m", "astrocli", "train", "--resume", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "has no resume.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(AstroError, match="train.amp=fp16 needs a CUDA device"):
        train(tiny_recipe(tmp_path, **{"train.amp": "fp16"}))


def test_loader_mixup_soft_targets_and_off_epoch() -> None:
    from astrocli.data.loader import LoaderBatches
    from astrocli.data.pipeline import build_mixup

    recipe = load_recipe(
        None,
        [
            "augment.mixup=0.8",
            "augment.cutmix=1.0",
            "augment.label_smoothing=0.1",
            "augment.mixup_off_epoch=2",
        ],
    )
    dataset = [(torch.full((1, 2, 2), float(i)), i % 4) for i in range(9)]
    source = LoaderBatches(
        dataset,
        lambda x: x,
        4,
        torch.device("cpu"),
        train=True,
        seed=1,
        mixup=build_mixup(recipe, 4),
        mixup_off_epoch=2,
    )
    assert len(source) == 2 and source.num_samples == 9
    source.set_epoch(0)
    batches = list(source)
    assert [tuple(t.shape) for _, t in batches] == [(4, 4), (4, 4)]  # soft targets [B, K]
    assert all(torch.allclose(t.sum(1), torch.ones(4)) for _, t in batches)
    source.set_epoch(2)  # mixup off: images untouched, targets smoothed one-hot
    for images, targets in source:
        labels = images[:, 0, 0, 0].long() % 4
        assert torch.allclose(targets.max(1).values, torch.full((4,), 0.9 + 0.1 / 4))
        assert torch.equal(targets.argmax(1), labels)


class _FakeCompiled(torch.nn.Module):
    """What ``torch.compile`` returns, without a compiler: runs ``inner``, or fails like a broken backend."""

    def __init__(self, inner: torch.nn.Module, fail: bool) -> None:
        super().__init__()
        self.inner, self.fail = inner, fail

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("backend compiler failed\nwith a long traceback below")
        return self.inner(images)


@pytest.mark.parametrize("fail", [True, False])
def test_compile_warm_up_falls_back_and_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, fail: bool
) -> None:
    """train.compile warms up before the loop: a failing compile falls back to eager with one warning,
    the recipe keeps train.compile, and either way the weights are those of an eager run."""
    eager = train(tiny_recipe(tmp_path, "eager"))
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: _FakeCompiled(module, fail))
    run_dir = train(tiny_recipe(tmp_path, "compiled", **{"train.compile": True}))
    err = capsys.readouterr().err
    assert ("torch.compile failed (RuntimeError: backend compiler failed); training eagerly" in err) == fail
    assert json.loads((run_dir / "summary.json").read_text())["compiled"] is not fail
    assert "compile: true" in (run_dir / "recipe.yaml").read_text()
    _, meta = load_checkpoint(run_dir / "last.safetensors")
    assert meta.recipe["train"]["compile"] is True
    assert load_resume_state(run_dir / RESUME_FILE).recipe["train"]["compile"] is True
    ours, theirs = (load_checkpoint(d / "last.safetensors")[0] for d in (run_dir, eager))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_progress_reads_the_extra_bag_of_0_2_0() -> None:
    """astro 0.2.0 kept these fields in a ``progress.extra`` dict: its resume files still load."""
    old = {
        "epoch": 3,
        "best_epoch": 2,
        "extra": {
            "total_seconds": 12.5,
            "saved_epoch": 3,
            "best_score": 61.0,
            "evals_without_improvement": 1,
            "best_weights": "ema",
            "best_metrics": {"top1": 61.0},
            "stopped_early": 3,
        },
    }
    progress = Progress(**old)
    assert (progress.total_seconds, progress.saved_epoch, progress.stopped_early) == (12.5, 3, 3)
    assert (progress.best_score, progress.evals_without_improvement, progress.best_weights) == (
        61.0,
        1,
        "ema",
    )
    assert progress.best_metrics == {"top1": 61.0} and "extra" not in progress.to_dict()
    assert Progress(**progress.to_dict()) == progress
