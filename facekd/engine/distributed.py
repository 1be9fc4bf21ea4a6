"""torch.distributed for the engine: start from torchrun's environment, rank helpers, collectives.

Launched by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set) the process group
is created with NCCL on CUDA and gloo on CPU; a plain ``python -m`` run has no process group and
every helper here degrades to its one-process meaning. Only rank 0 logs, evaluates and writes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from facekd.log import get_logger

log = get_logger(__name__)

__all__ = ["DistributedError", "DistInfo", "init_distributed", "shutdown_distributed", "is_distributed",
           "rank", "world_size", "is_main", "barrier", "all_reduce_max", "all_gather_objects",
           "broadcast_object", "gather_rows", "select_device", "DEFAULT_TIMEOUT_S", "timeout_s"]

BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
"""Process-group backend by device type."""
DEFAULT_TIMEOUT_S = 1800.0
"""Default process-group timeout (``--dist-timeout``): the longest any collective may wait."""
_TIMEOUT = [DEFAULT_TIMEOUT_S]


class DistributedError(RuntimeError):
    """A distributed launch that cannot work (bad environment, backend for the device missing)."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes files)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun's environment variables are present with a world size above one."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device when available, else CPU; other names as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"device '{name}' requested but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def timeout_s() -> float:
    """The process-group timeout in seconds (what a rank may wait in one collective)."""
    return _TIMEOUT[0]


def init_distributed(device_name: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the torchrun job when launched by torchrun (NCCL on CUDA, gloo on CPU) with collectives
    timing out after ``timeout_s`` seconds; else one process."""
    if not timeout_s > 0:
        raise DistributedError(f"the distributed timeout must be > 0 seconds, got {timeout_s}")
    _TIMEOUT[0] = float(timeout_s)
    if not launched_by_torchrun():
        return DistInfo(0, 1, 0, select_device(device_name))
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise DistributedError(f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r} is not an integer") from err
    device = select_device(device_name, local_rank)
    if not dist.is_initialized():
        backend = BACKENDS.get(device.type)
        if backend is None or not dist.is_backend_available(backend):
            raise DistributedError(f"no torch.distributed backend for device type '{device.type}'")
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
    log.info("distributed: %d processes, backend %s, this is rank %d on %s",
             info.world_size, dist.get_backend(), info.rank, device)
    return info


def shutdown_distributed() -> None:
    """Destroy the process group when there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 or in a single-process run."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_max(value: float, device: torch.device) -> float:
    """The maximum of ``value`` over all ranks (the value itself in one process)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum of ``t`` over all ranks (unchanged in one process); returns ``t``."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in one process); picklable objects only."""
    if not is_distributed():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(t: torch.Tensor, sizes: list[int], group: Any = None) -> torch.Tensor:
    """Concatenate each rank's row block of ``t`` (rank r of ``group`` holds ``sizes[r]`` rows) in rank
    order, without autograd; a detached copy in one process."""
    if not is_distributed():
        return t.detach().clone()
    pad = max(sizes) - t.shape[0]
    padded = torch.cat([t.detach(), t.new_zeros((pad, *t.shape[1:]))]) if pad else t.detach().contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])
