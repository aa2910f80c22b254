"""Is ``torch.compile`` faster than eager for a model's training step here? (``train.compile: auto``)

Times the training step astro runs (forward, cross-entropy, backward, AdamW) of each model eagerly and
compiled (inductor, default mode), in alternating rounds on the same synthetic batch, and reports the
compile time (first compiled step, forward and backward) and the steady images/s both ways. The
table it prints keeps ``astrocli/engine/compiling.py``'s ``CPU_COMPILE_FASTER`` true: a model goes
there only when this benchmark measures it faster compiled on the CPU.

    python benchmarks/compile_speed.py --models resnet20,cct_2_3x2_32 --batch-size 32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astrocli.models import create_model  # noqa: E402


def make_step(model: torch.nn.Module, device: torch.device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(images: torch.Tensor, targets: torch.Tensor) -> None:
        loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step, images, targets, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps (synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(images, targets)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    eager = create_model(name, num_classes=10, img_size=args.img_size).to(device).train()
    compiled_model = create_model(name, num_classes=10, img_size=args.img_size).to(device).train()
    compiled_model.load_state_dict(eager.state_dict())
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    targets = torch.randint(0, 10, (args.batch_size,), device=device)
    eager_step = make_step(eager, device)
    compiled_step = make_step(torch.compile(compiled_model), device)
    compile_s = timed(compiled_step, images, targets, 1, device)  # compiles forward and backward
    timed(eager_step, images, targets, 1, device)
    ratios, eager_rates, compiled_rates = [], [], []
    for _ in range(args.rounds):
        e = timed(eager_step, images, targets, args.steps, device)
        c = timed(compiled_step, images, targets, args.steps, device)
        eager_rates.append(args.batch_size * args.steps / e)
        compiled_rates.append(args.batch_size * args.steps / c)
        ratios.append(e / c)
    return {
        "model": name,
        "compile_s": compile_s,
        "eager_img_per_s": statistics.median(eager_rates),
        "compiled_img_per_s": statistics.median(compiled_rates),
        "compiled_over_eager": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet20,cct_2_3x2_32")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = [measure(name, args, device) for name in args.models.split(",")]
    print("| model | compile s | eager img/s | compiled img/s | compiled / eager (range) |")
    print("|---|---|---|---|---|")
    for r in results:
        lo, hi = r["ratio_range"]
        print(
            f"| {r['model']} | {r['compile_s']:.1f} | {r['eager_img_per_s']:.1f} | "
            f"{r['compiled_img_per_s']:.1f} | {r['compiled_over_eager']:.2f} ({lo:.2f}-{hi:.2f}) |"
        )
    if args.out:
        args.out.write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
