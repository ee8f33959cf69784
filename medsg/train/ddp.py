"""Distributed data parallel bits: one fold on several GPUs (or CPU processes) under ``torchrun``.

Everything here is a no-op in a single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (defaults: a single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Start the process group when launched by torchrun: nccl on CUDA, gloo on CPU."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def _active() -> bool:
    """Whether a process group is running (torchrun with more than one rank)."""
    return dist.is_available() and dist.is_initialized()


def shutdown_distributed() -> None:
    """Wait for every rank, then tear the process group down (no-op without one)."""
    if _active():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Average a Python float across ranks (identity in a single process)."""
    if not _active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def broadcast_floats(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's values on every rank, so decisions (best epoch, early stop) agree everywhere."""
    if not _active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()
