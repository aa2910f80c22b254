"""DistributedDataParallel helpers: torchrun detection, process groups, rank-0 writes, metric reduction.

``torchrun --nproc-per-node N -m astrocli train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
a plain ``astro train`` sets none of them and runs as a world of one, with every helper here a no-op.
Nothing here pickles: ``broadcast_object_list`` would, so strings travel as uint8 tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def detect_torchrun() -> DistInfo:
    """Read the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a world of one if unset."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=world_size,
    )


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group: nccl for CUDA devices, gloo for the CPU. A no-op for a world of one."""
    if not info.is_distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over every process, in place, and return it (unchanged for a world of one)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_process(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is True on any process: every rank stops at the same step after a signal."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(value).item() > 0)


def broadcast_string(text: str, device: torch.device) -> str:
    """Send rank 0's ``text`` to every process (as uint8 tensors, to avoid pickle)."""
    if not (dist.is_available() and dist.is_initialized()):
        return text
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8, device=device)
    length = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    buffer = torch.zeros(int(length.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buffer.copy_(data)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode("utf-8")


def barrier() -> None:
    """Wait for every process (a no-op for a world of one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
