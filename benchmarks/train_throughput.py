"""Training throughput: the real data path against synthetic tensors on the device, and model FLOP use.

Runs the same training step (forward, loss, backward, fused AdamW) two ways, in alternating rounds:

- ``synthetic``: one batch of random normalised images and soft targets already on the device,
  reused every step: the upper bound of the step.
- ``tensor pipeline``: real images from an image folder, decoded once into the uint8 cache on the
  device, augmented batch-wide there (random-resized-crop, flip, RandAugment, erasing, mixup/cutmix).

and reports images/s for both, their ratio, and model FLOP utilisation (MFU): training FLOPs per image
(3x the forward FLOPs counted by ``torch.utils.flop_counter``) times images/s, over the device's
matmul rate measured here (bf16 on a GPU, float32 on a CPU). The step uses bf16 autocast (GPU),
optional channels-last, fused AdamW (GPU) and optional ``torch.compile``; if compiling fails the
benchmark says why and runs eagerly. Losses are accumulated on the device: no host sync inside the
timed loop.

    python benchmarks/train_throughput.py --model cct_7_3x1_32 --img-size 32 --batch-size 512 \\
        --data /path/to/cifar10 --device cuda --compile --out results.json
    python benchmarks/train_throughput.py --model cct_7_3x1_32 --batch-size 32 --steps 5  # CPU smoke

``--data`` is an image folder root with ``train/<class>/*.jpg`` (or ``<class>/*.jpg``) or the
CIFAR-10 zip (the first ``--max-images`` training images are extracted next to it on first use).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astrocli.data.base import ImageFileDataset  # noqa: E402
from astrocli.data.tensor_cache import build_tensor_cache  # noqa: E402
from astrocli.data.tensor_pipeline import TensorTrainBatches  # noqa: E402
from astrocli.recipe import load_recipe  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def folder_dataset(data: Path, max_images: int | None) -> ImageFileDataset:
    """The training images of an image folder (``train/`` when present), optionally the first N."""
    if data.suffix == ".zip":
        data = extract_zip(data, max_images)
    root = data / "train" if (data / "train").is_dir() else data
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"{root}: no class folders (expected {root}/<class>/<image>)")
    samples = [
        (str(f), i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir()) if f.is_file()
    ]
    if max_images:
        samples = samples[:: max(1, len(samples) // max_images)][:max_images]  # spread over the classes
    return ImageFileDataset(samples)


def extract_zip(archive_path: Path, max_images: int | None) -> Path:
    target = Path("/tmp") / f"astro-bench-{archive_path.stem}-{max_images or 'all'}"
    if not (target / "train").is_dir():
        with zipfile.ZipFile(archive_path) as archive:
            names = [n for n in archive.namelist() if n.startswith("train/") and n.endswith(".jpg")]
            if max_images:
                names = sorted(names)[:: max(1, len(names) // max_images)][:max_images]
            archive.extractall(target, names)
    return target


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    from astrocli.models import create_model

    model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def make_step(model, optimizer, device: torch.device, amp: bool):
    """One training step; returns the loss as a device tensor (no host sync)."""

    def step(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(images)
        loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def try_compile(
    model: torch.nn.Module, step_check, backend: str = "inductor", mode: str | None = None
) -> tuple[torch.nn.Module, str]:
    """``torch.compile`` the model, proven by one real step; on failure say why and stay eager.

    ``backend="eager"`` runs dynamo's graph capture without code generation (CPU smoke runs);
    ``mode`` (inductor's: ``reduce-overhead`` for CUDA graphs, ``max-autotune``...) only with inductor.
    """
    try:
        kwargs = {"mode": mode} if mode and backend == "inductor" else {}
        compiled = torch.compile(model, backend=backend, **kwargs)
        step_check(compiled)
        return compiled, "compiled"
    except Exception as exc:  # inductor raises many kinds (missing compiler, unsupported op, ...)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        print(f"torch.compile failed ({type(exc).__name__}: {reason}); running eagerly")
        return model, f"eager (compile failed: {type(exc).__name__})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, iterator, steps: int, device: torch.device, total: torch.Tensor) -> float:
    """Images per second over ``steps`` steps; losses are summed into ``total`` on the device."""
    seen = 0
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        images, targets = next(iterator)
        total += step(images, targets)
        seen += len(images)
    sync(device)
    return seen / (time.perf_counter() - start)


def interleaved_rounds(
    step, sources: dict, steps: int, warmup: int, rounds: int, device
) -> dict[str, list[float]]:
    """Alternate the data paths round by round (load from other processes hits both alike)."""
    total = torch.zeros((), device=device)
    iterators = {name: iter(make()) for name, make in sources.items()}
    for iterator in iterators.values():
        timed_steps(step, iterator, warmup, device, total)
    speeds: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, iterator in iterators.items():
            speeds[name].append(timed_steps(step, iterator, steps, device, total))
    if not math.isfinite(total.item()):
        raise RuntimeError("the loss became non-finite: the benchmark's step is broken")
    return speeds


def endless(source):
    """Batches from a batch source across epochs, for as many steps as asked."""
    epoch = 0
    while True:
        source.set_epoch(epoch)
        yield from source
        epoch += 1


# ------------------------------------------------------------------------------------------------
# FLOPs and the matmul rate
# ------------------------------------------------------------------------------------------------


def forward_flops_per_image(model: torch.nn.Module, img_size: int) -> int:
    from astrocli.models.cost import count_flops

    return count_flops(model, img_size)


def matmul_rate(device: torch.device) -> tuple[float, str]:
    """Measured dense matmul FLOP/s: bf16 8192^3 on a GPU, float32 1024^3 on a CPU."""
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = 1024, torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start), str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cct_7_3x1_32")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-jpeg.zip")
    parser.add_argument("--max-images", type=int, default=None, help="use only N training images")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians reported)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--amp", choices=["bf16", "none"], default=None, help="default: bf16 on a GPU")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--auto-augment", default="rand-m9-mstd0.5-inc1")
    parser.add_argument("--mixup", type=float, default=0.8)
    parser.add_argument("--cutmix", type=float, default=1.0)
    parser.add_argument("--re-prob", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--recipe",
        default=None,
        help="take the augmentation from this recipe (e.g. cifar10_cct_7_3x1) instead of the options above",
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (inductor only)")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def bench_recipe(args: argparse.Namespace):
    """The benchmark's recipe: ``--recipe``'s augmentation, or the augmentation options given."""
    overrides = [
        f"data.img_size={args.img_size}",
        "data.interpolation=bicubic",
        f"data.cache_dir={args.cache_dir}" if args.cache_dir else "data.cache_dir=null",
        f"data.root={args.data.parent if args.data.suffix == '.zip' else args.data}",
        f"train.batch_size={args.batch_size}",
        f"train.channels_last={str(args.channels_last).lower()}",
    ]
    if args.recipe is None:
        overrides += [
            f"augment.auto_augment={args.auto_augment}" if args.auto_augment else "augment.auto_augment=null",
            f"augment.re_prob={args.re_prob}",
            f"augment.mixup={args.mixup}",
            f"augment.cutmix={args.cutmix}",
            "augment.label_smoothing=0.1",
        ]
    recipe = load_recipe(args.recipe, overrides)
    if args.data.suffix == ".zip":
        recipe.data.cache_dir = str(
            args.cache_dir or extract_zip(args.data, args.max_images) / ".astro-cache"
        )
    return recipe


def real_batches(args: argparse.Namespace, device: torch.device):
    """(tensor-pipeline batch source on ``device``, images in its cache, seconds to build/load the cache)."""
    recipe = bench_recipe(args)
    dataset = folder_dataset(args.data, args.max_images)
    start = time.perf_counter()
    cache = build_tensor_cache(dataset, recipe.data, "train")
    cache_seconds = time.perf_counter() - start
    source = TensorTrainBatches(
        cache, recipe, device, num_classes=args.num_classes, mean=CIFAR_MEAN, std=CIFAR_STD
    )
    return source, len(cache), cache_seconds


def setup_device(args: argparse.Namespace) -> tuple[torch.device, bool]:
    """The device and whether to autocast to bf16; TF32 on for CUDA; ``--threads`` applied."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = (args.amp or ("bf16" if device.type == "cuda" else "none")) == "bf16"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, amp


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"


def measure(args: argparse.Namespace, peak: tuple[float, str] | None = None) -> dict:
    """Run the benchmark described by ``args``; returns the result record.

    ``peak``: (matmul FLOP/s, dtype) already measured in this process (default: measure it here).
    """
    device, amp = setup_device(args)
    source, images_in_cache, cache_seconds = real_batches(args, device)

    model = build_model(args, device)
    fwd_flops = forward_flops_per_image(model, args.img_size)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05, fused=fused)
    synthetic_images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    if args.channels_last:
        synthetic_images = synthetic_images.contiguous(memory_format=torch.channels_last)
    synthetic_targets = torch.softmax(torch.randn(args.batch_size, args.num_classes, device=device), dim=-1)

    mode = "eager"
    if args.compile:
        model, mode = try_compile(
            model,
            lambda m: make_step(m, optimizer, device, amp)(synthetic_images, synthetic_targets),
            args.compile_backend,
            args.compile_mode,
        )
    step = make_step(model, optimizer, device, amp)

    def synthetic_batches():
        while True:
            yield synthetic_images, synthetic_targets

    speeds = interleaved_rounds(
        step,
        {"synthetic": synthetic_batches, "real": lambda: endless(source)},
        args.steps,
        args.warmup,
        args.rounds,
        device,
    )
    synthetic, real = statistics.median(speeds["synthetic"]), statistics.median(speeds["real"])
    peak, peak_dtype = peak or matmul_rate(device)
    train_flops = 3 * fwd_flops
    return {
        "benchmark": "train_throughput",
        "model": args.model,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "amp": "bf16" if amp else "none",
        "channels_last": args.channels_last,
        "fused_adamw": fused,
        "mode": mode,
        "augmentation": args.recipe or "options",
        "images_in_cache": images_in_cache,
        "cache_build_s": cache_seconds,
        "synthetic_img_per_s": synthetic,
        "tensor_pipeline_img_per_s": real,
        "real_over_synthetic": real / synthetic,
        "rounds": speeds,
        "forward_gflop_per_img": fwd_flops / 1e9,
        "train_gflop_per_img": train_flops / 1e9,
        "matmul_tflop_per_s": peak / 1e12,
        "matmul_dtype": peak_dtype,
        "mfu_synthetic": train_flops * synthetic / peak,
        "mfu_tensor_pipeline": train_flops * real / peak,
        "command": " ".join(["python", *sys.argv]),
    }


def main() -> None:
    args = parse_args()
    result = measure(args)
    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


def print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{r['model']} @ {r['img_size']} px, batch {r['batch_size']}, {r['device']}, torch {r['torch']}, "
        f"amp {r['amp']}, {r['mode']}"
    )
    table = Table(title=title)
    for column in ("data path", "images/s", "vs synthetic", "MFU"):
        table.add_column(column, justify="left" if column == "data path" else "right")
    table.add_row(
        "synthetic (on device)", f"{r['synthetic_img_per_s']:,.0f}", "1.00", f"{r['mfu_synthetic']:.1%}"
    )
    table.add_row(
        "tensor pipeline (real)",
        f"{r['tensor_pipeline_img_per_s']:,.0f}",
        f"{r['real_over_synthetic']:.2f}",
        f"{r['mfu_tensor_pipeline']:.1%}",
    )
    Console().print(table)
    print(
        f"train {r['train_gflop_per_img']:.2f} GFLOP/img (3x forward); {r['matmul_dtype']} matmul "
        f"{r['matmul_tflop_per_s']:.2f} TFLOP/s measured; cache of {r['images_in_cache']} images "
        f"built/loaded "
        f"in {r['cache_build_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
