"""Does bf16 autocast on the CPU train as well as full precision? (``train.amp: auto`` on the CPU)

Trains the same recipe twice per seed, ``train.amp=none`` and ``train.amp=bf16``, each a fresh
``astro train --jsonl`` process, the two arms alternating, on a class-balanced CIFAR-10 subset
extracted from the JPEG zip (train from its train split, val from its test split). Reports per arm
the best and final val top-1 and the training images/s, and the paired difference (bf16 - none)
per seed with its mean. A speed-up that costs accuracy would be a confident wrong default, so
``CPU_BF16`` in astrocli/engine/precision.py lists a model family only when this benchmark finds no
loss beyond the seed-to-seed spread.

    python benchmarks/bf16_accuracy.py --data ../shared/data/cifar10-jpeg.zip --models resnet20 \\
        cct_2_3x2_32 --seeds 0 1 2 --epochs 15 --train-images 5000 --val-images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from epoch_speed import extract_subset  # noqa: E402


def train_once(data: Path, model: str, amp: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """One ``astro train`` process; its best/final val top-1 and mean training images/s."""
    name = f"{model}-{amp}-s{seed}"
    cmd = [
        sys.executable,
        "-m",
        "astrocli",
        "train",
        "--jsonl",
        "--recipe",
        str(args.recipe_file),
        f"model.name={model}",
        f"train.amp={amp}",
        f"train.seed={seed}",
        f"train.epochs={args.epochs}",
        f"data.root={data}",
        f"output.dir={out}",
        f"output.name={name}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    epochs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in epochs if e.get("event") == "epoch"]
    summary = json.loads((out / name / "summary.json").read_text())
    top1 = [float(e["val_top1"]) for e in epochs]
    speed = [float(e["img_per_s"]) for e in epochs if "img_per_s" in e]
    return {
        "best": max(top1) if top1 else None,
        "final": top1[-1] if top1 else None,
        "img_per_s": statistics.median(speed) if speed else None,
        "autocast": summary.get("autocast"),  # what the run says it used
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the CIFAR-10 JPEG zip")
    parser.add_argument("--models", nargs="+", default=["resnet20", "cct_2_3x2_32"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "astro-bf16-accuracy")
    args = parser.parse_args()
    data = extract_subset(args.data, args.train_images, args.val_images)
    args.out.mkdir(parents=True, exist_ok=True)
    args.recipe_file = args.out / "recipe.yaml"
    args.recipe_file.write_text(
        "model: {name: resnet20}\n"
        f"data: {{source: imagefolder, root: {data}, img_size: 32, pipeline: tensor}}\n"
        f"train: {{epochs: {args.epochs}, batch_size: {args.batch_size}, device: cpu}}\n"
        f"output: {{dir: {args.out}, plots: false, report: false}}\n"
    )
    rows = []
    for model in args.models:
        for seed in args.seeds:
            for amp in ("none", "bf16") if seed % 2 == 0 else ("bf16", "none"):
                result = train_once(data, model, amp, seed, args, args.out)
                rows.append({"model": model, "seed": seed, "amp": amp, **result})
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "bf16_accuracy.json").write_text(json.dumps(rows, indent=1))
    print_table(rows, args)


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\n| model | amp | best val top-1 per seed {args.seeds} | mean | final mean | img/s median |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        for amp in ("none", "bf16"):
            mine = [r for r in rows if r["model"] == model and r["amp"] == amp]
            best = [r["best"] for r in mine]
            print(
                f"| {model} | {amp} | {', '.join(f'{b:.2f}' for b in best)} | {statistics.mean(best):.2f} | "
                f"{statistics.mean(r['final'] for r in mine):.2f} | "
                f"{statistics.median(r['img_per_s'] for r in mine):.0f} |"
            )
        diffs = [
            next(r["best"] for r in rows if (r["model"], r["seed"], r["amp"]) == (model, s, "bf16"))
            - next(r["best"] for r in rows if (r["model"], r["seed"], r["amp"]) == (model, s, "none"))
            for s in args.seeds
        ]
        print(
            f"| {model} | bf16 - none, per seed | {', '.join(f'{d:+.2f}' for d in diffs)} | "
            f"{statistics.mean(diffs):+.2f} | | |"
        )


if __name__ == "__main__":
    main()
