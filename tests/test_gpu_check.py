"""The prepared GPU scripts, run in their CPU smoke modes on real CIFAR-10 JPEGs, and the fast recipe.

``benchmarks/gpu_check.py --smoke`` and ``benchmarks/time_to_accuracy.py --smoke`` run the same code
paths as on a GPU with tiny sizes; these tests check that every section ran and that the JSON and
markdown they write have the structure a GPU session will read (no speed is asserted).
"""

from __future__ import annotations

import io
import json
import math
import os
import shlex
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

from astrocli.engine.console import TrainConsole
from astrocli.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"matmul", "throughput", "mfu_eager", "packing", "startup", "mfu_compiled"}


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,  # a guard against a hang, not a speed check (busy CI machines are slow)
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_gpu_check_smoke_writes_every_section(cifar10_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # a generous budget: on a busy CI machine a section must not be skipped for time
    _run_script(
        "gpu_check.py", "--smoke", "--data", str(cifar10_zip), "--out", str(out),
        "--workdir", str(tmp_path / "work"), "--budget-s", "2000",
    )  # fmt: skip
    data = json.loads((out / "gpu_check.json").read_text())
    env = data["env"]
    assert env["smoke"] is True and env["device"].startswith("cpu") and env["torch"]
    assert "gpu_check.py" in env["command"] and "--smoke" in env["command"]

    assert set(data["sections"]) == SECTIONS
    for name, record in data["sections"].items():
        assert record["status"] == "ok", f"{name}: {record.get('error')}\n{record.get('traceback')}"
        assert record["seconds"] > 0

    figures = data["figures"]
    for figure in figures:
        assert (
            isinstance(figure["value"], float) and math.isfinite(figure["value"]) and figure["value"] > 0
        ), figure
        assert figure["device"] == env["device"] and figure["torch"] == env["torch"] and figure["command"]
        assert figure["batch_size"] is None or figure["batch_size"] > 0
    by_section: dict[str, list[dict]] = {}
    for figure in figures:
        by_section.setdefault(figure["section"], []).append(figure)
    assert set(by_section) == {"matmul", "throughput", "mfu", "packing", "startup"}
    # throughput: images/s both ways and their ratio, for both model/size pairs, judged against 90%
    ratios = [f for f in by_section["throughput"] if f["name"].endswith("real / synthetic")]
    assert len(ratios) == 2 and all(f["target"] == ">= 90%" and isinstance(f["met"], bool) for f in ratios)
    assert all(
        "train_throughput.py" in f["command"] and "--recipe cifar10_cct_7_3x1" in f["command"] for f in ratios
    )
    # MFU: eager and compiled, channels-last off and on
    mfu = [f for f in by_section["mfu"] if f["name"].endswith("MFU, synthetic batches")]
    assert len(mfu) == 4 and sum("channels-last on" in f["name"] for f in mfu) == 2
    assert sum("--compile" in shlex.split(f["command"]) for f in mfu) == 2
    assert all(0 < f["value"] < 5 for f in mfu)  # a fraction of the measured matmul rate
    # packing: one process, several processes, their ratio; the stacked-models variant ran too
    packing = data["sections"]["packing"]
    assert packing["packed"]["runs"] == 2 and len(packing["packed"]["per_run_img_per_s"]) == 2
    assert packing["ratio"] > 0 and packing["stacked"]["img_per_s"] > 0, packing.get("stacked_error")
    # start-up: both astro train runs reached their first optimizer step
    startup = data["sections"]["startup"]
    for run in ("cold", "warm"):
        assert (
            0 < startup[run]["to_start_event_s"] <= startup[run]["to_first_step_s"] <= startup[run]["total_s"]
        )
    assert "astrocli train --recipe cifar10_cct_7_3x1_fast --jsonl" in startup["command"]

    table = (out / "gpu_check.md").read_text().splitlines()
    assert table[0].startswith("# GPU check") and "CPU smoke run" in table[0]
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| section")]
    assert len(rows) == len(figures) + len(SECTIONS)  # one row per figure, one per section status


def test_time_to_accuracy_smoke(cifar10_zip: Path, tmp_path: Path) -> None:
    out = tmp_path / "tta"
    _run_script(
        "time_to_accuracy.py",
        "--smoke",
        "--data",
        str(cifar10_zip),
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    )
    result = json.loads((out / "time_to_accuracy.json").read_text())
    assert result["exit_code"] == 0 and result["recipe"] == "cifar10_cct_7_3x1_fast"
    assert result["device"].startswith("cpu") and result["torch"]
    assert "astrocli train --recipe cifar10_cct_7_3x1_fast --jsonl" in result["command"]
    assert "data.cache_dir=" in result["command"]  # a fresh cache: its build is part of the timed command
    curve = result["curve"]
    assert [c["epoch"] for c in curve] == [1, 2]
    assert all(0 < a["minutes"] < b["minutes"] for a, b in zip(curve, curve[1:], strict=False))
    assert all(0 <= c["val_top1"] <= 100 and c["img_per_s"] > 0 for c in curve)
    assert 0 < result["first_step_s"] < result["wall_s"]
    estimate = result["full_recipe_estimate"]
    assert estimate["epochs"] == 310 and 0 < estimate["train_images_per_epoch"] <= 100  # 10 per class
    assert estimate["estimated_s"] > 0
    assert (out / "metrics.csv").read_text().startswith("epoch,train_loss")
    # matplotlib is a required dependency: the plot is always drawn, and no note says otherwise.
    assert (out / "curve.png").read_bytes().startswith(b"\x89PNG") and not result["plot_note"]
    assert "| epoch | minutes | top-1 % | images/s |" in (out / "time_to_accuracy.md").read_text()


def test_jsonl_console_announces_the_first_step() -> None:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        TrainConsole("jsonl").first_step(1)
        TrainConsole("rich").first_step(1)  # only the jsonl mode prints it
    (line,) = buffer.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "first_step" and event["step"] == 1 and event["time"] > 1.7e9


def test_fast_recipe_keeps_the_papers_augmentation() -> None:
    fast, paper = load_recipe("cifar10_cct_7_3x1_fast"), load_recipe("cifar10_cct_7_3x1")
    assert fast.model.name == paper.model.name == "cct_7_3x1_32"
    same = {k: v for k, v in vars(paper.augment).items() if k != "mixup_off_epoch"}
    assert {k: getattr(fast.augment, k) for k in same} == same
    assert fast.data.pipeline == "tensor" and fast.data.split == "auto"
    assert fast.train.batch_size == 4 * paper.train.batch_size
    assert math.isclose(fast.train.lr, paper.train.lr * 2)  # the square-root rule for 4x the batch
    assert fast.train.weight_decay == paper.train.weight_decay
    # a time budget that leaves the whole command's 5 minutes room for start-up and the test scoring
    assert fast.train.time is not None and fast.train.time <= 4.5
    assert fast.train.warmup_epochs + fast.train.cooldown_epochs < fast.train.epochs / 2


def _gpu_check():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    return gpu_check


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path: Path) -> None:
    """Issue 22: a SystemExit inside a section ended the whole script. Every failure but Ctrl-C is
    recorded with its error line, and the next section runs."""
    import time

    import pytest

    gc = _gpu_check()
    report = gc.Report(tmp_path, {"device": "cpu", "torch": "x", "python": "3", "started": "now",
                                  "command": "c", "smoke": True})  # fmt: skip
    deadline = time.monotonic() + 60

    def exits() -> dict:
        raise SystemExit("the loss became non-finite")

    def fails() -> dict:
        raise ValueError("bad shape\nlong detail")

    assert gc.run_section(report, "first", exits, deadline, 0) is None
    assert gc.run_section(report, "second", fails, deadline, 0) is None
    assert gc.run_section(report, "third", lambda: {"value": 1}, deadline, 0) == {"value": 1}
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert sections["first"]["status"] == "failed"
    assert sections["first"]["error"] == "SystemExit: the loss became non-finite"
    assert sections["second"]["error"] == "ValueError: bad shape"
    assert sections["third"]["status"] == "ok" and sections["third"]["value"] == 1
    assert "| first | failed |" in (tmp_path / "gpu_check.md").read_text()

    def interrupted() -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops the script
        gc.run_section(report, "fourth", interrupted, deadline, 0)


def test_stacked_models_train_like_separate_models() -> None:
    """The vmap-stacked step of gpu_check's packing section gives each model the update it would get
    alone (fp32, dropout off), so its speed figure measures the same training."""
    import copy

    import torch
    import torch.nn.functional as F

    from astrocli.models import create_model

    gc = _gpu_check()
    torch.manual_seed(0)
    k, batch = 2, 4
    models = [create_model("cct_2_3x2_32", num_classes=10, img_size=32).eval() for _ in range(k)]
    alone = [copy.deepcopy(m) for m in models]
    step, params = gc.stacked_step(models, batch, torch.device("cpu"), amp=False)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=5e-4, weight_decay=0.05) for m in alone]
    for _ in range(3):
        images = torch.randn(k * batch, 3, 32, 32)
        targets = F.one_hot(torch.randint(0, 10, (k * batch,)), 10).float()
        stacked_loss = step(images, targets)
        losses = []
        for i, (m, opt) in enumerate(zip(alone, optimizers, strict=True)):
            x, y = images[i * batch : (i + 1) * batch], targets[i * batch : (i + 1) * batch]
            loss = torch.sum(-y * F.log_softmax(m(x), dim=-1), dim=-1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert abs(stacked_loss.item() - sum(losses) / k) < 1e-4
    # The sequence pool's bias shifts every token's score alike, so softmax makes its gradient zero
    # up to rounding, which Adam scales into full-size steps of either sign: not comparable.
    for i, m in enumerate(alone):
        for name, p in m.named_parameters():
            if name != "classifier.attention_pool.bias":
                assert torch.allclose(params[name][i], p, atol=1e-5), name
