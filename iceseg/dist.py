"""torch.distributed helpers for torchrun: init, rank/world queries, rank-0 printing, reductions, clean exits.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as a single process and no process
group is created. NCCL is used on CUDA, gloo on CPU (and for host-side flags, :func:`any_rank`).
"""

import datetime
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist

_HOST_GROUP = None  # gloo group for any_rank under NCCL (None: the default group), so a flag never waits on a GPU


def init_distributed(device: str = "auto", timeout_min: float = 30.0) -> tuple[int, int, torch.device]:
    """Join torchrun's process group, if launched by it: ``(rank, world_size, device)``, else ``(0, 1, device)``.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda"; ``timeout_min``: collective timeout, so a dead
    rank ends the job instead of hanging it. The group is built on torchrun's store under a key prefix per
    restart attempt (``TORCHELASTIC_RESTART_COUNT``): a group restarted by ``--max-restarts`` never reads the
    addresses its dead predecessor left in the same store (the default init connects to them and fails).
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, dev
    timeout = datetime.timedelta(minutes=timeout_min)
    hosted = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # else rank 0 serves the store
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not hosted, timeout=timeout)
    store = dist.PrefixStore(f"iceseg/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    global _HOST_GROUP
    _HOST_GROUP = dist.new_group(backend="gloo") if use_cuda else None
    return rank, world, dev


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
    return print(*args, **kwargs, flush=True) if get_rank() == 0 else None


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (returns a new tensor; identity when not distributed)."""
    x = x.detach().clone()
    if is_dist():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= get_world_size()
    return x


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any (a host-side all-reduce; every rank calls it alike)."""
    if not is_dist():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return bool(t.item())


def barrier() -> None:
    """Synchronise all ranks (no-op when not distributed)."""
    return dist.barrier() if is_dist() else None


def fail(message: str, code: int = 1, rank0_only: bool = True) -> NoReturn:
    """Exit with ``message`` on stderr, no traceback; every rank calls it at one point (an error all meet, or one
    agreed on by :func:`any_rank`). ``rank0_only``: printed once; False: each rank prints its own (or ``""``)."""
    rank = get_rank() if is_dist() else int(os.environ.get("RANK", 0))  # torchrun's rank before the group exists
    if message and (rank == 0 or not rank0_only):
        print(message, file=sys.stderr, flush=True)
    cleanup()
    sys.exit(code)


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
