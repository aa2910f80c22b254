"""Random parameters drawn on the host, and their trip to the device: what every batched augmentation
of the tensor pipeline shares.

Every random decision (crop boxes, flips, RandAugment ops and magnitudes, jitter factors, erasing
boxes) is drawn on the host from one seeded ``torch.Generator`` as a handful of small tensors, then
copied to the device with :func:`to_device`, which does not make the host wait. So the same seed gives
the same parameters on CPU and GPU, and an epoch has no host sync.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to ``device`` without making the host wait (pinned, non-blocking).

    A plain ``.to("cuda")`` from pageable memory waits for the stream: a host sync per call."""
    if tensor.device.type != "cpu" or device.type != "cuda":
        return tensor.to(device)  # no host memory involved, or no GPU: nothing to wait for
    return tensor.pin_memory().to(device, non_blocking=True)


def uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    """``n`` float64 values uniform in ``[low, high)``."""
    return torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low


def randint_inclusive(gen: torch.Generator, high: torch.Tensor) -> torch.Tensor:
    """Per-element integers uniform in ``[0, high]`` (python's ``random.randint(0, high)``)."""
    u = torch.rand(high.shape, generator=gen, dtype=torch.float64)
    return torch.minimum((u * (high + 1).double()).floor().long(), high.long())
