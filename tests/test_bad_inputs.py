"""The bad-input battery (issue 16): every bad input or fault ends in one line and a non-zero exit,
never a traceback, and leaves everything that existed before as it was.

A few cases run as real subprocesses (`python -m astrocli`, in parallel) to check the process-level
contract (exit status, stderr, no traceback); the rest run the same entry point in-process
(tests/helpers.run_astro), which checks the same `main()` without paying a Python start each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import class_dirs, make_checkpoint, run_astro
from PIL import Image

from astrocli.engine import train
from astrocli.engine.run_guard import LOCK_FILE
from astrocli.errors import DiskFullError
from astrocli.recipe import load_recipe

MODEL = "cct_2_3x2_32"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(galaxy_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 real galaxies (3 classes x 6) at 32 px: a tiny image-folder tree."""
    root = tmp_path_factory.mktemp("bad_inputs") / "data"
    for cls in class_dirs(galaxy_sample_dir)[:3]:
        (root / cls.name).mkdir(parents=True)
        for path in sorted(cls.glob("*.jpg"))[:6]:
            Image.open(path).convert("RGB").resize((32, 32)).save(root / cls.name / path.name)
    return root


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """`astro train` on the tiny tree: one short epoch on the CPU."""
    return [
        "train",
        "--recipe",
        "quickstart",
        "-q",
        "data.source=imagefolder",
        f"data.root={data}",
        "data.in_chans=3",
        "data.pipeline=loader",
        "data.val_fraction=0.3",
        "train.epochs=1",
        "train.warmup_epochs=0",  # one epoch: no room for the quick start's warmup (a warning line)
        "train.batch_size=4",
        "train.max_steps_per_epoch=2",
        "output.plots=false",
        f"output.dir={out}",
        *extra,
    ]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its bytes (folders: "dir")."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_one_line(code: int, out: str, err: str, *expected: str) -> None:
    """Non-zero exit, exactly one line on stderr naming what is expected, no traceback anywhere."""
    assert code != 0, (out, err)
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty folder nobody can write: a read-only tmpfs as root (chmod does not stop root)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if IS_ROOT:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], check=False)
        if done.returncode != 0:
            pytest.skip("running as root but cannot mount a read-only tmpfs")
        yield folder
        subprocess.run(["umount", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two small tmpfs mounts (24 MB and 2 MB); the full-disk tests need root to mount them."""
    if not IS_ROOT:
        pytest.skip("full-disk tests mount a small tmpfs, which needs root")
    mounts = []
    for name, size in (("disk", "24m"), ("tiny", "2m")):
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=False
        )
        if done.returncode != 0:
            pytest.skip("running as root but cannot mount a tmpfs (no CAP_SYS_ADMIN in this container?)")
        mounts.append(folder)
    yield mounts[0], mounts[1]
    for folder in mounts:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture(scope="module")
def trained_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (with resume.safetensors and last.safetensors)."""
    out = tmp_path_factory.mktemp("trained")
    recipe = load_recipe("quickstart", [a for a in train_args(data, out) if "=" in a])
    return train(recipe, log="quiet")


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


def test_truncated_resume_names_the_intact_last_checkpoint(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    resume = run / "resume.safetensors"
    resume.write_bytes(resume.read_bytes()[: resume.stat().st_size // 2])
    before = snapshot(run)
    code, out, err = run_astro(["train", "--resume", run], monkeypatch, capsys)
    assert_one_line(
        code, out, err, "last.safetensors", "is intact", f"model.pretrained={run / 'last.safetensors'}"
    )
    assert snapshot(run) == before
    (run / "last.safetensors").write_bytes(b"garbage")
    code, out, err = run_astro(["train", "--resume", run], monkeypatch, capsys)
    assert_one_line(code, out, err, "damaged too", "recipe.yaml")


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


def test_full_disk_keeps_the_run_resumable(
    data: Path,
    small_disk: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    disk, tiny = small_disk
    # Too small to hold the checkpoints at all: refused before training, no run directory left.
    code, out, err = run_astro(train_args(data, tiny), monkeypatch, capsys)
    assert_one_line(code, out, err, "MB free", "output.dir")
    assert list(tiny.iterdir()) == []

    # Room at the start; the disk fills up during the second epoch.
    filler = disk / "filler"
    recipe = load_recipe("quickstart", [a for a in train_args(data, disk, "train.epochs=2") if "=" in a])
    lock = threading.Lock()

    def fill_disk(trainer, epoch: int, step: int) -> None:
        with lock:
            if epoch == 1 and not filler.exists():
                free = shutil.disk_usage(disk).free
                filler.write_bytes(b"\0" * max(0, free - 64 * 1024))

    with pytest.raises(DiskFullError) as info:
        train(recipe, log="quiet", step_hook=fill_disk)
    message = str(info.value)
    run_dir = disk / recipe.output.name
    assert "no space left" in message and "resume state (epoch 1) is intact" in message
    assert f"astro train --resume {run_dir}" in message and "\n" not in message
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # no half-written files

    filler.unlink()  # space freed: the run continues from its resume state and finishes
    code, out, err = run_astro(["train", "--resume", run_dir, "-q"], monkeypatch, capsys)
    assert code == 0, err
    import json

    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2


def test_constraint_table_names_real_keys_and_every_shipped_recipe_passes() -> None:
    from astrocli.recipe import CONSTRAINTS, PACKAGED_RECIPES, Recipe, check_ranges

    defaults = Recipe()
    for key in CONSTRAINTS:
        section, name = key.split(".")
        assert hasattr(getattr(defaults, section), name), key
    check_ranges(defaults)
    for path in sorted(PACKAGED_RECIPES.glob("*.yaml")):
        load_recipe(path)  # raises on a value out of range
