"""`astro bench` and astrocli.models.cost: exact MAC counts, throughput output shape, runs and plots."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import run_astro_narrow
from torch import nn
from typer.testing import CliRunner

from astrocli.cli import app
from astrocli.errors import AstroError
from astrocli.experiments import runs as runs_module
from astrocli.models import cost as bench
from astrocli.models import count_params, create_model

runner = CliRunner()


class TinyAttention(nn.Module):
    """Tokens = pixels; one multi-head self-attention with SDPA or explicit softmax (``fused_attn``)."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.fused_attn = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, dim = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).reshape(batch, -1, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, -1, dim))


def tiny_attention_macs(dim: int, side: int) -> int:
    """By hand: qkv N*D*3D + scores N*N*D + weighted sum N*N*D (summed over heads) + proj N*D*D."""
    tokens = side * side
    return tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim


def run_cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_count_macs_is_exact_for_attention_fused_and_explicit(device: str) -> None:
    with torch.device(device):
        model = TinyAttention(dim=16, heads=2)
    expected = tiny_attention_macs(16, 4)
    assert bench.count_macs(model, img_size=4, in_chans=16) == expected
    # The SDPA kernel itself is counted (torch leaves the CPU kernel out; astro adds its formula).
    assert bench.count_flops(model, img_size=4, in_chans=16, fused=True) == 2 * expected
    assert model.fused_attn is True  # the explicit-attention switch is undone


def test_count_params_total_and_trainable() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    assert (count_params(model), count_params(model, trainable_only=True)) == (
        4 * 3 + 3 + 3 * 2 + 2,
        3 * 2 + 2,
    )


ATTENTION_MODELS = [("cct_2_3x2_32", 32), ("astroformer_0", 64), ("vit_lite_2_4_32", 32)]


@pytest.mark.parametrize(("name", "img_size"), ATTENTION_MODELS)
def test_zoo_explicit_attention_count_equals_fused_count(name: str, img_size: int) -> None:
    # On CPU, where SDPA runs its own kernel (on meta it decomposes into counted matmuls anyway).
    model = create_model(name, num_classes=10, img_size=img_size, device="cpu")
    explicit = bench.count_flops(model, img_size)
    fused = bench.count_flops(model, img_size, fused=True)
    assert explicit == fused > 0


def test_cli_cct_7_3x1_macs_match_the_paper() -> None:
    result = run_cli("bench", "cct_7_3x1_32", "--flops", "--img-size", "32", "--format", "json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["model"] == "cct_7_3x1_32" and row["img_size"] == 32
    assert abs(row["macs"] - 1.19e9) / 1.19e9 < 0.03
    assert row["flops"] == 2 * row["macs"]
    assert row["params"] is None and row["infer_img_s"] is None and row["train_img_s"] is None


def rss_peak_readable() -> bool:
    """Whether this machine lets a process reset and read its resident-set peak (Linux /proc)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM:" in Path("/proc/self/status").read_text()
    except OSError:
        return False


def test_measure_throughput_reports_positive_rates() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    speed = bench.measure_throughput(model, img_size=8, batch_size=2, warmup=1, repeats=1)
    assert speed.infer_img_s > 0 and speed.train_img_s > 0
    if rss_peak_readable():
        assert speed.peak_mem_kind == "cpu_rss_peak_delta" and speed.peak_mem_mb >= 0
    else:  # not Linux, or /proc/self/clear_refs refused: null, never a wrong number
        assert speed.peak_mem_kind is None and speed.peak_mem_mb is None


def test_cli_default_reports_all_three_as_json_and_writes_output(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "resnet20", "--batch-size", "2", "--warmup", "1", "--repeats", "1", "--format", "json"]
    result = run_cli(*args, "--output", str(out))
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert json.loads(out.read_text()) == [row]
    assert row["params"] == row["trainable_params"] == 269_722  # CIFAR ResNet-20, 10 classes
    assert row["macs"] > 0 and row["flops"] == 2 * row["macs"]
    assert row["infer_img_s"] > 0 and row["train_img_s"] > 0
    assert row["batch_size"] == 2 and row["device"] == "cpu"
    # Measured in a fresh process per model, so the peak does not depend on what ran before.
    if rss_peak_readable():
        assert row["peak_mem_kind"] == "cpu_rss_peak_fresh_process" and row["peak_mem_mb"] > 0
    else:
        assert row["peak_mem_kind"] is None and row["peak_mem_mb"] is None


def test_cli_csv_and_table_formats() -> None:
    result = run_cli("bench", "cct_2_3x2_32", "resnet20", "--params", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["model"] for r in rows] == ["cct_2_3x2_32", "resnet20"]
    assert abs(int(rows[0]["params"]) - 284_000) / 284_000 < 0.01 and rows[0]["macs"] == ""
    table = run_cli("bench", "cct_2_3x2_32", "--params", "--flops")
    assert table.exit_code == 0 and "MACs (G)" in table.stdout and "cct_2_3x2_32" in table.stdout


def test_cli_all_reports_params_and_macs_but_no_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    import astrocli.models

    monkeypatch.setattr(astrocli.models, "list_models", lambda: ["cct_2_3x2_32", "resnet20"])
    result = run_cli("bench", "--all", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["cct_2_3x2_32", "resnet20"]
    assert all(r["params"] > 0 and r["macs"] > 0 and r["train_img_s"] is None for r in rows)


def test_cli_unknown_model_suggests_close_names() -> None:
    result = run_cli("bench", "cct_7_3x1")
    assert isinstance(result.exception, AstroError)
    assert "cct_7_3x1_32" in str(result.exception)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
def test_cli_cuda_without_gpu_is_a_user_error() -> None:
    result = run_cli("bench", "resnet20", "--throughput", "--device", "cuda")
    assert isinstance(result.exception, AstroError) and "--device cpu" in str(result.exception)


def test_astro_bench_bad_input_is_one_line_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "astrocli", "bench", "--plot", "x.png"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--runs" in proc.stderr and "Traceback" not in proc.stderr


def write_run(root: Path, name: str, model: str, top1s: list[float], summary_top1: bool = True) -> Path:
    """A fake finished run in the documented layout (recipe.yaml, metrics.csv, summary.json)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name": model}, "data": {"img_size": 32}}))
    lines = ["epoch,train_loss,val_loss,val_top1,val_top5,lr,img_per_s,seconds"]
    lines += [f"{i},1.0,1.0,{t},90.0,0.001,100.0,1.0" for i, t in enumerate(top1s)]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    summary = {"model": model, "best_epoch": top1s.index(max(top1s))}
    if summary_top1:
        summary["best_top1"] = max(top1s)
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "split.json").write_text(json.dumps({"class_names": [str(i) for i in range(10)]}))
    return run


def test_cli_runs_table_and_scaling_plot(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "cct2", "cct_2_3x2_32", [40.0, 55.5, 51.0])
    write_run(runs, "cct4", "cct_4_3x2_32", [48.0, 61.25], summary_top1=False)  # top-1 from metrics.csv
    write_run(runs, "r20", "resnet20", [60.0, 70.0])
    write_run(runs, "gone", "no_such_model_any_more", [30.0])  # listed, but off the curves
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "recipe.yaml").write_text("model: {name: resnet32}\n")
    plot = tmp_path / "scaling.png"
    result = run_cli("bench", "--runs", str(runs), "--plot", str(plot), "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {Path(r["run"]).name: r for r in json.loads(result.stdout)}
    assert set(rows) == {"cct2", "cct4", "r20", "gone"}
    assert rows["gone"]["params"] is None and rows["gone"]["best_top1"] == 30.0
    assert rows["cct2"]["best_top1"] == 55.5 and rows["cct4"]["best_top1"] == 61.25
    assert rows["cct2"]["family"] == rows["cct4"]["family"] == "cct" and rows["r20"]["family"] != "cct"
    cct2 = create_model("cct_2_3x2_32", num_classes=10, img_size=32, device="meta")
    assert rows["cct2"]["params"] == count_params(cct2)
    assert rows["cct2"]["macs"] == bench.count_macs(cct2, 32)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    table = run_cli("bench", "--runs", str(runs))
    assert table.exit_code == 0 and "best top-1" in table.stdout and "61.25" in table.stdout


def test_read_runs_missing_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(AstroError, match="does not exist"):
        runs_module.read_runs(tmp_path / "nope")


# -- astro bench --runs: runs from their own summary, grouped by data set --------------------------


def write_summary_run(
    root: Path, name: str, model: str, source: str, top1: float, params: int, in_chans: int
) -> None:
    run = root / name
    run.mkdir(parents=True)
    recipe = {"model": {"name": model}, "data": {"img_size": 32, "source": source, "in_chans": in_chans}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    summary = {"model": model, "best_top1": top1, "params": params, "data_source": source, "num_classes": 10}
    (run / "summary.json").write_text(json.dumps(summary))


def test_bench_runs_use_summary_params_and_keep_datasets_apart(tmp_path: Path, monkeypatch, capsys) -> None:
    runs = tmp_path / "runs-with-a-long-directory-name-that-a-narrow-terminal-would-fold"
    write_summary_run(runs, "digits-cct2", "cct_2_3x2_32", "digits", 95.0, 282_571, in_chans=1)
    write_summary_run(runs, "digits-cct4", "cct_4_3x2_32", "digits", 97.0, 480_000, in_chans=1)
    write_summary_run(runs, "cifar-cct2", "cct_2_3x2_32", "cifar10", 70.0, 283_723, in_chans=3)
    results = {Path(r.run).name: r for r in runs_module.read_runs(runs)}
    assert results["digits-cct2"].params == 282_571 and results["cifar-cct2"].params == 283_723
    one_channel = create_model("cct_2_3x2_32", 10, 32, in_chans=1, device="meta")
    assert results["digits-cct2"].macs == bench.count_macs(one_channel, 32, in_chans=1)
    curves = runs_module.scaling_curves(list(results.values()), "params")
    assert curves == {  # third element: half the 95% interval, 0 for single runs (cv parents have one)
        "cct (cifar10)": [(283_723, 70.0, 0.0)],
        "cct (digits)": [(282_571, 95.0, 0.0), (480_000, 97.0, 0.0)],
    }

    code, out = run_astro_narrow(["bench", "--runs", runs], monkeypatch, capsys)
    assert code == 0 and str(runs / "digits-cct2") in out and "digits" in out and "cifar10" in out
