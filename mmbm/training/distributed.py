"""Distributed training through torch.distributed: start-up from torchrun, collectives, device choice.

Owns ``Distributed`` (rank, world size, device; a single process is world size
1 with no process group) and ``setup_distributed`` / ``teardown``. Under
``torchrun --nproc-per-node N -m mmbm.training ...`` the environment variables
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT are set; the process
group uses NCCL on CUDA and gloo on the CPU. ``gather_with_grad`` concatenates
a tensor from every rank with gradients flowing back to each rank's piece
(torch.distributed.nn.functional.all_gather), which the contrastive loss needs
to see the global batch. Imports ``mmbm.device`` only.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from mmbm.device import select_device

logger = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(minutes=30)  # rank 0 validates alone; the others wait this long at most


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean of a (detached) tensor over all ranks; the tensor itself when alone."""
        if not self.enabled:
            return values
        out = values.detach().clone().to(self.device)
        dist.all_reduce(out)
        return out / self.world_size

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a (detached) tensor over all ranks."""
        if not self.enabled:
            return values
        out = values.detach().clone().to(self.device)
        dist.all_reduce(out)
        return out

    def broadcast(self, values: torch.Tensor) -> torch.Tensor:
        """Rank 0's copy of ``values`` on every rank."""
        if not self.enabled:
            return values
        out = values.detach().clone().to(self.device)
        dist.broadcast(out, src=0)
        return out

    def gather_objects(self, value: object) -> list[object]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def gather_with_grad(x: torch.Tensor, dist_state: Distributed) -> torch.Tensor:
    """(B_local, ...) on each rank -> (B_local * world, ...) in rank order; gradients reach every piece."""
    if not dist_state.enabled:
        return x
    return torch.cat(dist_nn.all_gather(x), dim=0)


def choose_device(name: str, local_rank: int) -> torch.device:
    """mmbm.device.select_device, pinned to this process's GPU (LOCAL_RANK) when it picks CUDA."""
    device = select_device(name)
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def setup_distributed(device_name: str) -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=TIMEOUT)
        logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, device)
    return Distributed(rank, world_size, local_rank, device)


def teardown(dist_state: Distributed) -> None:
    if dist_state.enabled and dist.is_initialized():
        dist.destroy_process_group()
