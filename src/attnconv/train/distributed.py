"""Distributed set-up in one place: PyTorch DDP under ``torchrun`` (nccl on GPUs, gloo on CPU)."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; under torchrun each rank gets its own GPU.

    Raises:
        ConfigError: an unknown device name, or a device this machine does not have
            (``cuda`` without CUDA, ``cuda:3`` on a machine with 2 GPUs, ``mps`` off Apple).
    """
    from attnconv.errors import ConfigError

    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was requested but CUDA is not available on this "
                              f"machine; use device=cpu or device=auto")
        count = torch.cuda.device_count()
        if device.index is not None:
            if device.index >= count:
                raise ConfigError(f"device={name} was requested but this machine has {count} "
                                  f"GPU(s) (cuda:0 to cuda:{count - 1})")
            return device
        return torch.device("cuda", local_rank % count)
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device={name} was requested but MPS (Apple GPU) is not available; "
                          f"use device=cpu or device=auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def setup(device_name: str, timeout_s: float = 300.0) -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    The timeout bounds how long the survivors wait when a worker dies (collectives fail
    after it instead of hanging forever).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, device)


def teardown(synchronize: bool = False) -> None:
    """Destroy the process group if one was created.

    With ``synchronize`` (a run that ended normally on every rank) the ranks first meet at a
    barrier, so that none tears its connections down while a peer still uses them, and
    unreachable objects that still hold the group (the DistributedDataParallel reducer) are
    collected first: otherwise gloo's worker threads can outlive the group and abort the
    process at exit ("terminate called without an active exception", exit code -6), which
    made the two-process test fail about once in 40 runs. After a failure there is no barrier
    (a dead peer would make it wait for the whole timeout).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if synchronize:
        with contextlib.suppress(RuntimeError):
            dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few scalars over all ranks (identity on one process)."""
    if not info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flags: list[bool], info: DistInfo) -> list[bool]:
    """For each flag, whether it is set on at least one rank (every rank gets the same answer).

    The run loop asks this every step ("was a stop signal received?", "is the loss
    non-finite?") so that all ranks stop at the same step instead of one rank leaving while the
    others wait in the next collective.
    """
    if not info.distributed:
        return list(flags)
    return [total > 0 for total in all_reduce_sum([float(f) for f in flags], info)]
