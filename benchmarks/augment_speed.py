"""Augmented CIFAR-10 batches per second: batched tensor pipeline vs timm's per-sample pipeline.

Both pipelines start from the same real CIFAR-10 images, already decoded (PIL images for timm, the
uint8 tensor cache for the tensor pipeline), so the main figure measures augmentation alone. A second
per-sample row decodes each JPEG first (from bytes in memory), as the loader pipeline does every
epoch while the tensor pipeline decodes once: the end-to-end comparison. Both apply the same
recipe: random-resized-crop (bicubic), horizontal flip, RandAugment ``rand-m9-mstd0.5-inc1``,
normalise, random erasing (p=0.25, pixel mode), then timm's Mixup/CutMix on the batch. Rounds
alternate between the two so that other load on the machine hits both alike; the table reports
the median of the rounds. Building the tensor source calls ``keep_freed_batch_buffers`` (glibc
``mallopt``: keep freed batch-sized buffers instead of unmapping them), a process-wide setting, so
both sides run under it.

    python benchmarks/augment_speed.py                 # CPU, 1 thread, 2048 images
    python benchmarks/augment_speed.py --threads 2 --out augment_speed.json
    python benchmarks/augment_speed.py --device cuda   # the tensor pipeline on a GPU
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timm.data import Mixup, create_transform  # noqa: E402

from astrocli.data.tensor_cache import TensorCache  # noqa: E402
from astrocli.data.tensor_pipeline import TensorTrainBatches, keep_freed_batch_buffers  # noqa: E402
from astrocli.recipe import load_recipe  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
DEFAULT_ZIP = REPO.parent / "shared" / "data" / "cifar10-jpeg.zip"


def load_cifar(source: Path, count: int) -> tuple[list[bytes], list[int]]:
    """JPEG bytes of the first ``count`` training images (round-robin over classes), and labels."""
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as archive:
            names = sorted(n for n in archive.namelist() if n.startswith("train/") and n.endswith(".jpg"))
            chosen = _round_robin(names, count)
            encoded = [archive.read(n) for n in chosen]
    else:
        chosen = _round_robin(sorted(str(p) for p in (source / "train").glob("*/*.jpg")), count)
        encoded = [Path(p).read_bytes() for p in chosen]
    classes = sorted({Path(n).parent.name for n in chosen})
    return encoded, [classes.index(Path(n).parent.name) for n in chosen]


def decode(encoded: bytes) -> Image.Image:
    return Image.open(io.BytesIO(encoded)).convert("RGB")


def _round_robin(names: list[str], count: int) -> list[str]:
    by_class: dict[str, list[str]] = {}
    for name in names:
        by_class.setdefault(Path(name).parent.name, []).append(name)
    columns = list(by_class.values())
    out = [col[i] for i in range(max(map(len, columns))) for col in columns if i < len(col)]
    return out[:count]


def make_recipe(args: argparse.Namespace):
    return load_recipe(
        None,
        [
            "data.img_size=32",
            "data.interpolation=bicubic",
            f"train.batch_size={args.batch_size}",
            f"augment.auto_augment={args.auto_augment}",
            "augment.hflip=0.5",
            f"augment.re_prob={args.re_prob}",
            "augment.re_mode=pixel",
            f"augment.mixup={args.mixup}",
            f"augment.cutmix={args.cutmix}",
        ],
    )


def per_sample_epoch(images, labels, transform, mixup, batch_size: int) -> int:
    """timm's way: transform each PIL image, collate, mix the batch. Returns images produced.

    ``images`` may be JPEG bytes: then each is decoded first, as the loader pipeline does every epoch.
    """
    produced = 0
    for start in range(0, len(images) - batch_size + 1, batch_size):
        chunk = images[start : start + batch_size]
        if isinstance(chunk[0], bytes):
            chunk = [decode(item) for item in chunk]
        batch = torch.stack([transform(img) for img in chunk])
        targets = torch.tensor(labels[start : start + batch_size])
        if mixup is not None:
            batch, targets = mixup(batch, targets)
        produced += len(batch)
    return produced


def tensor_epoch(source: TensorTrainBatches, epoch: int) -> int:
    source.set_epoch(epoch)
    produced = 0
    last = None
    for images, _ in source:
        produced += len(images)
        last = images
    if last is not None and last.device.type == "cuda":
        torch.cuda.synchronize()
    return produced


def timed(fn) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process).

    On a shared machine the CPU-second figure is the robust one: other processes stretch wall
    time but not this process's CPU time (with one thread it equals a dedicated core's speed)."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = fn()
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_ZIP, help="cifar10-jpeg.zip or an image folder root"
    )
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the per-sample side uses one core)"
    )
    parser.add_argument("--device", default="cpu", help="device of the tensor pipeline")
    parser.add_argument("--auto-augment", default="rand-m9-mstd0.5-inc1")
    parser.add_argument("--re-prob", type=float, default=0.25)
    parser.add_argument("--mixup", type=float, default=0.8)
    parser.add_argument("--cutmix", type=float, default=1.0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="re-run under glibc malloc env settings (the tensor pipeline now sets the same with mallopt)",
    )
    args = parser.parse_args()
    if args.tune_malloc and MALLOC_ENV[0] not in os.environ:
        # glibc returns every freed block over 128 KiB to the OS and faults it back in on the next
        # batch; on CPU that costs the batched side more than the whole augmentation. These are
        # glibc's documented tunables (PyTorch's CPU guide suggests jemalloc/tcmalloc for the same).
        env = dict(os.environ, **dict(zip(MALLOC_ENV, ("268435456", "1073741824"), strict=True)))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads)

    encoded, labels = load_cifar(args.data, args.images)
    images = [decode(item) for item in encoded]
    recipe = make_recipe(args)
    aug = recipe.augment
    transform = create_transform(
        32,
        is_training=True,
        scale=tuple(aug.scale),
        ratio=tuple(aug.ratio),
        hflip=aug.hflip,
        auto_augment=aug.auto_augment,
        interpolation="bicubic",
        re_prob=aug.re_prob,
        re_mode=aug.re_mode,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    mixup = (
        Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, mode="batch", num_classes=10)
        if aug.mixup > 0 or aug.cutmix > 0
        else None
    )
    pixels = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images])
    cache = TensorCache(pixels, torch.tensor(labels))
    source = TensorTrainBatches(cache, recipe, args.device, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)

    tensor_epoch(source, 0)  # warm-up (allocations, kernels)
    per_sample_epoch(images[: args.batch_size], labels, transform, mixup, args.batch_size)
    per_sample, from_jpeg, batched = [], [], []
    for round_index in range(args.rounds):
        per_sample.append(timed(lambda: per_sample_epoch(images, labels, transform, mixup, args.batch_size)))
        from_jpeg.append(timed(lambda: per_sample_epoch(encoded, labels, transform, mixup, args.batch_size)))
        batched.append(timed(lambda i=round_index: tensor_epoch(source, i + 1)))
        print(
            f"round {round_index + 1}: per-sample {per_sample[-1][0]:7.0f} img/s ({per_sample[-1][1]:7.0f} "
            f"per CPU-s), tensor {batched[-1][0]:7.0f} img/s ({batched[-1][1]:7.0f} per CPU-s), "
            f"per-sample from JPEG {from_jpeg[-1][0]:7.0f} img/s"
        )
    wall = [statistics.median(r[0] for r in runs) for runs in (per_sample, batched, from_jpeg)]
    cpu = [statistics.median(r[1] for r in runs) for runs in (per_sample, batched, from_jpeg)]

    result = {
        "benchmark": "augment_speed",
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "images": len(images),
        "batch_size": args.batch_size,
        "augmentations": (
            f"rrc(scale={aug.scale}) hflip={aug.hflip} {aug.auto_augment} re_prob={aug.re_prob} "
            f"mixup={aug.mixup} cutmix={aug.cutmix}"
        ),
        "per_sample_img_per_s": wall[0],
        "tensor_img_per_s": wall[1],
        "speedup": wall[1] / wall[0],
        # per-round ratios: each pair ran back to back, so they share the machine's load of the moment
        "speedup_per_round": [b[0] / p[0] for p, b in zip(per_sample, batched, strict=True)],
        "per_sample_img_per_cpu_s": cpu[0],
        "tensor_img_per_cpu_s": cpu[1],
        "speedup_cpu_time": cpu[1] / cpu[0],
        "per_sample_from_jpeg_img_per_s": wall[2],
        "per_sample_from_jpeg_img_per_cpu_s": cpu[2],
        "speedup_vs_from_jpeg": wall[1] / wall[2],
        "speedup_vs_from_jpeg_cpu_time": cpu[1] / cpu[2],
        "load_average": os.getloadavg()[0],
        "rounds": {"per_sample": per_sample, "per_sample_from_jpeg": from_jpeg, "tensor": batched},
        "malloc_env": {k: os.environ[k] for k in MALLOC_ENV if k in os.environ},
        "mallopt_keep_freed_buffers": keep_freed_batch_buffers(),
        "command": " ".join(["python", *sys.argv]),
    }
    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    malloc = " (malloc tuned)" if result["malloc_env"] else ""
    table = Table(
        title=f"augmented CIFAR-10 batches ({result['device']}, torch {result['torch']}, "
        f"{result['threads']} thread(s), batch {result['batch_size']}){malloc}"
    )
    table.add_column("pipeline")
    table.add_column("images/s (median)", justify="right")
    table.add_column("images per CPU-second", justify="right")
    table.add_row(
        "timm per-sample (PIL) + Mixup",
        f"{result['per_sample_img_per_s']:,.0f}",
        f"{result['per_sample_img_per_cpu_s']:,.0f}",
    )
    table.add_row(
        "astro tensor pipeline (batched)",
        f"{result['tensor_img_per_s']:,.0f}",
        f"{result['tensor_img_per_cpu_s']:,.0f}",
    )
    table.add_row("speed-up", f"{result['speedup']:.1f}x", f"{result['speedup_cpu_time']:.1f}x")
    table.add_row(
        "timm per-sample, decoding each JPEG (the loader, per epoch)",
        f"{result['per_sample_from_jpeg_img_per_s']:,.0f}",
        f"{result['per_sample_from_jpeg_img_per_cpu_s']:,.0f}",
    )
    table.add_row(
        "speed-up over the loader path",
        f"{result['speedup_vs_from_jpeg']:.1f}x",
        f"{result['speedup_vs_from_jpeg_cpu_time']:.1f}x",
    )
    Console().print(table)


if __name__ == "__main__":
    main()
