"""Model cost: parameters, MACs and throughput (scaling curves of finished runs: experiments/runs.py).

Library behind ``astro bench``. Conventions:

* **MACs** are multiply-accumulates for ONE image; **FLOPs = 2 x MACs**. They are counted with
  :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and attention
  products; norms, activations and softmax are not counted, as in the papers' tables).
* Throughput is images per second: warm-up steps first, then the median of timed repeats, with
  the device synchronised around every timed step. A training step is forward, cross-entropy,
  backward and an AdamW step.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from astrocli.devices import free_memory_bytes
from astrocli.errors import AstroError
from astrocli.models import count_params, create_model, get_model_info

# ---------------------------------------------------------------------------------------------
# MACs
# ---------------------------------------------------------------------------------------------


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU flash-attention kernel: the same two products as every other SDPA kernel."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_flop_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas for SDPA kernels that ``flop_counter`` leaves out on some torch versions.

    Why by hand: torch 2.x registers formulas for the CUDA flash / efficient / cuDNN kernels only,
    so on CPU ``scaled_dot_product_attention`` dispatches to ``_scaled_dot_product_flash_attention_for_cpu``
    and is counted as 0 FLOPs (checked on torch 2.14.1). Only kernels that exist in the running torch
    are added, so this is a no-op where torch already counts them.
    """
    formulas: dict[Any, Callable[..., int]] = {}
    kernels = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    for op_name in kernels:
        op = getattr(torch.ops.aten, op_name, None)
        if op is not None:
            formulas[op] = _cpu_sdpa_flops
    return formulas


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[None]:
    """Temporarily switch every attention module (``fused_attn`` flag, as timm and the zoo use) to the
    explicit softmax path, whose plain matmuls every torch counts; restores the flags afterwards."""
    saved = [(module, module.fused_attn) for module in model.modules() if hasattr(module, "fused_attn")]
    try:
        for module, _ in saved:
            module.fused_attn = False
        yield
    finally:
        for module, flag in saved:
            module.fused_attn = flag


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def count_flops(model: nn.Module, img_size: int, in_chans: int = 3, fused: bool = False) -> int:
    """FLOPs of one forward pass on one ``in_chans x img_size x img_size`` image (eval mode, no grad).

    Runs on the model's own device; a model built on ``meta`` is counted without computing anything.
    ``fused=False`` counts the explicit attention path (the default and most robust); ``fused=True``
    counts the model as it is (SDPA kernels), for cross-checking.
    """
    device = _model_device(model)
    image = torch.zeros(1, in_chans, img_size, img_size, device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_sdpa_flop_formulas())
    switch = contextlib.nullcontext() if fused else explicit_attention(model)
    try:
        with switch, torch.no_grad(), counter:
            model(image)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates for ONE image, attention products included (FLOPs = 2 x MACs)."""
    return count_flops(model, img_size, in_chans) // 2


# ---------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------


@dataclass
class Throughput:
    """Measured speed. ``peak_mem_mb`` is CUDA max-allocated memory on a GPU, the peak resident-set
    growth of this process on CPU (``peak_mem_kind`` says which; None where neither can be read).

    ``peak_mem_kind``: ``cuda_max_allocated`` (peak stats reset before the model is measured),
    ``cpu_rss_peak_delta`` (this process, from the start of the measurement) or
    ``cpu_rss_peak_fresh_process`` (:func:`bench_model` on a CPU: a new Python process per model,
    peak resident set from just before the model is built to the end of the measurement, so the
    weights count and nothing that ran before -- freed memory the allocator would reuse -- does).
    """

    infer_img_s: float | None
    train_img_s: float | None
    peak_mem_mb: float | None
    peak_mem_kind: str | None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times timed; return the median seconds."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    durations = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        step()
        _synchronize(device)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


class _PeakMemory:
    """Peak memory over a block: CUDA max allocated, or on Linux CPU the resident-set high-water mark
    (reset through ``/proc/self/clear_refs``) minus the resident set at the start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind: str | None = None
        self.peak_mb: float | None = None
        self._start_kb = 0

    @staticmethod
    def _status_kb(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise OSError(f"{field} not in /proc/self/status")

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._start_kb = self._status_kb("VmRSS")
            self.kind = "cpu_rss_peak_delta"
        except OSError:
            self.kind = None  # not Linux, or not allowed: report null rather than a wrong number
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda_max_allocated":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "cpu_rss_peak_delta":
            self.peak_mb = max(0, self._status_kb("VmHWM") - self._start_kb) / 1024


def _throughput_in_fresh_process(
    name: str,
    num_classes: int,
    img_size: int,
    in_chans: int,
    batch_size: int,
    warmup: int,
    repeats: int,
    threads: int,
) -> dict[str, Any]:
    """Build and measure ``name`` on the CPU; run in a spawned process by :func:`_isolated_throughput`."""
    torch.set_num_threads(threads)
    with _PeakMemory(torch.device("cpu")) as whole:  # from before the build: the weights count
        model = create_model(name, num_classes, img_size, in_chans, device="cpu")
        speed = measure_throughput(model, img_size, in_chans, batch_size, "cpu", warmup, repeats)
    if whole.kind is not None:
        # The inner measurement reset the high-water mark to the resident set after the build,
        # which is still at least this process's peak since the outer start.
        speed.peak_mem_mb, speed.peak_mem_kind = whole.peak_mb, "cpu_rss_peak_fresh_process"
    return asdict(speed)


def _isolated_throughput(
    name: str, num_classes: int, img_size: int, in_chans: int, batch_size: int, warmup: int, repeats: int
) -> Throughput:
    """CPU throughput and peak memory of one model in a new Python process.

    Why a process: in one process the C allocator hands the next model the memory the previous
    one freed, so its resident-set growth, and with it the reported peak, depended on what ran
    before. A forked child would inherit that heap; a new interpreter starts clean (cost: the
    torch import, 1-2 s per model). ``python -c`` rather than multiprocessing's spawn, which
    re-imports the caller's ``__main__`` and fails in scripts without a ``__main__`` guard.
    """
    import os
    import subprocess
    import sys

    args = [name, num_classes, img_size, in_chans, batch_size, warmup, repeats, torch.get_num_threads()]
    code = (
        "import json, sys; from astrocli.models.cost import _throughput_in_fresh_process as run; "
        "print(json.dumps(run(*json.loads(sys.argv[1]))))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the same astrocli
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise AstroError(f"benchmarking {name} in a fresh process failed: {last}")
    return Throughput(**json.loads(proc.stdout.strip().splitlines()[-1]))


def training_step_fn(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    """A closure doing one training step (forward, cross-entropy, backward, AdamW step) on fixed data."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()

    return step


def measure_throughput(
    model: nn.Module,
    img_size: int,
    in_chans: int = 3,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    inference: bool = True,
    training: bool = True,
) -> Throughput:
    """Inference and training images/s of ``model`` on random images (median of ``repeats``).

    The model is moved to ``device``; training updates its weights (benchmark a throw-away copy).
    Peak memory covers both measurements.
    """
    device = torch.device(device)
    model.to(device)
    images = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    infer_img_s = train_img_s = None
    with _PeakMemory(device) as memory:
        if inference:
            model.eval()

            def infer() -> None:
                with torch.inference_mode():
                    model(images)

            infer_img_s = batch_size / time_steps(infer, device, warmup, repeats)
        if training:
            model.eval()  # eval: a batch of one would break BatchNorm1d in train mode
            with torch.no_grad():
                num_classes = model(images[:1]).shape[-1]
            model.train()
            targets = torch.randint(0, num_classes, (batch_size,), device=device)
            step = training_step_fn(model, images, targets)
            train_img_s = batch_size / time_steps(step, device, warmup, repeats)
    return Throughput(infer_img_s, train_img_s, memory.peak_mb, memory.kind)


# ---------------------------------------------------------------------------------------------
# Models by name
# ---------------------------------------------------------------------------------------------


def model_family(name: str) -> str:
    """The zoo's family for ``name`` (``timm`` for ``timm/<name>``; the name's stem if unknown)."""
    try:
        return str(get_model_info(name).family)
    except AstroError:  # a run of a model the zoo no longer has still gets a readable family
        return name.split("_")[0]


def check_model_name(name: str) -> None:
    """Raise the zoo's one-line error (an AstroError with close matches) for an unknown name."""
    get_model_info(name)


def default_img_size(name: str) -> int:
    """The model's default input size."""
    return int(get_model_info(name).default_img_size)


def params_and_macs(
    name: str, img_size: int, num_classes: int = 10, in_chans: int = 3
) -> tuple[int, int | None]:
    """Parameter count and MACs of a named model, built on ``meta`` (no memory, no compute).

    If the model cannot run its forward on ``meta``, MACs are counted on a real CPU copy when it
    fits in memory, and are None otherwise.
    """
    model = create_model(name, num_classes, img_size, in_chans, device="meta")
    params = count_params(model)
    try:
        return params, count_macs(model, img_size, in_chans)
    except (NotImplementedError, RuntimeError):
        if not weights_fit(params, torch.device("cpu"), copies=2):
            return params, None
        model = create_model(name, num_classes, img_size, in_chans, device="cpu")
        return params, count_macs(model, img_size, in_chans)


def weights_fit(params: int, device: torch.device, copies: int) -> bool:
    """Whether ``copies`` float32 copies of ``params`` weights fit in half the free memory (True if unknown).

    A training step holds about 4 copies (weights, gradients, two AdamW moments) plus activations.
    """
    free = free_memory_bytes(device)
    return free is None or params * 4 * copies < free // 2


BENCH_FIELDS = (
    "model",
    "img_size",
    "in_chans",
    "num_classes",
    "params",
    "trainable_params",
    "macs",
    "flops",
    "infer_img_s",
    "train_img_s",
    "batch_size",
    "device",
    "peak_mem_mb",
    "peak_mem_kind",
    "note",
)


def bench_model(
    name: str,
    img_size: int | None = None,
    num_classes: int = 10,
    in_chans: int = 3,
    params: bool = True,
    flops: bool = True,
    throughput: bool = True,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    isolate: bool = True,
) -> dict[str, Any]:
    """Benchmark one named model; returns a row with every key of :data:`BENCH_FIELDS`.

    Params and MACs come from a ``meta`` build (so any model size is fine); throughput builds the
    model on ``device`` and is skipped, with a ``note``, when the model cannot fit there. On a CPU
    with ``isolate`` (the default) throughput and peak memory are measured in a new process, so
    the peak does not depend on the models benchmarked before (see :class:`Throughput`).
    Values not measured are None.
    """
    check_model_name(name)
    img_size = int(img_size or default_img_size(name))
    device = torch.device(device)
    row: dict[str, Any] = dict.fromkeys(BENCH_FIELDS)
    row.update(model=name, img_size=img_size, in_chans=in_chans, num_classes=num_classes)
    notes = []
    meta_model = create_model(name, num_classes, img_size, in_chans, device="meta")
    total, trainable = count_params(meta_model), count_params(meta_model, trainable_only=True)
    if params:
        row.update(params=total, trainable_params=trainable)
    if flops:
        _, macs = params_and_macs(name, img_size, num_classes, in_chans)
        row.update(macs=macs, flops=None if macs is None else 2 * macs)
        if macs is None:
            notes.append("MACs not counted: the model does not fit in memory")
    if throughput:
        if weights_fit(total, device, copies=4):
            if device.type == "cpu" and isolate:
                args = (name, num_classes, img_size, in_chans, batch_size, warmup, repeats)
                speed = _isolated_throughput(*args)
            else:  # CUDA: the peak statistics are reset per model, nothing to isolate
                model = create_model(name, num_classes, img_size, in_chans, device=device)
                speed = measure_throughput(model, img_size, in_chans, batch_size, device, warmup, repeats)
            row.update(asdict(speed), batch_size=batch_size, device=str(device))
            if speed.peak_mem_kind is None:
                notes.append("peak memory unavailable on this platform")
        else:
            notes.append(f"throughput skipped: {total / 1e6:.0f}M parameters do not fit on {device}")
    row["note"] = "; ".join(notes) or None
    return row
