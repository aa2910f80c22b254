"""The bad-input battery's helpers, shared by test_bad_inputs.py and test_run_guard.py (their
fixtures, ``data``, ``trained_run``, ``readonly_dir`` and ``small_disk``, are in conftest.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


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
