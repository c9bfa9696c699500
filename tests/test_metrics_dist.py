"""Two-process gloo check: ConfusionMatrix.all_reduce equals the single-process matrix on all data."""

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from iceseg.metrics import ConfusionMatrix, confusion_matrix

K = 4
WORLD_SIZE = 2


def _make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """(6, 16, 16) predictions and targets with ~5 % ignored (255) target pixels."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, K, (6, 16, 16), generator=g)
    pred = torch.where(
        torch.rand(6, 16, 16, generator=g) < 0.7, target, torch.randint(0, K, (6, 16, 16), generator=g)
    )
    target[torch.rand(6, 16, 16, generator=g) < 0.05] = 255
    return pred, target


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        pred, target = _make_data()
        cm = ConfusionMatrix(K)
        # non-padding shard, as train.py validation does: images rank, rank + 2, ...
        for i in range(rank, pred.shape[0], WORLD_SIZE):
            cm.update(pred[i], target[i])
        torch.save(cm.mat.clone(), f"{out_dir}/local_{rank}.pt")
        cm.all_reduce()
        torch.save(cm.mat, f"{out_dir}/reduced_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_two_processes_gloo(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "pg_init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    pred, target = _make_data()
    expected = confusion_matrix(pred, target, K)  # (K, K) on all 6 images in one process
    locals_ = [torch.load(tmp_path / f"local_{r}.pt") for r in range(WORLD_SIZE)]
    assert not torch.equal(locals_[0], expected)  # each rank alone saw only half the data
    assert torch.equal(locals_[0] + locals_[1], expected)
    for r in range(WORLD_SIZE):
        reduced = torch.load(tmp_path / f"reduced_{r}.pt")
        assert reduced.dtype == torch.int64
        assert torch.equal(reduced, expected), f"rank {r}"
