"""Small things a user sees: the bench title names only what was measured, curves.png has whole epochs
on its x axis, and the reliability diagram labels each bin with its image count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import one_thread, run_astro, tiny_digits_overrides  # noqa: F401 (autouse fixture)

from astrocli.calibration import reliability_figure
from astrocli.engine.run_dir import RunDir, curves_figure


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20 on 8-px real digits, 2 epochs, with its plots."""
    from astrocli.engine import train
    from astrocli.recipe import load_recipe

    out = tmp_path_factory.mktemp("visuals")
    return train(load_recipe("quickstart", tiny_digits_overrides(out, **{"output.plots": True})))


def test_bench_title_names_throughput_only_when_measured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run_astro(
        ["bench", "resnet20", "--params", "--flops", "--img-size", "32"], monkeypatch, capsys
    )
    assert code == 0, err
    title = out.strip().splitlines()[0]
    assert "MACs/FLOPs per image" in title and "throughput" not in title and "img/s" not in out


def test_curves_of_a_two_epoch_run_have_integer_epoch_ticks(two_epoch_run: Path) -> None:
    import matplotlib.pyplot as plt

    assert (two_epoch_run / "curves.png").is_file()
    rows = RunDir(two_epoch_run).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    fig = curves_figure(rows)
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            low, high = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        plt.close(fig)


def test_reliability_diagram_shows_images_per_bin(
    two_epoch_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import matplotlib.pyplot as plt

    report_path, plot = tmp_path / "r.json", tmp_path / "cm.png"
    args = [
        "eval",
        two_epoch_run / "best.safetensors",
        "--json",
        report_path,
        "--plot",
        plot,
        "--device",
        "cpu",
    ]
    code, _, err = run_astro(args, monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "cm-reliability.png").is_file()
    report = json.loads(report_path.read_text())
    fig = reliability_figure(report)
    try:
        labels = [int(t.get_text()) for t in fig.axes[0].texts]
    finally:
        plt.close(fig)
    raw = [n for n in report["reliability"]["count"] if n]
    calibrated = [n for n in report["reliability_calibrated"]["count"] if n]
    assert labels == raw + calibrated and sum(raw) == report["num_samples"]
    assert np.all(np.asarray(labels) > 0)
