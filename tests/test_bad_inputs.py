"""The bad-input battery: every bad input or fault ends in one line and a non-zero exit, never a
traceback, and leaves everything that existed before as it was. The run guard's own cases (a full
disk, a damaged resume file) are in test_run_guard.py; the fixtures of both are in battery.py.

A few cases run as real subprocesses (`python -m astrocli`, in parallel) to check the process-level
contract (exit status, stderr, no traceback); the rest run the same entry point in-process
(tests/helpers.run_astro), which checks the same `main()` without paying a Python start each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from battery import assert_one_line, snapshot, train_args
from helpers import class_dirs, make_checkpoint, run_astro
from PIL import Image

from astrocli.engine.run_guard import LOCK_FILE
from astrocli.recipe import load_recipe

MODEL = "cct_2_3x2_32"


# ---------------------------------------------------------------------------------------------
# Real subprocesses: the process-level contract
# ---------------------------------------------------------------------------------------------


def test_battery_as_subprocesses(data: Path, trained_run: Path, readonly_dir: Path, tmp_path: Path) -> None:
    """Four mechanisms at once, as a user runs them: a range check at load time, a failed start
    (no run directory left), a second writer on a locked run, an output into a read-only folder."""
    from filelock import FileLock

    runs = tmp_path / "runs"
    checkpoint = trained_run / "last.safetensors"
    cases = {
        "batch_size": (train_args(data, runs, "train.batch_size=0"), ["train.batch_size", "positive"]),
        "no_data": (train_args(tmp_path / "nowhere", runs), ["data.root", "nowhere"]),
        "locked": (["train", "--resume", str(trained_run)], ["already writing"]),
        "readonly": (["eval", str(checkpoint), "--json", str(readonly_dir / "r.json")], ["readonly"]),
    }
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": os.pathsep.join(sys.path)}
    before = snapshot(tmp_path), snapshot(trained_run)
    with FileLock(str(trained_run / LOCK_FILE), timeout=0):  # as if another `astro train` held the run
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "astrocli", *args],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, (args, _) in cases.items()
        }
        results = {
            name: (*proc.communicate(timeout=600)[::-1], proc.returncode) for name, proc in procs.items()
        }
    for name, (err, out, code) in results.items():
        assert_one_line(code, out, err, *cases[name][1])
    assert not runs.exists()  # failed starts left no run directory
    assert (snapshot(tmp_path), snapshot(trained_run)) == before


# ---------------------------------------------------------------------------------------------
# In-process: the rest of the battery through the same entry point
# ---------------------------------------------------------------------------------------------

RECIPE_CASES = [
    ("train.lr=-1", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.img_size=0", "data.img_size"),
    ("train.epochs=-3", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.accum_steps=0", "train.accum_steps"),
    ("augment.hflip=1.5", "augment.hflip"),
    ("augment.scale=[0.5, 0.1]", "[lo, hi]"),  # brackets survive rich's markup
    ("data.split=holdout", "data.split"),
    ("train.device=gpu", "train.device"),
    ("data.source=cifar11", "data.source"),
    # already one line before issue 16: keep them so
    ("train.lrr=0.1", "did you mean train.lr"),
    ("train.epochs=many", "train.epochs"),
    ("train.epochs", "KEY=VALUE"),
    ("model.name=no_such_model", "no_such_model"),
]


def test_recipe_and_start_failures_are_one_line_and_leave_no_run(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  name: cct_2_3x2_32\ntrain:\n  epochs: [1, 2\n  lr: 0.1\n")
    cases = [(train_args(data, runs, override), [expected]) for override, expected in RECIPE_CASES]
    cases += [
        (["train", "--recipe", "no_such_recipe"], ["no_such_recipe", "astro recipes"]),
        (["train", "--recipe", str(bad_yaml)], [str(bad_yaml), "line 5, column 5"]),
        (train_args(tmp_path / "missing", runs), ["data.root", "missing"]),
        (["train", "--resume", str(tmp_path)], ["resume.safetensors"]),
    ]
    before = snapshot(tmp_path)
    for args, expected in cases:
        assert_one_line(*run_astro(args, monkeypatch, capsys), *expected)
    assert not runs.exists()  # no runs/x, runs/x-2, ... from failed starts, nor an empty runs/
    assert snapshot(tmp_path) == before


def test_outputs_read_only_refused_missing_folders_created(
    data: Path,
    trained_run: Path,
    readonly_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    checkpoint = make_checkpoint(tmp_path / "ckpt.safetensors", MODEL, 32, data)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    image = str(sorted(data.glob("*/*.jpg"))[0])
    cases = [
        (["export", str(checkpoint), "-o", str(readonly_dir / "m.onnx")], ["readonly", "writable"]),
        (["predict", image, "-c", str(checkpoint), "-o", str(readonly_dir / "p.json")], ["readonly"]),
        (["eval", str(checkpoint), "--json", str(readonly_dir / "r.json")], ["readonly"]),
        (["eval", str(checkpoint), "model.name=resnet20"], ["model.name=resnet20", "cannot apply"]),
        (["eval", str(checkpoint), "data.root=/no/such/folder"], ["/no/such/folder"]),
        (["eval", str(corrupt)], ["corrupt.safetensors"]),
        (["predict", image, "-c", str(corrupt)], ["corrupt.safetensors"]),
        (["export", str(corrupt)], ["corrupt.safetensors"]),
        (["predict", str(tmp_path / "no.jpg"), "-c", str(checkpoint)], ["no.jpg"]),
    ]
    before = snapshot(tmp_path)
    for args, expected in cases:
        assert_one_line(*run_astro(args, monkeypatch, capsys), *expected)
    assert snapshot(tmp_path) == before

    # A folder that does not exist yet is created, as users expect of -o / --json.
    new = tmp_path / "new"
    code, _, err = run_astro(
        ["predict", image, "-c", checkpoint, "-o", new / "a" / "p.json"], monkeypatch, capsys
    )
    assert code == 0, err
    args = ["eval", checkpoint, "--json", new / "b" / "r.json", "data.val_fraction=0.3"]
    code, _, err = run_astro(args, monkeypatch, capsys)
    assert code == 0, err
    out = new / "c" / "m.safetensors"
    code, _, err = run_astro(["export", checkpoint, "-f", "safetensors", "-o", out], monkeypatch, capsys)
    assert code == 0, err
    assert all(p.is_file() for p in (new / "a" / "p.json", new / "b" / "r.json", out))


def test_decompression_bomb_in_training_folder_is_skipped_like_any_unreadable_image(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "data"
    shutil.copytree(data, root)
    first_class = class_dirs(root)[0]
    Image.new("1", (15000, 15000)).save(first_class / "bomb.png")  # 225 Mpx: over PIL's bomb limit
    code, out, err = run_astro(train_args(root, tmp_path / "runs", "output.name=bomb"), monkeypatch, capsys)
    assert code == 0, err
    import json

    split = json.loads((tmp_path / "runs" / "bomb" / "split.json").read_text())
    assert split["num_train"] + split["num_val"] == 18  # the bomb left out, the 18 real images kept


def test_constraint_table_names_real_keys_and_every_shipped_recipe_passes() -> None:
    from astrocli.recipe import CONSTRAINTS, PACKAGED_RECIPES, Recipe, check_ranges

    defaults = Recipe()
    for key in CONSTRAINTS:
        section, name = key.split(".")
        assert hasattr(getattr(defaults, section), name), key
    check_ranges(defaults)
    for path in sorted(PACKAGED_RECIPES.glob("*.yaml")):
        load_recipe(path)  # raises on a value out of range
