"""``train.compile``: whether a run compiles, and where inductor keeps the kernels it compiled.

``auto`` (the default) compiles on CUDA, where ``torch.compile`` measured 1.8-1.9x the eager
training speed of cct_7_3x1_32 on an H200 (issue 22: MFU 11.8% -> 20.9%), and trains eagerly on the
CPU except for the models in :data:`CPU_COMPILE_FASTER`, which ``benchmarks/compile_speed.py``
measured faster compiled there. ``true``/``false`` force it either way. A failing compile falls back
to eager with one warning (astrocli/engine/trainer.py).

Compiled kernels are kept by inductor's own on-disk caches (the FX graph cache and the AOTAutograd
cache, both on by default in torch 2.11 and 2.14) in one stable folder, so the runs of an ``astro cv`` or
``astro tune`` (and later commands) load what the first run compiled instead of compiling again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from astrocli.errors import first_line
from astrocli.recipe import Recipe

# Models whose whole CPU training run is faster compiled (benchmarks/compile_speed.py,
# docs/performance.md). Empty: on the 2-core development CPU (torch 2.14.1, batch 32, one thread)
# cct_2_3x2_32 trained 0.85x as fast compiled, and resnet20 1.46-1.49x as fast once compiled, but its
# first compile took 114 s (3.9 s from a warm cache), more than a short CPU run saves, and
# channels-last (issue 21) already doubles its eager step. A long CPU run: train.compile=true.
CPU_COMPILE_FASTER: frozenset[str] = frozenset()

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def wants_compile(setting: bool | str, device_type: str, model_name: str) -> bool:
    """Whether ``train.compile`` (``auto``, true or false) compiles ``model_name`` on ``device_type``."""
    if setting == "auto":
        return device_type == "cuda" or model_name in CPU_COMPILE_FASTER
    return bool(setting)


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels: ``$TORCHINDUCTOR_CACHE_DIR`` when set, else astro's
    user cache folder (``~/.cache/astro/inductor`` on Linux), which outlives ``/tmp`` cleaning."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("astro")) / "inductor"


def use_compile_cache() -> Path:
    """Point inductor at :func:`compile_cache_dir` (before the first compile of the process; child
    processes, such as ``astro cv --parallel``'s runs, inherit it). Returns the folder."""
    folder = compile_cache_dir()
    os.environ[CACHE_ENV] = str(folder)
    return folder


def failure_line(error: Exception) -> str:
    """The one warning line of a compile that failed at its first call."""
    return f"torch.compile failed ({type(error).__name__}: {first_line(error)}); training eagerly"


def try_compile(module: nn.Module, warn: Callable[[str], None]) -> tuple[nn.Module, bool]:
    """``torch.compile(module)`` on the stable cache folder; ``(module, False)`` with one warning when
    torch.compile itself is unavailable (compiling proper happens at the first call: :func:`warm_up`)."""
    use_compile_cache()  # one stable folder: the runs of a cv or tune reuse the kernels
    try:
        return torch.compile(module), True
    except Exception as exc:  # compile support varies by platform and torch build
        warn(f"torch.compile is unavailable ({type(exc).__name__}: {first_line(exc)}); training eagerly")
        return module, False


def warm_up(
    train_model: nn.Module,
    model: nn.Module,
    recipe: Recipe,
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
    no_sync: contextlib.AbstractContextManager,
) -> tuple[float, Exception | None]:
    """One forward and backward pass of ``train_model`` (the compiled wrapper of ``model``) on a batch
    of zeros: AOTAutograd compiles the backward graph at its first use, so both compile here. The pass
    leaves no trace: the RNG states, the buffers (e.g. BatchNorm statistics) and the gradients are put
    back. Returns the seconds it took and the exception compiling raised (None: it worked)."""
    start, error = time.perf_counter(), None
    d = recipe.data
    images = torch.zeros(recipe.train.batch_size, d.in_chans, d.img_size, d.img_size, device=device)
    if recipe.train.channels_last is True:  # "auto" is resolved before (engine/launch.py)
        images = images.to(memory_format=torch.channels_last)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    cuda = [device.index] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), no_sync:
            model.train()
            with autocast:
                out = train_model(images)
            out.float().sum().backward()
    except Exception as exc:  # a failing backend raises many kinds (missing compiler, unsupported op)
        error = exc
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    for p in model.parameters():
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, error
