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

import os
from pathlib import Path

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
