"""Where work runs: the one device resolver, the one free-memory probe and the CPU's bf16 probe
every part uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astrocli.errors import AstroError


def resolve_device(
    spec: Any = "auto", local_rank: int = 0, option: str = "--device", allow_mps: bool = False
) -> Any:
    """``auto``: the local CUDA device when there is one, else the CPU; ``cuda`` means ``cuda:LOCAL_RANK``.

    ``spec`` may also be a ``torch.device``. ``option`` names the setting in the error messages
    (``--device`` on the command line, ``train.device`` in a recipe). ``allow_mps`` also accepts
    Apple's ``mps`` (inference runs there; training and its pipelines are written for CPU and CUDA).

    Raises:
        AstroError: an unknown device name, or CUDA asked for where torch sees none.
    """
    import torch  # lazy: keeps start-up torch-free

    text = str(spec)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise AstroError(f"unknown {option} '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if allow_mps and device.type == "mps":
        if not torch.backends.mps.is_available():
            raise AstroError(
                f"{_setting(option, spec)} but torch sees no MPS device; use {_setting(option, 'cpu')}"
            )
        return device
    if device.type not in ("cpu", "cuda"):
        raise AstroError(f"{option} must be auto, cpu, cuda or cuda:N, got '{spec}'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AstroError(
                f"{_setting(option, spec)} but torch sees no CUDA device; use {_setting(option, 'cpu')}"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def _setting(option: str, value: Any) -> str:
    """``option`` set to ``value`` as the user writes it: ``--device cpu`` on the command line,
    ``train.device=cpu`` in a recipe."""
    return f"{option} {value}" if option.startswith("--") else f"{option}={value}"


def free_memory_bytes(device: Any) -> int | None:
    """Free memory on ``device``: CUDA's free memory, else Linux's MemAvailable; None if unknown."""
    if device.type == "cuda":
        import torch  # lazy: keeps start-up torch-free

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_has_bf16_tiles() -> bool:
    """Whether this CPU multiplies bf16 in hardware with AMX tiles (Intel Sapphire Rapids and later).

    There oneDNN runs bf16 convolutions and matmuls as AMX kernels, 1.5-2x faster than fp32 for the
    models in ``BF16_CPU`` (astrocli/data/defaults.py); without AMX, bf16 is emulated or runs on
    narrower units and was not measured faster, so ``train.amp: auto`` keeps full precision.
    """
    import torch  # lazy: keeps start-up torch-free

    # torch's own probes (private: there is no public one). The second asks the kernel for the tile
    # state (Linux >= 5.16 grants it per process); without it oneDNN cannot use the tiles.
    has_tiles = getattr(torch.cpu, "_is_amx_tile_supported", None)
    enable_tiles = getattr(torch.cpu, "_init_amx", None)
    return bool(has_tiles is not None and enable_tiles is not None and has_tiles() and enable_tiles())
