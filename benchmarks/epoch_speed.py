"""`astro train` against a bare PyTorch loop of the same model, batch, optimizer and images (issue 21).

Every arm is a fresh process, run in alternating rounds (astro, bare, [baseline astro], astro, ...) so
that load from other processes hits all of them alike; the figures are medians over rounds.

- ``astro``: ``python -m astrocli train --jsonl`` on a recipe for the data folder, with this checkout.
  From its events and ``metrics.csv``: training images/s per epoch, evaluation seconds per epoch,
  seconds from the process start to the first optimizer step, and from the last epoch's line to exit.
- ``bare``: the loop a user would write, in this file (:func:`bare_main`): the same model
  (``astrocli.models.create_model``), timm's AdamW with the same learning rate and weight decay, the
  same loss, the same augmented images and astro's levers (channels-last, bf16 autocast: what the
  astro run's summary.json says it used). Tensor pipeline: the batches come from astro's own
  ``build_train_batches`` (the augmentation cost is on both sides); loader pipeline: a plain
  DataLoader over ``torchvision.datasets.ImageFolder`` with timm's ``create_transform`` and persistent
  workers. Its evaluation is a bare ``no_grad`` forward pass over the validation images.
- ``baseline`` (``--baseline DIR``): ``astro train`` of another checkout (0.3.0 for the issue's 1.6x).

    python benchmarks/epoch_speed.py --data ../shared/data/cifar10-jpeg.zip --models resnet20 \\
        cct_2_3x2_32 --pipelines tensor loader --rounds 3 --epochs 2 [--baseline /tmp/astro-0.3.0]

``--data``: a folder with ``train/<class>/*`` and ``val/<class>/*``, or the CIFAR-10 zip (the first
``--train-images`` / ``--val-images`` of each class-balanced selection are extracted to /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extract_subset(archive: Path, n_train: int, n_val: int) -> Path:
    """A class-balanced ``train/`` (from the zip's train) and ``val/`` (from its test) under /tmp."""
    target = Path(tempfile.gettempdir()) / f"astro-speed-{archive.stem}-{n_train}-{n_val}"
    if (target / "val").is_dir():
        return target
    with zipfile.ZipFile(archive) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        classes = sorted({n.split("/")[1] for n in names})
        quota = {"train": n_train // len(classes), "test": n_val // len(classes)}
        taken: Counter[tuple[str, str]] = Counter()
        for name in names:
            split, cls, file = name.split("/")
            if taken[split, cls] >= quota[split]:
                continue
            taken[split, cls] += 1
            dest = target / ("train" if split == "train" else "val") / cls / file
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
    return target


def write_recipe(folder: Path, data: Path, model: str, pipeline: str, opts: argparse.Namespace) -> Path:
    """The recipe both arms read (astro resolves ``augment.preset: auto`` from it; so does bare)."""
    lines = [
        f"model: {{name: {model}}}",
        f"data: {{source: imagefolder, root: {data}, img_size: 32, pipeline: {pipeline}, "
        f"num_workers: {opts.workers}}}",
        f"train: {{epochs: {opts.epochs}, batch_size: {opts.batch_size}, device: cpu}}",
        f"output: {{dir: {folder / 'runs'}, name: {model}-{pipeline}, plots: true}}",
    ]
    path = folder / f"{model}-{pipeline}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_astro(repo: Path, recipe: Path, extra: list[str]) -> dict:
    """One ``astro train --jsonl`` process: per-epoch speed, eval seconds, start-up and ending."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "astrocli", "train", "--recipe", str(recipe), "--jsonl", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=repo,
    )
    first_step = last_epoch = None
    run_dir, epochs = None, []
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "first_step":
            first_step = event["time"]
        elif event.get("event") == "start":
            run_dir = event.get("run dir")
        elif event.get("event") == "epoch":
            last_epoch = time.time()
            epochs.append(event)
    if proc.wait() != 0:
        raise SystemExit(f"astro train failed in {repo} on {recipe}")
    end = time.time()
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return {
        "img_per_s": [e["img_per_s"] for e in epochs],
        "epoch_s": [e["seconds"] for e in epochs],
        "to_first_step_s": first_step - start if first_step else None,
        "after_last_epoch_s": end - last_epoch,
        "total_s": end - start,
        "top1": summary.get("best_top1"),
        "channels_last": summary.get("channels_last"),
        "autocast": summary.get("autocast"),  # None: full precision (and every version before 0.5.0)
    }


def run_bare(recipe: Path, channels_last: bool, bf16: bool) -> dict:
    cmd = [sys.executable, __file__, "--bare", str(recipe), *(["--channels-last"] if channels_last else [])]
    cmd += ["--bf16"] if bf16 else []
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode != 0:
        raise SystemExit(f"bare loop failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# The bare loop (run in its own process: ``epoch_speed.py --bare RECIPE``)
# ------------------------------------------------------------------------------------------------


def bare_sources(recipe, bundle, device):  # noqa: ANN001, ANN201 (torch is imported lazily here)
    """Training and validation batches: astro's tensor pipeline, or a plain DataLoader loop."""
    import torch
    from torchvision.datasets import ImageFolder

    from astrocli.data import build_eval_transform, build_train_transform
    from astrocli.data.pipeline import build_eval_batches, build_train_batches, choose_pipeline

    if choose_pipeline(recipe, bundle.train) == "tensor":
        train = build_train_batches(bundle, recipe, device)
        val = build_eval_batches(bundle.val, recipe, device, mean=bundle.mean, std=bundle.std)
        return train, val
    d, root = recipe.data, Path(recipe.data.root)
    train_set = ImageFolder(root / "train", build_train_transform(recipe, mean=bundle.mean, std=bundle.std))
    eval_tf = build_eval_transform(
        d.img_size, d.crop_pct, d.interpolation, bundle.mean, bundle.std, d.in_chans
    )
    workers = {"num_workers": d.num_workers, "persistent_workers": d.num_workers > 0}
    b = recipe.train.batch_size
    train = torch.utils.data.DataLoader(train_set, batch_size=b, shuffle=True, drop_last=True, **workers)
    val = torch.utils.data.DataLoader(ImageFolder(root / "val", eval_tf), batch_size=b, **workers)
    return train, val


def bare_main(recipe_path: str, channels_last: bool, bf16: bool) -> None:
    import torch
    from timm.optim import create_optimizer_v2

    from astrocli.data import build_datasets
    from astrocli.data.defaults import data_facts, resolve_defaults
    from astrocli.engine.build import build_train_loss
    from astrocli.models import create_model
    from astrocli.recipe import load_recipe

    torch.manual_seed(0)
    recipe = load_recipe(recipe_path)
    bundle = build_datasets(recipe.data)
    recipe, _ = resolve_defaults(recipe, data_facts(bundle, recipe))
    device = torch.device("cpu")
    train, val = bare_sources(recipe, bundle, device)
    model = create_model(recipe.model.name, num_classes=bundle.num_classes, img_size=recipe.data.img_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    t = recipe.train
    optimizer = create_optimizer_v2(model, opt="adamw", lr=t.lr, weight_decay=t.weight_decay)
    mixup = getattr(train, "mixup", None)
    loss_fn = build_train_loss(recipe, mixup is not None)
    result: dict[str, list[float]] = {"img_per_s": [], "eval_s": []}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # as astro's train.amp
    for epoch in range(t.epochs):
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        model.train()
        start, images = time.perf_counter(), 0
        for x, y in train:
            with autocast:
                loss = loss_fn(model(x.contiguous(memory_format=fmt)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(x)
        result["img_per_s"].append(images / (time.perf_counter() - start))
        model.eval()
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            for x, _ in val:
                model(x.contiguous(memory_format=fmt))
        result["eval_s"].append(time.perf_counter() - start)
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def med(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load_average() -> float:
    return os.getloadavg()[0]


def rounds(opts: argparse.Namespace, data: Path, work: Path) -> list[dict]:
    n_train = sum(1 for p in (data / "train").rglob("*") if p.is_file())
    images_per_epoch = n_train // opts.batch_size * opts.batch_size
    records = []
    for r in range(opts.rounds):
        for model in opts.models:
            for pipeline in opts.pipelines:
                recipe = write_recipe(work, data, model, pipeline, opts)
                arms = {"astro": lambda recipe=recipe: run_astro(REPO, recipe, opts.astro_args)}
                if opts.baseline:
                    arms["baseline"] = lambda recipe=recipe: run_astro(Path(opts.baseline), recipe, [])
                for arm, run in arms.items():
                    rec = run()
                    rec["eval_s"] = [
                        s - images_per_epoch / v
                        for s, v in zip(rec["epoch_s"], rec["img_per_s"], strict=True)
                    ]
                    records.append({"round": r, "model": model, "pipeline": pipeline, "arm": arm, **rec})
                    records[-1]["load"] = load_average()
                    print(json.dumps(records[-1]), flush=True)
                ours = records[-1 - (1 if opts.baseline else 0)]  # the bare loop takes astro's levers
                cl, bf16 = bool(ours.get("channels_last")), ours.get("autocast") == "bfloat16"
                records.append(
                    {
                        "round": r,
                        "model": model,
                        "pipeline": pipeline,
                        "arm": "bare",
                        **run_bare(recipe, cl, bf16),
                    }
                )
                records[-1]["load"] = load_average()
                print(json.dumps(records[-1]), flush=True)
    return records


def report(records: list[dict]) -> str:
    """Medians per model/pipeline/arm (of each run's median epoch), and astro/bare back to back."""
    lines = [
        "| model | pipeline | arm | train img/s | eval s/epoch | to first step s | after last epoch s "
        "| whole s | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["pipeline"]) for r in records})
    for model, pipeline in keys:
        for arm in ("astro", "bare", "baseline"):
            rs = [r for r in records if (r["model"], r["pipeline"], r["arm"]) == (model, pipeline, arm)]
            if not rs:
                continue
            cells = [
                med([med(r["img_per_s"]) for r in rs]),
                med([med(r["eval_s"]) for r in rs]),
                med([r.get("to_first_step_s") for r in rs]),
                med([r.get("after_last_epoch_s") for r in rs]),
                med([r.get("total_s") for r in rs]),
                med([r["load"] for r in rs]),
            ]
            text = " | ".join("-" if c is None else f"{c:.1f}" for c in cells)
            lines.append(f"| {model} | {pipeline} | {arm} | {text} |")
    return "\n".join(lines)


def paired_steps(opts: argparse.Namespace, data: Path) -> None:
    """Step-level pairs in one process, immune to the load swings of a shared machine: astro's
    ``train()`` runs with a step hook that, before each of astro's steps, runs one bare step (its
    own batch from its own source, forward, loss, backward, AdamW) and times it. Astro's step is the
    time between two hooks minus the bare step inside; the two steps of a pair ran back to back."""
    import torch

    for model in opts.models:
        for pipeline in opts.pipelines:
            with tempfile.TemporaryDirectory(prefix="astro-pairs-") as tmp:
                astro, bare = paired_run(write_recipe(Path(tmp), data, model, pipeline, opts))
            ratios = [a / b for a, b in zip(astro, bare, strict=True)]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            print(
                f"{model} {pipeline} ({torch.get_num_threads()} threads, load {load_average():.1f}): "
                f"{len(ratios)} step pairs, astro/bare step time median {statistics.median(ratios):.3f} "
                f"(quartiles {q1:.3f}-{q3:.3f}); astro {opts.batch_size / statistics.median(astro):.1f} "
                f"img/s, bare {opts.batch_size / statistics.median(bare):.1f} img/s (median steps)",
                flush=True,
            )


def paired_run(recipe_path: Path) -> tuple[list[float], list[float]]:
    """Astro's step seconds and the bare step seconds, pair by pair (the first pair is dropped)."""
    from astrocli.engine import train
    from astrocli.recipe import load_recipe

    bare: dict = {}
    stamps: list[tuple[int, float]] = []  # (epoch, time just before astro's step)
    inner: list[float] = []  # the bare step run just before it

    def hook(trainer, epoch: int, step: int) -> None:  # noqa: ANN001
        if not bare:  # the first hook: astro's recipe is resolved now; build the bare side from it
            bare.update(bare_parts(trainer.recipe, trainer.bundle, trainer.device))
        start = time.perf_counter()
        x, y = next(bare["batches"])
        with bare["autocast"]:
            loss = bare["loss"](bare["model"](x), y)
        bare["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        bare["optimizer"].step()
        inner.append(time.perf_counter() - start)
        stamps.append((epoch, time.perf_counter()))

    overrides = ["output.log=quiet", "output.plots=false", "train.calibrate=false"]
    train(load_recipe(recipe_path, overrides), step_hook=hook)
    # Astro's step i runs from stamp i to stamp i+1, less the bare step i+1 run in between; pairs
    # across an epoch's end (evaluation in between) and each run's very first step are left out.
    astro, paired = [], []
    for i in range(1, len(stamps) - 1):
        (epoch, t), (next_epoch, t_next) = stamps[i], stamps[i + 1]
        if epoch == next_epoch:
            astro.append(t_next - t - inner[i + 1])
            paired.append(inner[i])
    return astro, paired


def bare_parts(recipe, bundle, device) -> dict:  # noqa: ANN001
    """The bare side of :func:`paired_steps`: model, optimizer, loss and an endless batch iterator."""
    import torch
    from timm.optim import create_optimizer_v2

    from astrocli.engine.build import build_train_loss
    from astrocli.models import create_model

    train_batches, _ = bare_sources(recipe, bundle, device)
    fmt = torch.channels_last if recipe.train.channels_last is True else torch.contiguous_format
    model = create_model(recipe.model.name, num_classes=bundle.num_classes, img_size=recipe.data.img_size)
    model = model.to(device, memory_format=fmt).train()
    t = recipe.train
    optimizer = create_optimizer_v2(model, opt="adamw", lr=t.lr, weight_decay=t.weight_decay)

    def endless():  # noqa: ANN202
        epoch = 0
        while True:
            if hasattr(train_batches, "set_epoch"):
                train_batches.set_epoch(epoch)
            for x, y in train_batches:
                yield x.contiguous(memory_format=fmt), y
            epoch += 1

    loss = build_train_loss(recipe, getattr(train_batches, "mixup", None) is not None)
    bf16 = recipe.train.amp == "bf16"  # astro's resolved train.amp
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    return {"model": model, "optimizer": optimizer, "batches": endless(), "loss": loss, "autocast": autocast}


def ends(opts: argparse.Namespace) -> None:
    """Seconds from the process start to the first step and from the last epoch to exit, alternating
    this checkout and ``--baseline`` on one recipe (e.g. the quick start), medians of ``--rounds``."""
    arms = {"astro": REPO, **({"baseline": Path(opts.baseline)} if opts.baseline else {})}
    seen: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="astro-ends-") as tmp:
        for _ in range(opts.rounds):
            for arm, repo in arms.items():
                rec = run_astro(repo, Path(opts.ends), [f"output.dir={tmp}", *opts.astro_args])
                rec["load"] = load_average()
                seen[arm].append(rec)
                print(arm, json.dumps(rec), flush=True)
    for arm, recs in seen.items():
        first = [r["to_first_step_s"] for r in recs]
        after = [r["after_last_epoch_s"] for r in recs]
        print(
            f"{arm}: to first step median {med(first):.2f} s {[round(x, 2) for x in first]}, after the "
            f"last epoch median {med(after):.2f} s {[round(x, 2) for x in after]}, load "
            f"{[round(r['load'], 1) for r in recs]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare", metavar="RECIPE", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/cifar10-jpeg.zip")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=["resnet20", "cct_2_3x2_32"])
    parser.add_argument("--pipelines", nargs="+", default=["tensor", "loader"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers (loader pipeline)")
    parser.add_argument("--baseline", help="another checkout's root, run as a third arm (e.g. 0.3.0)")
    parser.add_argument("--astro-args", nargs="*", default=[], help="overrides for the astro arm")
    parser.add_argument("--out", type=Path, help="write every record as JSON here")
    parser.add_argument(
        "--paired", action="store_true", help="step pairs in one process (astro step, bare step, ...)"
    )
    parser.add_argument(
        "--ends", metavar="RECIPE", help="only start-up and ending: astro (and --baseline) on RECIPE"
    )
    opts = parser.parse_args()
    if opts.bare:
        bare_main(opts.bare, opts.channels_last, opts.bf16)
        return
    if opts.ends:
        ends(opts)
        return
    if opts.paired:
        data = (
            opts.data
            if opts.data.suffix != ".zip"
            else extract_subset(opts.data, opts.train_images, opts.val_images)
        )
        paired_steps(opts, data)
        return
    data = (
        extract_subset(opts.data, opts.train_images, opts.val_images)
        if opts.data.suffix == ".zip"
        else opts.data
    )
    with tempfile.TemporaryDirectory(prefix="astro-speed-") as tmp:
        records = rounds(opts, data, Path(tmp))
    if opts.out:
        opts.out.write_text(json.dumps(records, indent=1))
    print(report(records))


if __name__ == "__main__":
    main()
