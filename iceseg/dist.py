"""torch.distributed helpers for torchrun: init, rank/world queries, rank-0 printing, reductions.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as a single process
and no process group is created. NCCL is used on CUDA, gloo on CPU.
"""

import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(device: str = "auto", timeout_min: float = 30.0) -> tuple[int, int, torch.device]:
    """Initialise the process group from torchrun's environment, if present.

    Args:
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
        timeout_min: collective timeout in minutes; a dead rank then ends the job with an error
            instead of a hang.

    Returns:
        (rank, world_size, device). Without torchrun: (0, 1, device).
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1, dev
    dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                            timeout=datetime.timedelta(minutes=timeout_min))
    return dist.get_rank(), dist.get_world_size(), dev


def is_dist() -> bool:
    """True when a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def print0(*args, **kwargs) -> None:
    """print() on rank 0 only, flushed so torchrun logs interleave sensibly."""
    if get_rank() == 0:
        print(*args, **kwargs, flush=True)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (returns a new tensor; identity when not distributed)."""
    x = x.detach().clone()
    if is_dist():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= get_world_size()
    return x


def barrier() -> None:
    """Synchronise all ranks (no-op when not distributed)."""
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
