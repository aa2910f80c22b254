"""``benchmarks/gpu_issue22.py``, the prepared H200 command of issue 22, in its CPU smoke mode on real
CIFAR-10 JPEGs: every section runs and writes the JSON and markdown a GPU session will read (no speed
is asserted), a section that does not fit the budget is skipped with the command that runs it, and
``gpu_run.sh`` knows both prepared commands.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_issue22.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    assert proc.returncode == 0, f"gpu_issue22.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def check_figures(data: dict) -> None:
    for figure in data["figures"]:
        assert isinstance(figure["value"], float) and math.isfinite(figure["value"]), figure
        assert figure["device"] == data["env"]["device"] and figure["torch"] and figure["command"]


def test_measurement_sections_write_figures_and_profiles(cifar10_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_script("--smoke", "--data", str(cifar10_zip), "--out", str(out), "--workdir", str(tmp_path / "w"),
               "--sections", "matmul,mfu,real_vs_synthetic")  # fmt: skip
    data = json.loads((out / "gpu_issue22.json").read_text())
    assert data["env"]["smoke"] is True and data["env"]["device"].startswith("cpu")
    sections = data["sections"]
    assert list(sections) == ["matmul", "mfu", "real_vs_synthetic"]
    assert all(r["status"] == "ok" for r in sections.values()), sections
    check_figures(data)
    mfu = sections["mfu"]["results"]
    assert {r["label"] for r in mfu} >= {"eager", "eager, channels-last", "compiled (default)"}
    assert all(0 < r["mfu"] < 5 and r["first_step_s"] > 0 for r in mfu)
    assert any(r["batch_size"] > mfu[0]["batch_size"] for r in mfu)  # the larger batch was measured
    md = (out / "gpu_issue22.md").read_text()
    assert md.startswith("# Issue 22 on one GPU (CPU smoke run")
    assert "## Profile: cct_2_3x2_32 eager" in md and "## Profile: cct_2_3x2_32 compiled (default)" in md
    assert "| what | ms per step | share of the step's wall time |" in md
    ratios = [f for f in data["figures"] if f["name"].endswith("real / synthetic")]
    assert len(ratios) == 2 and all(f["target"] == ">= 90%" and "--compile" in f["command"] for f in ratios)


def test_sections_past_the_budget_are_skipped_with_their_command(cifar10_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_script("--smoke", "--data", str(cifar10_zip), "--out", str(out), "--budget-s", "0.001",
               "--sections", "fast,cv")  # fmt: skip
    data = json.loads((out / "gpu_issue22.json").read_text())
    assert {r["status"] for r in data["sections"].values()} == {"skipped"}
    md = (out / "gpu_issue22.md").read_text()
    assert "## Skipped for time: run them with" in md and "--sections fast,cv" in md


def test_every_section_runs_end_to_end(cifar10_zip: Path, tmp_path: Path) -> None:
    """The whole command as a GPU session runs it, tiny: the fast recipe end to end, start-up with the
    cache it built, and a 2-fold cv one fold after another and in parallel."""
    out = tmp_path / "out"
    run_script("--smoke", "--data", str(cifar10_zip), "--out", str(out), "--workdir", str(tmp_path / "w"),
               "--sections", "fast,startup,cv")  # fmt: skip
    data = json.loads((out / "gpu_issue22.json").read_text())
    sections = data["sections"]
    assert all(r["status"] == "ok" for r in sections.values()), sections
    check_figures(data)
    fast = sections["fast"]
    assert fast["exit_code"] == 0 and fast["test"]["test_top1"] is not None and fast["wall_s"] > 0
    assert "decode" not in sections["startup"]  # the fast run had built the tensor cache
    assert 0 < sections["startup"]["eager"]["to_first_step_s"] < sections["startup"]["eager"]["total_s"]
    cv = sections["cv"]
    assert cv["ratio"] > 0 and len(cv["sequential"]["folds"]) == len(cv["parallel"]["folds"]) == 2
    assert all(f["test_top1"] is not None for f in cv["parallel"]["folds"])
    assert "--parallel 2" in cv["parallel"]["command"]
    md = (out / "gpu_issue22.md").read_text()
    assert "## Curve: cifar10_cct_7_3x1_fast" in md and "## astro cv: 2 folds" in md


def test_gpu_run_knows_both_prepared_commands() -> None:
    script = (REPO / "benchmarks" / "gpu_run.sh").read_text()
    assert "issue22)" in script and "gpu_issue22.py" in script and "--budget-s 540" in script
    paper = script[script.index("paper)") : script.index("check)")]
    assert "--recipe cifar10_cct_7_3x1 " in paper and "train.batch_size=512" in paper
    assert "train.lr=1.1e-3" in paper and "--test-if-stopped" in paper
    assert "PYTHONPATH=.:.carry/site" in script  # platformdirs carried, unpacked
    assert 'smoke="${ASTRO_GPU_SMOKE:+--smoke}"' in script and script.count("$smoke") >= 2
    proc = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_run.sh")], capture_output=True)
    assert proc.returncode == 0


def test_a_run_stopped_at_its_time_limit_is_scored_on_test(cifar10_zip: Path, tmp_path: Path) -> None:
    """The item-6 command stops the 310-epoch recipe at 8.5 min when it cannot finish; its best
    checkpoint is then scored on the test split, labelled as a stopped run's."""
    out = tmp_path / "tta"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), "--smoke",
         "--data", str(cifar10_zip), "--out", str(out), "--workdir", str(tmp_path / "w"),
         "--max-minutes", "0.25", "--test-if-stopped", "--", "train.epochs=500"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "time_to_accuracy.json").read_text())
    assert result["stopped_at_limit"] and result["test"] == {}  # the run itself never reached its end
    assert 0 <= result["test_at_stop"]["test_top1"] <= 100, result["test_at_stop"]
    assert "data.split=test" in result["test_at_stop"]["command"]
    assert "Stopped at the time limit" in (out / "time_to_accuracy.md").read_text()
