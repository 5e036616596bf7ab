"""torch.distributed for itm's commands, started the ecosystem's standard way: ``torchrun``.

Under torchrun (WORLD_SIZE > 1 in the environment) the commands call ``setup(device)`` once: the
process group uses NCCL on GPUs (each process on ``cuda:LOCAL_RANK``, see ``itm.devices``) and gloo
on CPUs. Without torchrun everything here is a no-op for one process.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when started by torchrun (or any launcher that sets the env:// variables) with >1 process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device | None = None, timeout_minutes: float = 30.0) -> None:
    """Join the process group when launched by torchrun (idempotent): NCCL when the process computes
    on a GPU (``device``, by default any visible one), gloo on the CPU."""
    if launched() and not dist.is_initialized():
        on_gpu = torch.cuda.is_available() if device is None else device.type == "cuda"
        if on_gpu:  # NCCL's collectives run on the current GPU: this process's own
            torch.cuda.set_device(device if device is not None and device.index is not None
                                  else int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(minutes=timeout_minutes))
        # a process group left to the interpreter's teardown can abort the process (SIGABRT seen
        # with gloo): wait for the others, then close it
        atexit.register(teardown)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Only rank 0 prints, logs and writes files."""
    return rank() == 0


def shard(n: int, index: int | None = None, count: int | None = None) -> slice:
    """The contiguous part of range(n) that process ``index`` of ``count`` handles (sizes differ by at most 1)."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def gather_rows(part: torch.Tensor) -> torch.Tensor:
    """Every process's rows (dim 0) in rank order, on every process; parts may differ in length."""
    if world_size() == 1:
        return part
    device = collective_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([part.shape[0]], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *part.shape[1:]), dtype=part.dtype, device=device)
    padded[: part.shape[0]] = part
    gathered = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())].cpu() for g, s in zip(gathered, sizes, strict=True)])


def collective_device() -> torch.device:
    """Where collective tensors must live: the process's GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
