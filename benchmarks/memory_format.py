"""Channels-last against contiguous memory format, and bf16 autocast against fp32, for a training step
on the CPU: keeps the tables ``astrocli.data.defaults.CHANNELS_LAST_CPU`` (what
``train.channels_last: auto`` picks) and, with ``--amp``, ``BF16_CPU`` (``train.amp: auto``) true.

For each model, the same training step (forward, cross-entropy, backward, AdamW) on one batch of
random images, timed in alternating rounds in three layouts:

- ``contiguous``: model and images contiguous (NCHW);
- ``input-cl``: channels-last images into a contiguous model (what the tensor pipeline of 0.3.0
  handed the model by accident: its batches were channels-last views);
- ``channels-last``: model and images channels-last (``train.channels_last: true``).

It prints images/s (wall) and CPU seconds per step, medians over rounds, the ratios against
``contiguous`` (wall and CPU time), and whether the table agrees: a family is channels-last in the
table when its representative's median CPU-time ratio (``--decide-on``) is at least ``--threshold``
(default 1.05) in this run. Other processes disturb CPU time much less than wall time.

``--amp`` adds a fourth arm, ``bf16``: the layout the table picks for the model, under bf16 autocast
(``train.amp: bf16``), and its ratios against that layout in fp32; ``BF16_CPU`` lists a family as
faster when that ratio is at least ``--threshold`` on a CPU with AMX tiles (what ``auto`` needs;
the top-1 side is benchmarks/bf16_accuracy.py's).

    python benchmarks/memory_format.py --models resnet20 cct_2_3x2_32 --rounds 5 --steps 3 [--amp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from astrocli.data.defaults import BF16_CPU, bf16_on_cpu, channels_last_on_cpu, table_entry  # noqa: E402
from astrocli.devices import cpu_has_bf16_tiles  # noqa: E402
from astrocli.models import create_model  # noqa: E402

LAYOUTS = ("contiguous", "input-cl", "channels-last")


def build(name: str, layout: str, img_size: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=img_size)
    if layout == "channels-last" or (layout == "bf16" and channels_last_on_cpu(name)):
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def time_steps(model, optimizer, images, targets, steps: int, bf16: bool = False) -> tuple[float, float]:  # noqa: ANN001
    """Wall and CPU seconds of ``steps`` training steps (after one untimed step)."""
    model.train()
    for i in range(steps + 1):
        if i == 1:
            wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, opts: argparse.Namespace) -> dict:
    images = torch.randn(opts.batch_size, 3, opts.img_size, opts.img_size)
    targets = torch.randint(0, 10, (opts.batch_size,))
    table_layout = "channels-last" if channels_last_on_cpu(name) else "contiguous"
    inputs = {
        "contiguous": images,
        "input-cl": images.contiguous(memory_format=torch.channels_last),
        "channels-last": images.contiguous(memory_format=torch.channels_last),
        "bf16": images.contiguous(memory_format=torch.channels_last)
        if table_layout != "contiguous"
        else images,
    }
    arms = (*LAYOUTS, "bf16") if opts.amp else LAYOUTS
    parts = {arm: build(name, arm, opts.img_size) for arm in arms}
    walls: dict[str, list[float]] = {arm: [] for arm in arms}
    cpus: dict[str, list[float]] = {arm: [] for arm in arms}
    for _ in range(opts.rounds):
        for arm in arms:
            wall, cpu = time_steps(*parts[arm], inputs[arm], targets, opts.steps, bf16=arm == "bf16")
            walls[arm].append(wall / opts.steps)
            cpus[arm].append(cpu / opts.steps)
    result = {"model": name, "load": os.getloadavg()[0], "bf16_against": table_layout}
    for layout in arms:
        against = table_layout if layout == "bf16" else "contiguous"  # bf16 against the same layout in fp32
        ratios = [b / w for b, w in zip(walls[against], walls[layout], strict=True)]
        cpu_ratios = [b / c for b, c in zip(cpus[against], cpus[layout], strict=True)]
        result[layout] = {
            "img_per_s": opts.batch_size / statistics.median(walls[layout]),
            "cpu_s_per_step": statistics.median(cpus[layout]),
            "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "cpu_ratio": statistics.median(cpu_ratios),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "cct_2_3x2_32"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--threshold", type=float, default=1.05)
    parser.add_argument(
        "--decide-on",
        choices=["cpu_ratio", "ratio"],
        default="cpu_ratio",
        help="the CPU-time ratio (steadier on a shared machine; with one thread it is the wall-time "
        "ratio of an idle one) or the wall-time ratio",
    )
    parser.add_argument("--amp", action="store_true", help="also time bf16 autocast (the BF16_CPU table)")
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    print(f"torch {torch.__version__}, {opts.threads} threads, batch {opts.batch_size}, {opts.img_size} px")
    results = []
    for name in opts.models:
        r = measure(name, opts)
        results.append(r)
        cells = ", ".join(
            f"{layout} {r[layout]['img_per_s']:.1f} img/s (x{r[layout]['ratio']:.2f}, "
            f"{r[layout]['ratio_range'][0]:.2f}-{r[layout]['ratio_range'][1]:.2f}; "
            f"CPU {r[layout]['cpu_s_per_step']:.3f} s/step, x{r[layout]['cpu_ratio']:.2f})"
            for layout in LAYOUTS
        )
        faster = r["channels-last"][opts.decide_on] >= opts.threshold
        table = channels_last_on_cpu(name)
        verdict = "agrees" if faster == table else "DISAGREES"
        print(f"{name} (load {r['load']:.1f}): {cells}; table says {table}, this run {faster}: {verdict}")
        if opts.amp:
            print(bf16_verdict(name, r, opts))
    if opts.out:
        opts.out.write_text(json.dumps(results, indent=1))


def bf16_verdict(name: str, r: dict, opts: argparse.Namespace) -> str:
    """The bf16 arm against fp32 in the table's layout, and whether ``BF16_CPU`` agrees."""
    arm = r["bf16"]
    faster = cpu_has_bf16_tiles() and arm[opts.decide_on] >= opts.threshold
    table = bf16_on_cpu(name)
    if table_entry(BF16_CPU, name) is None and faster:  # speed alone does not list a family
        verdict = "not listed: faster here; list it once benchmarks/bf16_accuracy.py finds the same top-1"
    elif table_entry(BF16_CPU, name) is None:
        verdict = "not listed, and not faster here"
    else:
        verdict = "agrees" if faster == table else "DISAGREES"
    return (
        f"{name} bf16 ({r['bf16_against']}): {arm['img_per_s']:.1f} img/s, x{arm['ratio']:.2f} "
        f"({arm['ratio_range'][0]:.2f}-{arm['ratio_range'][1]:.2f}) against fp32, CPU "
        f"{arm['cpu_s_per_step']:.3f} s/step (x{arm['cpu_ratio']:.2f}); AMX {cpu_has_bf16_tiles()}; "
        f"table says {table}, this run {faster}: {verdict}"
    )


if __name__ == "__main__":
    main()
