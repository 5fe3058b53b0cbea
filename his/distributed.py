"""Device choice and torch.distributed set-up, the one place every stage takes them from.

Single process on CPU or one GPU with no environment; DDP (nccl on CUDA, gloo on CPU) when the
torch.distributed variables are set (torchrun, or Slurm through hpc.launch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEVICE_OPTIONS = ("auto", "cpu", "cuda")


def choose_device(option: str = "auto") -> torch.device:
    """'auto' -> this process's GPU (LOCAL_RANK) when torch sees one, else the CPU; 'cpu'/'cuda'/'cuda:N' as given."""
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    if option == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(option)


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    device: torch.device
    started: bool  # whether setup_distributed started the process group (and so should end it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.started:
            dist.destroy_process_group()


def is_main_rank() -> bool:
    """Whether this process is (or, once setup_distributed has run, will be) rank 0: the one that writes."""
    return dist.get_rank() == 0 if dist.is_initialized() else int(os.environ.get("RANK", "0")) == 0


def setup_distributed(device_option: str = "auto") -> Distributed:
    """Join the process group when WORLD_SIZE > 1 (or one is already up); pin this rank's GPU."""
    device = choose_device(device_option)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    if dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), device, started)
    return Distributed(0, 1, device, started)
