"""astro against its peers on a CIFAR-10 subset at equal wall time (issue 21): Ultralytics
``yolo classify`` (yolo11n-cls from scratch) and a bare timm training loop.

Each round runs, as fresh processes, one after the other (so that load from other processes hits
them alike; the figures are medians over rounds):

1. ``astro``: ``astro train`` of ``--model`` for ``--epochs`` epochs on the subset; its wall time,
   from the process start to its exit, is the round's budget ``T``.
2. ``yolo``: Ultralytics ``YOLO("yolo11n-cls.yaml").train(...)``: from scratch, its defaults except
   ``imgsz=32`` (the images' size), ``device=cpu``, ``plots=False`` and ``time=T`` (Ultralytics' own
   time budget: it fits its epochs and schedule into it); ``YOLO_OFFLINE=1``, so it fetches nothing.
3. ``timm``: the loop a user would write with timm (:func:`timm_main`): the same model through
   ``timm.create_model`` (astro registers its zoo with timm), torchvision's pad-and-crop (4 px) and
   flips (what astro's defaults choose for 32-px colour images), ImageNet mean/std, a DataLoader
   with persistent workers, timm's AdamW at astro's default rate (2e-3, weight decay 0.05) and
   timm's cosine schedule per step; it measures its first epoch and runs as many as fit into ``T``.

Reported per arm: top-1 of the last epoch's weights on the same held-out images (the zip's test
images: no arm selects a checkpoint on them), seconds per epoch, epochs run and wall seconds.
The peers are optional installs, never astro dependencies: Ultralytics runs from another
interpreter (``--peers-python``, a virtualenv whose site-packages has a ``.pth`` line pointing at
this one's, so that it uses the same torch); without it the ``yolo`` arm is skipped and says why.

    python benchmarks/peers.py --data ../shared/data/cifar10-jpeg.zip --rounds 3 --epochs 2 \\
        --peers-python /path/to/venv-peers/bin/python --out peers.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()  # the timm loop's budget counts from its process start
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from epoch_speed import extract_subset  # noqa: E402

YOLO_SCRIPT = """
import json, sys
from ultralytics import YOLO
data, project, hours, workers = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
model = YOLO("yolo11n-cls.yaml")
model.train(data=data, imgsz=32, device="cpu", plots=False, time=hours, workers=workers,
            project=project, name="run", exist_ok=True, pretrained=False, verbose=False)
"""


def run_astro(data: Path, work: Path, opts: argparse.Namespace) -> dict:
    recipe = work / "astro.yaml"
    recipe.write_text(f"model: {{name: {opts.model}}}\n")  # the rest: astro's defaults and these
    overrides = [
        "data.source=imagefolder",
        f"data.root={data}",
        "data.img_size=32",
        f"data.num_workers={opts.workers}",
        f"train.epochs={opts.epochs}",
        "train.device=cpu",
        f"output.dir={work}",
        "output.name=astro",
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "astrocli", "train", "--recipe", str(recipe), "--quiet", *overrides],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"astro train failed: {proc.stderr[-2000:]}")
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return {
        "top1": summary["final_top1"],
        "epochs": len(rows),
        "s_per_epoch": statistics.median(float(r["seconds"]) for r in rows),
        "wall_s": wall,
    }


def run_yolo(data: Path, work: Path, budget_s: float, opts: argparse.Namespace) -> dict:
    if not opts.peers_python:
        return {"skipped": "no --peers-python (an interpreter with ultralytics installed)"}
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False"}
    args = [str(data), str(work / "yolo"), str(budget_s / 3600), str(opts.workers)]
    start = time.perf_counter()
    # In the round's temporary folder: Ultralytics' MLflow callback (MLflow is installed with astro's
    # extras) writes mlflow.db and mlruns/ into the working directory.
    proc = subprocess.run(
        [opts.peers_python, "-c", YOLO_SCRIPT, *args], capture_output=True, text=True, env=env, cwd=work
    )
    wall = time.perf_counter() - start
    results = work / "yolo" / "run" / "results.csv"
    if proc.returncode != 0 or not results.is_file():
        return {"skipped": f"yolo failed: {(proc.stderr or proc.stdout)[-1500:]}"}
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(results.open())]
    times = [0.0] + [float(r["time"]) for r in rows]
    return {
        "top1": 100 * float(rows[-1]["metrics/accuracy_top1"]),
        "epochs": len(rows),
        "s_per_epoch": statistics.median(b - a for a, b in zip(times, times[1:], strict=False)),
        "wall_s": wall,
    }


def run_timm(data: Path, budget_s: float, opts: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--timm-loop", str(data), "--budget-s", str(budget_s)]
    cmd += ["--model", opts.model, "--workers", str(opts.workers)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"timm loop failed: {proc.stderr[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------------
# The bare timm loop (its own process: ``peers.py --timm-loop DATA --budget-s T``)
# ------------------------------------------------------------------------------------------------


def timm_loaders(data: Path, workers: int):  # noqa: ANN201 (torch is imported here only)
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision import datasets, transforms

    normalise = [transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    train_set = datasets.ImageFolder(data / "train", transforms.Compose(augment + normalise))
    val_set = datasets.ImageFolder(data / "val", transforms.Compose(normalise))
    keep = {"num_workers": workers, "persistent_workers": workers > 0}
    train = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True, drop_last=True, **keep)
    return train, torch.utils.data.DataLoader(val_set, batch_size=256, **keep)


def timm_main(data: Path, budget_s: float, model_name: str, workers: int) -> None:
    import timm
    import torch
    import torch.nn.functional as F
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    import astrocli.models  # noqa: F401 (registers astro's zoo with timm)

    torch.manual_seed(0)
    train, val = timm_loaders(data, workers)
    model = timm.create_model(model_name, num_classes=10)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=2e-3, weight_decay=0.05)
    epochs, epoch, scheduler, seconds = 1, 0, None, []
    while epoch < epochs:
        start = time.perf_counter()
        model.train()
        for step, (x, y) in enumerate(train):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step_update(epoch * len(train) + step + 1)
        seconds.append(time.perf_counter() - start)
        epoch += 1
        if scheduler is None:  # after the first epoch: as many epochs as fit into the budget
            left = budget_s - (time.perf_counter() - STARTED)
            epochs = max(1, 1 + int(left // seconds[0]))
            scheduler = CosineLRScheduler(optimizer, t_initial=epochs * len(train), lr_min=1e-5)
            scheduler.step_update(len(train))
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for x, y in val:
            hits += int((model(x).argmax(1) == y).sum())
            total += len(y)
    print(
        json.dumps({"top1": 100 * hits / total, "epochs": epochs, "s_per_epoch": statistics.median(seconds)})
    )


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/cifar10-jpeg.zip")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=2, help="astro's epochs; its wall time is the budget")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--peers-python", help="an interpreter with ultralytics (for the yolo arm)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--timm-loop", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.timm_loop:
        timm_main(opts.timm_loop, opts.budget_s, opts.model, opts.workers)
        return
    data = opts.data
    if data.suffix == ".zip":
        data = extract_subset(data, opts.train_images, opts.val_images)
    records = []
    for r in range(opts.rounds):
        with tempfile.TemporaryDirectory(prefix="astro-peers-") as tmp:
            astro = run_astro(data, Path(tmp), opts)
            budget = astro["wall_s"]
            arms = {"astro": astro, "yolo": run_yolo(data, Path(tmp), budget, opts)}
            arms["timm"] = run_timm(data, budget, opts)
        for arm, rec in arms.items():
            records.append({"round": r, "arm": arm, "load": os.getloadavg()[0], **rec})
            print(json.dumps(records[-1]), flush=True)
    if opts.out:
        opts.out.write_text(json.dumps(records, indent=1))
    print(report(records))


def report(records: list[dict]) -> str:
    lines = [
        "| arm | top-1 % (last weights) | s / epoch | epochs | wall s | load |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ("astro", "yolo", "timm"):
        rs = [r for r in records if r["arm"] == arm and "top1" in r]
        if not rs:
            skipped = next((r["skipped"] for r in records if r["arm"] == arm and "skipped" in r), "")
            lines.append(f"| {arm} | skipped: {skipped[:120]} | | | | |")
            continue
        cells = [
            statistics.median(r[k] for r in rs) for k in ("top1", "s_per_epoch", "epochs", "wall_s", "load")
        ]
        lines.append(
            f"| {arm} | {cells[0]:.1f} | {cells[1]:.1f} | {cells[2]:g} | {cells[3]:.0f} | {cells[4]:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
