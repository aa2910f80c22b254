"""Training-step speed of astro's models against reference implementations (a benchmark, not a test).

Pairs, built with the same architecture, batch and input size, on the same machine:

* ``cct_7_3x1_32`` (astro) vs ``vit_pytorch.cct.CCT`` (vit-pytorch, by the CCT authors' reference
  code): 7 layers, 4 heads, MLP ratio 2, dim 256, one 3x3 conv tokenizer, learnable embedding.
* ``astroformer_0`` (astro) vs timm's MaxxViT configured C-C-C-T: timm's ``coatnet_0`` config
  (widths 96/192/384/768, depths 2/3/5/2, stem 64, tanh pre-logits head of width 768) with the
  block layout changed from C-C-T-T to Astroformer's C-C-C-T.

A training step is forward, cross-entropy, backward and an AdamW step. The two models of a pair
are timed in alternating rounds (ours, reference, ours, ...) so that load from other processes on
a shared machine hits both alike; each round times ``--steps`` steps after warm-up, and the
reported figure is the median over rounds. ratio = ours img/s / reference img/s (>= 1: ours is
not slower). On CPU it also reports the CPU-time ratio (reference CPU seconds / ours), which other
processes on a shared machine disturb much less than wall time; use ``--threads 1`` for it.

    python benchmarks/reference_speed.py                      # CPU (and CUDA too when present)
    python benchmarks/reference_speed.py --device cpu --batch-size 32 --json-out speed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from astrocli.models import count_params
from astrocli.models.cost import time_steps, training_step_fn


@dataclass
class Pair:
    """Two implementations of the same architecture, built for one input size."""

    name: str
    ours: Callable[[], nn.Module]
    reference_name: str
    reference: Callable[[], nn.Module]
    img_size: int


def reference_cct_7_3x1(img_size: int, num_classes: int) -> nn.Module:
    """vit-pytorch's CCT-7/3x1 (kernel 3, stride 1, padding 1, one conv layer, learnable embedding)."""
    from vit_pytorch.cct import cct_7

    return cct_7(
        img_size=img_size,
        num_classes=num_classes,
        n_conv_layers=1,
        kernel_size=3,
        positional_embedding="learnable",
    )


def reference_coatnet_ccct(img_size: int, num_classes: int) -> nn.Module:
    """timm's MaxxViT with the coatnet_0 widths/depths/stem/head, stages C-C-C-T like astroformer_0."""
    from timm.models.maxxvit import MaxxVit, model_cfgs

    cfg = dataclasses.replace(model_cfgs["coatnet_0"], block_type=("C", "C", "C", "T"))
    return MaxxVit(cfg, img_size=img_size, num_classes=num_classes)


def ours(name: str, img_size: int, num_classes: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from astrocli.models import create_model

        return create_model(name, num_classes=num_classes, img_size=img_size)

    return build


def make_pairs(cct_img: int, astroformer_img: int, num_classes: int) -> list[Pair]:
    return [
        Pair(
            "cct_7_3x1_32",
            ours("cct_7_3x1_32", cct_img, num_classes),
            "vit_pytorch.cct.CCT (cct_7, 3x1)",
            lambda: reference_cct_7_3x1(cct_img, num_classes),
            cct_img,
        ),
        Pair(
            "astroformer_0",
            ours("astroformer_0", astroformer_img, num_classes),
            "timm MaxxVit coatnet_0 cfg, C-C-C-T",
            lambda: reference_coatnet_ccct(astroformer_img, num_classes),
            astroformer_img,
        ),
    ]


def step_for(model: nn.Module, batch: int, img_size: int, num_classes: int, device: torch.device):
    """A training-step closure on fixed random data (same seed for both models of a pair)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, img_size, img_size, generator=generator).to(device)
    targets = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    model.to(device).train()
    return training_step_fn(model, images, targets)


def compare(pair: Pair, args: argparse.Namespace, device: torch.device) -> dict:
    """Alternate rounds of timed training steps of both models; median img/s and the ratio."""
    torch.manual_seed(0)
    models = {"ours": pair.ours(), "reference": pair.reference()}
    params = {key: count_params(model) for key, model in models.items()}
    steps = {
        key: step_for(model, args.batch_size, pair.img_size, args.num_classes, device)
        for key, model in models.items()
    }
    for step in steps.values():  # warm-up (allocator, kernels, AdamW state)
        time_steps(step, device, warmup=args.warmup, repeats=1)
    per_round: dict[str, list[float]] = {"ours": [], "reference": []}
    cpu_seconds: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(args.rounds):
        for key, step in steps.items():
            cpu_start = time.process_time()
            seconds = time_steps(step, device, warmup=0, repeats=args.steps)
            cpu_seconds[key].append(time.process_time() - cpu_start)
            per_round[key].append(args.batch_size / seconds)
    ratios = [o / r for o, r in zip(per_round["ours"], per_round["reference"], strict=True)]
    # CPU time of this process: on a CPU shared with other work it is far steadier than wall time
    # (exact work with --threads 1; with more threads it also counts OpenMP spin-waiting).
    cpu_ratio = statistics.median(cpu_seconds["reference"]) / statistics.median(cpu_seconds["ours"])
    return {
        "model": pair.name,
        "reference": pair.reference_name,
        "device": str(device),
        "img_size": pair.img_size,
        "batch_size": args.batch_size,
        "params_ours": params["ours"],
        "params_reference": params["reference"],
        "ours_train_img_s": statistics.median(per_round["ours"]),
        "reference_train_img_s": statistics.median(per_round["reference"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "cpu_time_ratio": cpu_ratio if device.type == "cpu" else None,
    }


def describe(row: dict) -> str:
    """One line per comparison."""
    return (
        f"{row['device']} {row['model']} img {row['img_size']} batch {row['batch_size']}: "
        f"ours {row['ours_train_img_s']:.1f} img/s, "
        f"{row['reference']} {row['reference_train_img_s']:.1f} img/s, "
        f"ratio {row['ratio']:.3f} (rounds {row['ratio_min']:.3f}-{row['ratio_max']:.3f}); "
        f"params {row['params_ours'] / 1e6:.3f}M vs {row['params_reference'] / 1e6:.3f}M"
        + ("" if row["cpu_time_ratio"] is None else f"; CPU-time ratio {row['cpu_time_ratio']:.3f}")
    )


def devices(choice: str) -> list[torch.device]:
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA GPU")
    return [torch.device(choice)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--cct-img-size", type=int, default=32)
    parser.add_argument(
        "--astroformer-img-size", type=int, default=None, help="default: 64 on CPU (2 cores), 256 on CUDA"
    )
    parser.add_argument("--only", choices=("cct_7_3x1_32", "astroformer_0"), default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json-out", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for device in devices(args.device):
        astro_img = args.astroformer_img_size or (256 if device.type == "cuda" else 64)
        for pair in make_pairs(args.cct_img_size, astro_img, args.num_classes):
            if args.only and pair.name != args.only:
                continue
            row = compare(pair, args, device)
            results.append(row)
            print(describe(row), flush=True)
    report = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "command": " ".join(sys.argv),
        "results": results,
    }
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
