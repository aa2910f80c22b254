"""Time to accuracy: run `astro train` on CIFAR-10, record top-1 against wall-clock minutes.

Runs ``python -m astrocli train --recipe RECIPE --jsonl`` (default ``cifar10_cct_7_3x1_fast``) on the
CIFAR-10 JPEG copy as a subprocess, timestamps each epoch event as it arrives (minutes since the
command started: start-up, cache build and evaluation included), and writes under ``--out``:

- ``time_to_accuracy.json`` / ``.md``: device, torch version, command, wall time of the whole
  command, best and final top-1, the first minute at which top-1 reached ``--target``, the curve,
  and the estimated wall time of the full 300-epoch ``cifar10_cct_7_3x1`` recipe from this run's
  images/s (stated as an estimate: it assumes the same images/s at that recipe's batch of 128);
- ``curve.png`` (top-1 against minutes) when matplotlib is installed (skipped, and said so, if not);
- ``train.log`` (the jsonl stream), and the run's ``metrics.csv`` and ``summary.json``.

``--max-minutes`` stops the run with SIGINT at that wall time (astro saves it cleanly): the top-1 of a
time slice of a longer recipe, stated as such.

    python benchmarks/time_to_accuracy.py --data .carry/cifar10-jpeg.zip --out $OUT/tta
    python benchmarks/time_to_accuracy.py --data .carry/cifar10-jpeg.zip --out $OUT/slice \\
        --recipe cifar10_cct_7_3x1 --max-minutes 8 -- data.source=imagefolder
    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-jpeg.zip --out /tmp/tta --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCHMARKS))

from gpu_check import extract_cifar  # noqa: E402

FULL_RECIPE_EPOCHS = 300 + 10  # cifar10_cct_7_3x1: 300 epochs + 10 of cooldown (timm's rule)
SMOKE_OVERRIDES = [
    "model.name=cct_2_3x2_32",
    "train.time=null",  # the fast recipe's budget: the smoke run's 2 epochs are fixed
    "train.epochs=2",
    "train.warmup_epochs=1",
    "train.cooldown_epochs=0",
    "train.batch_size=16",
    "train.max_steps_per_epoch=2",
    "data.num_workers=0",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="the CIFAR-10 JPEG zip, or its extracted folder"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="cifar10_cct_7_3x1_fast")
    parser.add_argument("--target", type=float, default=90.0, help="top-1 %% to time")
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop the run (SIGINT) at this wall time"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="extracted images, run and cache (default /tmp/astro-tta)"
    )
    parser.add_argument(
        "--keep-cache",
        action="store_true",
        help="reuse a tensor cache left by an earlier run (default: a fresh one, so its build is timed)",
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, a few real images, 2 tiny epochs")
    parser.add_argument(
        "--test-if-stopped",
        action="store_true",
        help="when --max-minutes stops the run, score its best checkpoint on the test split (astro eval)",
    )
    parser.add_argument("overrides", nargs="*", help="recipe overrides KEY=VALUE (after --)")
    return parser.parse_args(argv)


def work_dir(args: argparse.Namespace) -> Path:
    return args.workdir or Path(tempfile.gettempdir()) / "astro-tta"


def data_folder(args: argparse.Namespace) -> Path:
    if args.data.is_dir():
        return args.data
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file or folder (give the CIFAR-10 JPEG zip)")
    workdir = work_dir(args)
    name = "cifar10-jpeg-smoke" if args.smoke else "cifar10-jpeg"
    return extract_cifar(args.data, workdir / name, (10, 3) if args.smoke else None)


def run_training(
    cmd: list[str], log_path: Path, max_seconds: float | None, env: dict[str, str]
) -> dict[str, Any]:
    """Run ``astro train --jsonl``, timestamp its events on arrival, stop it at ``max_seconds``."""
    launched = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    events: list[dict[str, Any]] = []
    stopped = False
    with log_path.open("w") as log:
        for line in proc.stdout:
            now = time.perf_counter() - launched
            log.write(line)
            log.flush()
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append({**event, "at_s": now})
            if max_seconds and now > max_seconds and not stopped:
                proc.send_signal(signal.SIGINT)  # astro finishes the step, saves, and exits
                stopped = True
        code = proc.wait()
    return {
        "events": events,
        "exit_code": code,
        "stopped_at_limit": stopped,
        "wall_s": time.perf_counter() - launched,
    }


def images_per_epoch(start: dict[str, Any], run_dir: Path | None) -> int | None:
    """Training images per epoch of this run: steps per epoch (start event) x the run's batch size."""
    match = re.search(r"x (\d+) steps", str(start.get("schedule", "")))
    if not match or run_dir is None or not (run_dir / "recipe.yaml").is_file():
        return None
    import yaml

    return int(match.group(1)) * int(
        yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["batch_size"]
    )


def estimate_full_recipe(
    start: dict[str, Any], epochs: list[dict[str, Any]], startup_s: float, seen_per_epoch: int | None
) -> dict[str, Any]:
    """Wall time of cifar10_cct_7_3x1 (310 epochs) from this run's images/s and evaluation time."""
    match = re.search(r"(\d+) train / (\d+) val", str(start.get("data", "")))
    if not match or not epochs or not seen_per_epoch:
        return {}
    train_images = int(match.group(1))
    speed = statistics.median(e["img_per_s"] for e in epochs)
    epoch_train_s = train_images / speed
    # an epoch's "seconds" is its training plus its evaluation: the evaluation is the rest
    eval_s = statistics.median(max(0.0, e["seconds"] - seen_per_epoch / e["img_per_s"]) for e in epochs)
    total = startup_s + FULL_RECIPE_EPOCHS * (epoch_train_s + eval_s)
    return {
        "epochs": FULL_RECIPE_EPOCHS,
        "train_images_per_epoch": train_images,
        "img_per_s": speed,
        "eval_s_per_epoch": eval_s,
        "startup_s": startup_s,
        "estimated_s": total,
        "assumption": "the same images/s at the full recipe's batch of 128 as in this run (a smaller "
        "batch is usually slower per image on a GPU, so read this as a lower bound)",
    }


def plot_curve(path: Path, curve: list[dict[str, Any]], target: float, title: str) -> str | None:
    """``curve.png``; returns why not when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: no PNG (pip install matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["minutes"] for c in curve], [c["val_top1"] for c in curve], marker="o", label="top-1")
    ax.axhline(target, color="grey", linestyle="--", label=f"{target:g}%")
    ax.set(xlabel="minutes since `astro train` started", ylabel="top-1 %", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def score_test_at_stop(run_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """``astro eval`` of the stopped run's best checkpoint on the test split: the top-1 of a run cut
    short, labelled so (the run itself scores the test split only when it finishes)."""
    best = run_dir / "best.safetensors"
    if not best.is_file():
        return {"error": "no best.safetensors yet"}
    report = run_dir / "test_at_stop.json"
    cmd = [sys.executable, "-m", "astrocli", "eval", str(best), "data.split=test", "--json", str(report),
           "--batch-size", "1024"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not report.is_file():
        return {"error": (proc.stderr or proc.stdout).strip()[-300:]}
    data = json.loads(report.read_text())
    return {"test_top1": data.get("top1"), "command": shlex.join(["python", *cmd[1:]])}


def device_and_torch() -> tuple[str, str]:
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()})"
    return name, torch.__version__


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Time to accuracy: {r['recipe']}",
        "",
        f"Device: {r['device']}; torch {r['torch']}; {r['started']}.",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Wall time of the whole command: {r['wall_s'] / 60:.2f} min (exit code {r['exit_code']}"
        f"{', stopped at the time limit' if r['stopped_at_limit'] else ''}); best top-1 {r['best_top1']}; "
        f"first reached {r['target']:g}% at: "
        + (f"{r['minutes_to_target']:.2f} min" if r["minutes_to_target"] is not None else "not reached"),
        "",
    ]
    if r.get("test"):
        lines += [f"Test split, scored once at the end: {r['test']}", ""]
    if r.get("test_at_stop"):
        lines += [
            f"Stopped at the time limit; its best checkpoint on the test split: {r['test_at_stop']}",
            "",
        ]
    lines += ["| epoch | minutes | top-1 % | images/s |", "|---|---|---|---|"]
    lines += [
        f"| {c['epoch']} | {c['minutes']:.2f} | {c['val_top1']:.2f} | {c['img_per_s']:,.0f} |"
        for c in r["curve"]
    ]
    est = r.get("full_recipe_estimate")
    if est:
        lines += [
            "",
            f"Estimated wall time of the full cifar10_cct_7_3x1 recipe ({est['epochs']} epochs): "
            f"{est['estimated_s'] / 3600:.2f} h ({est['img_per_s']:,.0f} img/s, "
            f"{est['eval_s_per_epoch']:.1f} s of evaluation per epoch; assumes {est['assumption']}).",
        ]
    if r.get("plot_note"):
        lines += ["", r["plot_note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = data_folder(args)
    overrides = [*(SMOKE_OVERRIDES if args.smoke else []), *args.overrides]
    work_dir(args).mkdir(parents=True, exist_ok=True)
    if not args.keep_cache:  # the whole command is timed, the decoding of the JPEGs included
        overrides.insert(0, f"data.cache_dir={tempfile.mkdtemp(prefix='cache-', dir=work_dir(args))}")
    # checkpoints stay out of --out (the GPU machine sends back only small files)
    cmd = [
        sys.executable, "-m", "astrocli", "train", "--recipe", args.recipe, "--jsonl", f"data.root={folder}",
        f"output.dir={work_dir(args) / 'runs'}", *(["train.device=cpu"] if args.smoke else []), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    if args.smoke:
        env["OMP_NUM_THREADS"] = "1"  # a busy CPU: spinning OpenMP threads stall each other
    device, torch_version = device_and_torch()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    run = run_training(cmd, args.out / "train.log", max_seconds, env)

    events = run["events"]
    start = next((e for e in events if e["event"] == "start"), {})
    epochs = [e for e in events if e["event"] == "epoch"]
    summary = next((e for e in events if e["event"] == "summary"), {})
    first_step = next((e["at_s"] for e in events if e["event"] == "first_step"), None)
    curve = [
        {
            "epoch": e["epoch"],
            "minutes": e["at_s"] / 60,
            "val_top1": e["val_top1"],
            "img_per_s": e["img_per_s"],
        }
        for e in epochs
        if e.get("val_top1") is not None
    ]
    reached = next((c["minutes"] for c in curve if c["val_top1"] >= args.target), None)
    run_dir = Path(start["run dir"]) if start.get("run dir") else None
    for name in ("metrics.csv", "summary.json"):
        if run_dir is not None and (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, args.out / name)
    result = {
        "recipe": args.recipe,
        "device": device,
        "torch": torch_version,
        "started": started,
        "command": shlex.join(["python", "-m", "astrocli", *cmd[3:]]),
        "script_command": shlex.join(["python", "benchmarks/time_to_accuracy.py", *argv]),
        "exit_code": run["exit_code"],
        "stopped_at_limit": run["stopped_at_limit"],
        "wall_s": run["wall_s"],
        "first_step_s": first_step,
        "target": args.target,
        "minutes_to_target": reached,
        "best_top1": max((c["val_top1"] for c in curve), default=None),
        "final_top1": curve[-1]["val_top1"] if curve else None,
        # the protocol's test score, when the trainer reports one (keys starting with "test")
        "test": {k: v for k, v in summary.items() if k.startswith("test")},
        "curve": curve,
        "full_recipe_estimate": estimate_full_recipe(
            start, epochs, first_step or 0.0, images_per_epoch(start, run_dir)
        ),
        "run_dir": str(run_dir) if run_dir else None,
    }
    if args.test_if_stopped and run["stopped_at_limit"] and run_dir is not None:
        result["test_at_stop"] = score_test_at_stop(run_dir, env)
    result["plot_note"] = (
        plot_curve(args.out / "curve.png", curve, args.target, f"{args.recipe} on {device}")
        if curve
        else None
    )
    (args.out / "time_to_accuracy.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "time_to_accuracy.md").write_text(markdown(result))
    print(markdown(result))
    ok = run["exit_code"] == 0 or run["stopped_at_limit"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
