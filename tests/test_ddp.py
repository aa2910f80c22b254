"""DistributedDataParallel with two CPU processes (gloo), launched the way users do:
``torchrun --standalone --nproc-per-node 2 -m astrocli train ...``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from astrocli.checkpoint import load_checkpoint
from astrocli.data.loader import LoaderBatches
from astrocli.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_gloo_processes(tmp_path: Path) -> None:
    overrides = {
        "data.source": "digits",
        "data.img_size": 8,
        "data.num_workers": 0,
        "data.val_fraction": 0.03,
        "model.name": "resnet20",
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.max_steps_per_epoch": 2,
        "train.device": "cpu",
        "output.dir": str(tmp_path),
        "output.name": "ddp",
        "output.plots": False,
    }
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(load_recipe(None, [f"{k}={v}" for k, v in overrides.items()]).to_yaml())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "astrocli",
        "train",
        "--jsonl",
        "--recipe",
        str(recipe_file),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Only rank 0 wrote: one run directory, no "-2" from the second process, one summary line.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ddp"]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("summary") == 1
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    with (tmp_path / "ddp" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0 <= float(r["val_top1"]) <= 100 for r in rows)
    state, meta = load_checkpoint(tmp_path / "ddp" / "last.safetensors")
    assert meta.epoch == 2 and not any(k.startswith("module.") for k in state)  # unwrapped weights


def test_eval_shards_cover_every_image_once() -> None:
    """Evaluation under DDP must see each held-out image exactly once (no sampler padding)."""
    dataset = [(torch.full((1, 2, 2), float(i)), i % 3) for i in range(11)]
    seen = []
    for rank in range(2):
        source = LoaderBatches(
            dataset, lambda x: x, 4, torch.device("cpu"), train=False, rank=rank, world_size=2
        )
        seen += [int(img[0, 0, 0]) for images, _ in source for img in images]
        assert source.num_samples == len(range(rank, 11, 2))
    assert sorted(seen) == list(range(11))


def test_train_shards_are_disjoint_and_reshuffled_per_epoch() -> None:
    dataset = [(torch.full((1, 1, 1), float(i)), 0) for i in range(16)]

    def epoch_order(rank: int, epoch: int) -> list[int]:
        source = LoaderBatches(
            dataset, lambda x: x, 4, torch.device("cpu"), train=True, rank=rank, world_size=2, seed=5
        )
        source.set_epoch(epoch)
        return [int(v) for images, _ in source for v in images.flatten()]

    assert sorted(epoch_order(0, 0) + epoch_order(1, 0)) == list(range(16))
    assert epoch_order(0, 0) == epoch_order(0, 0)  # seeded
    assert epoch_order(0, 0) != epoch_order(0, 1)  # reshuffled
