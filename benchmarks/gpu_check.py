"""One prepared GPU check: throughput, model FLOP utilisation, packing and start-up, in one command.

Measures, on one GPU, in at most ``--budget-s`` seconds (default 230: within 4 minutes):

- ``throughput``: training images/s on real data (tensor pipeline, the ``cifar10_cct_7_3x1``
  recipe's augmentation, CIFAR-10 JPEGs) against the same step on synthetic tensors already on the
  device, for ``cct_7_3x1_32`` at 32 px and ``astroformer_0`` at 64 px (target: real >= 90%);
- ``mfu_eager`` / ``mfu_compiled``: model FLOP utilisation of ``cct_7_3x1_32``, batch 512, bf16,
  against the bf16 matmul rate measured in the same run (``matmul``), channels-last off and on
  (target >= 30%); FLOPs from astro's own counter (``astrocli.models.cost.count_flops``);
- ``packing``: 8 processes sharing the GPU, each training ``cct_2_3x2_32`` with the tensor pipeline,
  against one such process alone (target: >= 5x the images/s), and 8 models stacked into one
  process with ``torch.func.stack_module_state`` + ``vmap``;
- ``startup``: seconds from starting ``astro train`` (``python -m astrocli train``, the fast recipe) to
  its first optimizer step with the tensor cache already built (target < 15 s), read from the
  ``first_step`` event of ``--jsonl``.

The measuring code is ``benchmarks/train_throughput.py``'s (imported, not copied). Every section is
guarded: a failure (``torch.compile`` unavailable, a timeout, ...) is recorded in the JSON and the
other sections still run. Results are written after every section to ``OUT/gpu_check.json`` and
``OUT/gpu_check.md``, each figure with the device, torch version, batch size and command.

    python benchmarks/gpu_check.py --data .carry/cifar10-jpeg.zip --out $OUT/gpu_check      # GPU
    python benchmarks/gpu_check.py --data ../shared/data/cifar10-jpeg.zip --out /tmp/gc --smoke  # CPU

``--smoke`` runs the same code paths on the CPU in about a minute: tiny batches and steps, a few
hundred real images, 2 packed processes, and the ``eager`` compile backend (graph capture without
code generation). ``benchmarks/gpu_run.sh`` is the command a GPU session runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCHMARKS))

import train_throughput as tt  # noqa: E402

FAST_RECIPE = "cifar10_cct_7_3x1_fast"
AUGMENT_RECIPE = "cifar10_cct_7_3x1"  # the augmentation the throughput figures use


# ------------------------------------------------------------------------------------------------
# What to run: the GPU plan and its CPU smoke version
# ------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Sizes of every section (``--smoke`` shrinks them; the code paths stay the same)."""

    throughput_models: list[tuple[str, int, int]] = field(
        default_factory=lambda: [("cct_7_3x1_32", 32, 512), ("astroformer_0", 64, 256)]
    )  # (model, img_size, batch)
    max_images: int = 10_000  # real images in the throughput cache (the epoch cycles over them)
    steps: int = 30
    warmup: int = 10
    rounds: int = 3
    mfu_model: str = "cct_7_3x1_32"
    mfu_batch: int = 512
    compile_backend: str = "inductor"
    pack_model: str = "cct_2_3x2_32"
    pack_batch: int = 128
    pack_runs: int = 8
    pack_seconds: float = 10.0
    pack_warmup: int = 10
    startup_overrides: list[str] = field(default_factory=list)
    startup_images: tuple[int, int] | None = None  # (train, test) per class extracted; None: all
    budget_s: float = 230.0
    threads: int | None = None  # torch CPU threads (None: torch's default)


def smoke_plan() -> Plan:
    return Plan(
        # The smallest zoo model at both sizes: the GPU models take minutes per step on a busy CPU.
        throughput_models=[("cct_2_3x2_32", 32, 4), ("cct_2_3x2_32", 64, 4)],
        max_images=200,
        steps=1,
        warmup=1,
        rounds=1,
        mfu_model="cct_2_3x2_32",
        mfu_batch=4,
        compile_backend="eager",
        pack_batch=8,
        pack_runs=2,
        pack_seconds=1.5,
        pack_warmup=1,
        startup_overrides=["model.name=cct_2_3x2_32", "train.batch_size=16", "data.num_workers=0"],
        startup_images=(10, 3),
        budget_s=170.0,
        # One thread: on a busy CPU, OpenMP's spinning threads stall each other (docs/performance.md).
        threads=1,
    )


# ------------------------------------------------------------------------------------------------
# The report: figures with their context, written after every section
# ------------------------------------------------------------------------------------------------


class Report:
    def __init__(self, out: Path, env: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"env": env, "sections": {}, "figures": []}

    def figure(
        self,
        section: str,
        name: str,
        value: float,
        unit: str,
        *,
        batch_size: int | None,
        command: str,
        target: str | None = None,
        met: bool | None = None,
        **extra: Any,
    ) -> None:
        env = self.data["env"]
        self.data["figures"].append(
            {
                "section": section,
                "name": name,
                "value": value,
                "unit": unit,
                "target": target,
                "met": met,
                "batch_size": batch_size,
                "device": env["device"],
                "torch": env["torch"],
                "command": command,
                **extra,
            }
        )

    def section(self, name: str, record: dict[str, Any]) -> None:
        self.data["sections"][name] = record
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:,.3g} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def markdown(data: dict[str, Any]) -> str:
    env = data["env"]
    lines = [
        f"# GPU check{' (CPU smoke run: not GPU figures)' if env['smoke'] else ''}",
        "",
        f"Device: {env['device']}; torch {env['torch']}; Python {env['python']}; {env['started']}.",
        "",
        f"Command: `{env['command']}`",
        "",
        "| section | figure | value | target | met | batch | device | torch | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in data["figures"]:
        met = "" if f["met"] is None else ("yes" if f["met"] else "**no**")
        lines.append(
            f"| {f['section']} | {f['name']} | {fmt(f['value'], f['unit'])} | {f['target'] or ''} | {met} | "
            f"{f['batch_size'] or ''} | {f['device']} | {f['torch']} | `{f['command']}` |"
        )
    lines += ["", "| section | status | seconds | note |", "|---|---|---|---|"]
    for name, record in data["sections"].items():
        note = record.get("error") or record.get("reason") or ""
        lines.append(f"| {name} | {record['status']} | {record.get('seconds', 0):.1f} | {note} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Guards: every section runs under the global deadline, and its failure is recorded, not raised
# ------------------------------------------------------------------------------------------------


class SectionTimeout(Exception):
    """The global time budget ran out inside a section."""


def _alarm(signum: int, frame: Any) -> None:
    raise SectionTimeout("the global time budget ran out in this section")


def run_section(
    report: Report, name: str, body: Callable[[], dict[str, Any]], deadline: float, needs_s: float
) -> dict[str, Any] | None:
    """Run ``body`` if ``needs_s`` seconds are left before ``deadline``; record status and errors."""
    left = deadline - time.monotonic()
    if left < needs_s:
        report.section(
            name, {"status": "skipped", "reason": f"time budget: {left:.0f} s left, needs ~{needs_s:.0f}"}
        )
        return None
    print(f"== {name} ({left:.0f} s of budget left)", flush=True)
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        details = body()
        record = {"status": "ok", **details}
    except KeyboardInterrupt:  # the person at the keyboard wants the whole script to stop
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure (SystemExit too) is a finding; the next section runs
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        record = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {message}",
            "traceback": traceback.format_exc(limit=8),
        }
        print(f"   {name} failed: {record['error']}", flush=True)
        details = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    record["seconds"] = time.perf_counter() - start
    report.section(name, record)
    return details


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def extract_cifar(archive: Path, target: Path, per_class: tuple[int, int] | None) -> Path:
    """``train/`` and ``test/`` of the CIFAR-10 JPEG zip in ``target`` (``per_class``: the first
    (train, test) images of each class only); reused when already there."""
    done = target / ".extracted"
    if done.is_file():
        return target
    with zipfile.ZipFile(archive) as zf:
        names = sorted(
            n for n in zf.namelist() if n.endswith(".jpg") and n.split("/")[0] in ("train", "test")
        )
        if per_class is not None:
            counts: dict[tuple[str, str], int] = {}
            limit = {"train": per_class[0], "test": per_class[1]}
            kept = []
            for n in names:
                split, cls = n.split("/")[:2]
                if counts.get((split, cls), 0) < limit[split]:
                    counts[(split, cls)] = counts.get((split, cls), 0) + 1
                    kept.append(n)
            names = kept
        zf.extractall(target, names)
    done.write_text("ok\n")
    return target


def tt_argv(
    plan: Plan, data: Path, device: str, model: str, img_size: int, batch: int, *flags: str
) -> list[str]:
    """train_throughput.py's arguments for one measurement (also its reproducible command line)."""
    return [
        "--model", model, "--img-size", str(img_size), "--batch-size", str(batch), "--data", str(data),
        "--max-images", str(plan.max_images), "--device", device, "--steps", str(plan.steps),
        "--warmup", str(plan.warmup), "--rounds", str(plan.rounds), "--recipe", AUGMENT_RECIPE,
        "--compile-backend", plan.compile_backend, *threads_flag(plan), *flags,
    ]  # fmt: skip


def threads_flag(plan: Plan) -> list[str]:
    return ["--threads", str(plan.threads)] if plan.threads else []


def tt_command(argv: list[str]) -> str:
    return shlex.join(["python", "benchmarks/train_throughput.py", *argv])


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------


def section_matmul(
    report: Report, device: torch.device, command: str, state: dict[str, Any]
) -> dict[str, Any]:
    peak, dtype = tt.matmul_rate(device)
    state["peak"] = (peak, dtype)
    report.figure(
        "matmul",
        f"{dtype} matmul rate (MFU denominator)",
        peak / 1e12,
        "TFLOP/s",
        batch_size=None,
        command=command,
    )
    return {"tflop_per_s": peak / 1e12, "dtype": dtype}


def section_throughput(
    report: Report, plan: Plan, data: Path, device: str, state: dict[str, Any]
) -> dict[str, Any]:
    results, errors = [], {}
    for model, img_size, batch in plan.throughput_models:
        argv = tt_argv(plan, data, device, model, img_size, batch)
        try:
            r = tt.measure(tt.parse_args(argv), state.get("peak"))
        except SectionTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - the next model still runs
            errors[model] = f"{type(exc).__name__}: {exc}"
            continue
        r["command"] = tt_command(argv)
        results.append(r)
        if (model, img_size, batch) == (plan.mfu_model, 32, plan.mfu_batch):
            state["mfu_eager_off"] = r  # the eager, channels-last-off MFU configuration: reused
        where = f"{model} @ {img_size} px"
        report.figure(
            "throughput",
            f"{where}: synthetic images/s",
            r["synthetic_img_per_s"],
            "img/s",
            batch_size=batch,
            command=r["command"],
        )
        report.figure(
            "throughput",
            f"{where}: real (tensor pipeline) images/s",
            r["tensor_pipeline_img_per_s"],
            "img/s",
            batch_size=batch,
            command=r["command"],
        )
        ratio = r["real_over_synthetic"]
        report.figure(
            "throughput",
            f"{where}: real / synthetic",
            ratio,
            "%",
            batch_size=batch,
            command=r["command"],
            target=">= 90%",
            met=ratio >= 0.9,
        )
    if not results:
        raise RuntimeError(f"every model failed: {errors}")
    return {"results": results, "errors": errors}


def section_mfu(
    report: Report, plan: Plan, data: Path, device: str, state: dict[str, Any], compiled: bool
) -> dict[str, Any]:
    results, errors = [], {}
    for channels_last in (False, True):
        flags = [*(["--compile"] if compiled else []), *(["--channels-last"] if channels_last else [])]
        argv = tt_argv(plan, data, device, plan.mfu_model, 32, plan.mfu_batch, *flags)
        reused = state.get("mfu_eager_off") if not compiled and not channels_last else None
        try:
            r = reused or tt.measure(tt.parse_args(argv), state.get("peak"))
        except SectionTimeout:
            raise
        except Exception as exc:  # noqa: BLE001
            errors[f"channels_last={channels_last}"] = f"{type(exc).__name__}: {exc}"
            continue
        r["command"] = tt_command(argv)
        results.append(r)
        amp = "bf16 autocast" if r["amp"] == "bf16" else "float32"
        label = f"{plan.mfu_model} {r['mode']}, channels-last {'on' if channels_last else 'off'}, {amp}"
        report.figure(
            "mfu",
            f"{label}: MFU, synthetic batches",
            r["mfu_synthetic"],
            "%",
            batch_size=plan.mfu_batch,
            command=r["command"],
            target=">= 30%",
            met=r["mfu_synthetic"] >= 0.3,
            train_gflop_per_img=r["train_gflop_per_img"],
            img_per_s=r["synthetic_img_per_s"],
        )
        report.figure(
            "mfu",
            f"{label}: MFU, real batches",
            r["mfu_tensor_pipeline"],
            "%",
            batch_size=plan.mfu_batch,
            command=r["command"],
            img_per_s=r["tensor_pipeline_img_per_s"],
        )
    if not results:
        raise RuntimeError(f"every configuration failed: {errors}")
    return {"results": results, "errors": errors}


# -- packing ---------------------------------------------------------------------------------------


def pack_worker_argv(plan: Plan, data: Path, device: str, threads: int) -> list[str]:
    return [
        "--model", plan.pack_model, "--img-size", "32", "--batch-size", str(plan.pack_batch),
        "--data", str(data), "--max-images", str(plan.max_images), "--device", device,
        "--warmup", str(plan.pack_warmup), "--recipe", AUGMENT_RECIPE, "--threads", str(threads),
    ]  # fmt: skip


def run_packed(plan: Plan, data: Path, device: str, runs: int, workdir: Path) -> dict[str, Any]:
    """``runs`` training processes on one device, started together, timed over the same window."""
    go = workdir / f"go-{runs}"
    go.unlink(missing_ok=True)
    threads = plan.threads or max(1, (os.cpu_count() or 1) // runs)
    argv = pack_worker_argv(plan, data, device, threads)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "pack-worker",
        "--go-file",
        str(go),
        "--seconds",
        str(plan.pack_seconds),
        "--",
        *argv,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(runs)]
    try:
        for p in procs:  # each says READY after its warm-up steps
            for line in p.stdout:
                if line.strip() == "READY":
                    break
            else:
                raise RuntimeError(f"a packed run exited before its warm-up (exit code {p.wait()})")
        go.write_text("go\n")
        outputs = []
        for p in procs:
            out, _ = p.communicate(timeout=plan.pack_seconds + 120)
            if p.returncode != 0:
                raise RuntimeError(f"a packed run failed (exit code {p.returncode})")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    window = max(o["end"] for o in outputs) - min(o["start"] for o in outputs)
    images = sum(o["images"] for o in outputs)
    return {
        "runs": runs,
        "threads_per_run": threads,
        "img_per_s": images / window,  # all images over the whole window: no credit for stragglers
        "per_run_img_per_s": [o["img_per_s"] for o in outputs],
        "window_s": window,
        "command": shlex.join(["python", "benchmarks/gpu_check.py", *cmd[2:]]),
    }


def pack_worker(argv: list[str]) -> None:
    """One packed run: warm up, say READY, wait for the go file, train for ``--seconds``, print JSON."""
    parser = argparse.ArgumentParser(prog="gpu_check.py pack-worker")
    parser.add_argument("--go-file", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    own, rest = parser.parse_known_args(argv)
    args = tt.parse_args([a for a in rest if a != "--"])
    device, amp = tt.setup_device(args)
    source, _, _ = tt.real_batches(args, device)
    model = tt.build_model(args, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05, fused=device.type == "cuda")
    step = tt.make_step(model, optimizer, device, amp)
    batches = tt.endless(source)
    total = torch.zeros((), device=device)
    tt.timed_steps(step, batches, args.warmup, device, total)
    print("READY", flush=True)
    waited = time.monotonic()
    while not own.go_file.exists():
        if time.monotonic() - waited > 300:
            raise SystemExit("no go signal within 300 s")
        time.sleep(0.005)
    images, start_wall = timed_for(step, batches, own.seconds, device, total)
    end_wall = time.time()
    print(
        json.dumps(
            {
                "images": images,
                "start": start_wall,
                "end": end_wall,
                "img_per_s": images / (end_wall - start_wall),
            }
        )
    )


def timed_for(step, batches, seconds: float, device: torch.device, total: torch.Tensor) -> tuple[int, float]:
    """Train for about ``seconds``; returns (images, wall start). Syncs only every few steps."""
    tt.sync(device)
    start_wall, start = time.time(), time.perf_counter()
    images, chunk = 0, 1
    while time.perf_counter() - start < seconds:
        for _ in range(chunk):
            x, y = next(batches)
            total += step(x, y)
            images += len(x)
        tt.sync(device)
        chunk = min(chunk * 2, 16)
    if not torch.isfinite(total).item():
        # RuntimeError, not SystemExit: a failed measurement is recorded and the next one runs
        raise RuntimeError("the loss became non-finite")
    return images, start_wall


def stacked_step(models: list[torch.nn.Module], batch: int, device: torch.device, amp: bool):
    """One training step of ``len(models)`` models stacked into one (``torch.func.stack_module_state``
    + ``vmap``): each model gets its own slice of ``batch`` images and the same AdamW as
    ``pack_worker``. Returns ``(step, params)``; ``step`` returns the mean of the models' losses."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    from astrocli.models import set_fused_attn

    k = len(models)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    # The stacked loss went non-finite twice on the H200 (issue 22) while the same models trained
    # alone did not. On the CPU the vmap path matches k separate models step for step (fp32, same
    # losses and weights: tests/test_gpu_check.py), so the suspect is what only CUDA runs: SDPA's
    # fused kernels (flash / cuDNN, dropout inside the kernel) under vmap's batching rules. The
    # explicit softmax(q k^T) v product batches through plain matmul/softmax/dropout rules.
    set_fused_attn(base, False)

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    forward = vmap(one, randomness="different")
    optimizer = torch.optim.AdamW(
        list(params.values()), lr=5e-4, weight_decay=0.05, fused=device.type == "cuda"
    )

    def step(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = images.reshape(k, batch, *images.shape[1:])
        y = targets.reshape(k, batch, -1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward(params, buffers, x)
        # sum of the k means: each model's gradient is that of its own mean loss
        loss = torch.sum(-y * F.log_softmax(logits.float(), dim=-1), dim=-1).mean(dim=1).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach() / k

    return step, params


def stacked_models(plan: Plan, data: Path, device_name_: str) -> dict[str, Any]:
    """``pack_runs`` models trained as one: ``torch.func.stack_module_state`` + ``vmap`` (one process)."""
    k = plan.pack_runs
    args = tt.parse_args(pack_worker_argv(plan, data, device_name_, plan.threads or os.cpu_count() or 1))
    args.batch_size = k * plan.pack_batch  # one source draws all k batches at once
    device, amp = tt.setup_device(args)
    source, _, _ = tt.real_batches(args, device)
    step, _ = stacked_step([tt.build_model(args, device) for _ in range(k)], plan.pack_batch, device, amp)
    batches = tt.endless(source)
    total = torch.zeros((), device=device)
    tt.timed_steps(step, batches, plan.pack_warmup, device, total)
    images, start_wall = timed_for(step, batches, plan.pack_seconds, device, total)
    return {"models": k, "img_per_s": images / (time.time() - start_wall)}


def section_packing(
    report: Report, plan: Plan, data: Path, device: str, workdir: Path, state: dict[str, Any]
) -> dict[str, Any]:
    # Build the workers' shared cache once, here, so that they only load it.
    args = tt.parse_args(pack_worker_argv(plan, data, device, 1))
    tt.build_tensor_cache(tt.folder_dataset(args.data, args.max_images), tt.bench_recipe(args).data, "train")
    single = run_packed(plan, data, device, 1, workdir)
    packed = run_packed(plan, data, device, plan.pack_runs, workdir)
    ratio = packed["img_per_s"] / single["img_per_s"]
    b, n, m = plan.pack_batch, plan.pack_runs, plan.pack_model
    report.figure(
        "packing",
        f"{m}, 1 process: images/s",
        single["img_per_s"],
        "img/s",
        batch_size=b,
        command=single["command"],
    )
    report.figure(
        "packing",
        f"{m}, {n} processes on one device: images/s (all)",
        packed["img_per_s"],
        "img/s",
        batch_size=b,
        command=packed["command"],
    )
    report.figure(
        "packing",
        f"{m}, {n} processes / 1 process",
        ratio,
        "x",
        batch_size=b,
        command=packed["command"],
        target=">= 5x" if n == 8 else None,
        met=ratio >= 5 if n == 8 else None,
    )
    record: dict[str, Any] = {"single": single, "packed": packed, "ratio": ratio}
    try:
        stacked = stacked_models(plan, data, device)
        stacked_ratio = stacked["img_per_s"] / single["img_per_s"]
        command = f"{state['command']}  # packing section, torch.func stacked models"
        report.figure(
            "packing",
            f"{m}, {n} models stacked (torch.func vmap): images/s",
            stacked["img_per_s"],
            "img/s",
            batch_size=b,
            command=command,
        )
        report.figure(
            "packing",
            f"{m}, {n} stacked models / 1 process",
            stacked_ratio,
            "x",
            batch_size=b,
            command=command,
        )
        record["stacked"] = {**stacked, "ratio": stacked_ratio}
    except SectionTimeout:
        raise
    except Exception as exc:  # noqa: BLE001 - the process figures stand on their own (timed_for raises RuntimeError)
        record["stacked_error"] = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        )
    return record


# -- start-up --------------------------------------------------------------------------------------


def time_astro_train(cmd: list[str], timeout: float, threads: int | None) -> dict[str, Any]:
    """Run ``astro train --jsonl``; seconds from the start to its ``start`` and ``first_step`` events."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    launched_wall, launched = time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    events: dict[str, float] = {}
    first_step_wall = None
    tail: list[str] = []
    try:
        for line in proc.stdout:
            now = time.perf_counter() - launched
            tail = (tail + [line.rstrip()])[-20:]
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            name = event.get("event")
            if isinstance(name, str) and name not in events:
                events[name] = now
            if name == "first_step":
                first_step_wall = event.get("time")
            if now > timeout:
                raise TimeoutError(f"astro train ran past {timeout:.0f} s")
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0 or "first_step" not in events:
        raise RuntimeError(
            f"astro train exited with {code} before a first_step event: {' | '.join(tail[-3:])}"
        )
    return {
        "to_start_event_s": events.get("start"),
        "to_first_step_s": events["first_step"],
        # the trainer's own clock: from the launch to the step's end, without pipe delays
        "to_first_step_by_event_time_s": first_step_wall - launched_wall if first_step_wall else None,
        "total_s": time.perf_counter() - launched,
    }


def section_startup(report: Report, plan: Plan, archive: Path, workdir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    folder = extract_cifar(archive, workdir / "cifar10-jpeg", plan.startup_images)
    extract_s = time.perf_counter() - start
    cmd = [
        sys.executable, "-m", "astrocli", "train", "--recipe", FAST_RECIPE, "--jsonl", f"data.root={folder}",
        "train.epochs=1", "train.time=null", "train.warmup_epochs=0", "train.cooldown_epochs=0",
        "train.max_steps_per_epoch=2",
        f"output.dir={workdir / 'runs'}", "output.plots=false", *plan.startup_overrides,
    ]  # fmt: skip
    command = shlex.join(["python", "-m", "astrocli", *cmd[3:]])
    cold = time_astro_train(cmd, 300, plan.threads)  # decodes the JPEGs once into the tensor cache
    warm = time_astro_train(cmd, 300, plan.threads)  # the figure: the cache is already built
    report.figure(
        "startup",
        "astro train to first optimizer step, cache built",
        warm["to_first_step_s"],
        "s",
        batch_size=None,
        command=command,
        target="< 15 s",
        met=warm["to_first_step_s"] < 15,
    )
    report.figure(
        "startup",
        "astro train to first optimizer step, cache decoded first",
        cold["to_first_step_s"],
        "s",
        batch_size=None,
        command=command,
    )
    return {"extract_s": extract_s, "cold": cold, "warm": warm, "command": command}


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "cifar10-jpeg.zip",
        help="the CIFAR-10 JPEG zip",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the same code paths")
    parser.add_argument("--device", default=None, help="default: cuda when available (cpu with --smoke)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="global time budget (default 230; smoke 170)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="extracted images and runs (default: a temp folder)"
    )
    parser.add_argument(
        "--sections",
        default="matmul,throughput,mfu_eager,packing,startup,mfu_compiled",
        help="comma-separated, in this order",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pack-worker"]:
        pack_worker(argv[1:])
        return 0
    args = parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file (give the CIFAR-10 JPEG zip)")
    plan = smoke_plan() if args.smoke else Plan()
    if args.budget_s:
        plan.budget_s = args.budget_s
    if plan.threads:
        torch.set_num_threads(plan.threads)
    device = args.device or ("cpu" if args.smoke else "cuda" if torch.cuda.is_available() else "cpu")
    torch_device = torch.device(device)
    deadline = time.monotonic() + plan.budget_s
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="astro-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/gpu_check.py", *argv])
    env = {
        "device": tt.device_name(torch_device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "smoke": args.smoke,
        "budget_s": plan.budget_s,
        "plan": asdict(plan),
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    report = Report(args.out, env)
    state: dict[str, Any] = {"command": command}
    data = args.data.resolve()
    sections: dict[str, tuple[Callable[[], dict[str, Any]], float]] = {
        "matmul": (lambda: section_matmul(report, torch_device, command, state), 5),
        "throughput": (lambda: section_throughput(report, plan, data, device, state), 20),
        "mfu_eager": (lambda: section_mfu(report, plan, data, device, state, compiled=False), 10),
        "packing": (lambda: section_packing(report, plan, data, device, workdir, state), 30),
        "startup": (lambda: section_startup(report, plan, data, workdir), 30),
        "mfu_compiled": (lambda: section_mfu(report, plan, data, device, state, compiled=True), 40),
    }
    for name in args.sections.split(","):
        if name not in sections:
            raise SystemExit(f"--sections: unknown section '{name}' (known: {', '.join(sections)})")
        body, needs = sections[name]
        run_section(report, name, body, deadline, needs if not args.smoke else 1)
    report.data["env"]["total_s"] = plan.budget_s - (deadline - time.monotonic())
    report.write()
    print((args.out / "gpu_check.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
