"""Shared fixtures: the real-imagery folder, a script runner, a free TCP port, and a score comparison."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real imagery, present beside the checkout in CI); skipped elsewhere."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (it sits beside the checkout in the project's CI)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def glacier_root(tmp_path_factory) -> Path:
    """Synthetic glacier tiles written once per module, before any run (concurrent runs must not race to
    write them)."""
    from iceseg.synthetic import make_glacier_dataset

    return make_glacier_dataset(tmp_path_factory.mktemp("glacier_data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(args: list[str], cwd: Path, nproc: int = 1, timeout: int = 600,
               check: bool = True, threads: int | None = None) -> subprocess.CompletedProcess:
    """Run ``train.py``/``test.py`` (repo root scripts) in ``cwd``; with ``nproc > 1`` under torchrun (gloo).

    OpenMP threads per process: ``threads``, else 1 under torchrun and 2 otherwise (the thread count
    changes CPU float sums, so a score is reproduced exactly only at the count it was computed with)."""
    script, *rest = args
    omp = threads or (1 if nproc > 1 else 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(omp), "PYTHONUNBUFFERED": "1"}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / script), *rest]
    else:
        cmd = [sys.executable, str(ROOT / script), *rest]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def assert_scores_equal_validation(work_dir: Path, metrics: dict, ckpt: str = "best.pt") -> int:
    """Every score test.py wrote (``metrics``) equals the one train.py logged when it saved ``ckpt``
    (to 1e-12 relative: sums of per-image floats are added in another order across ranks).

    Returns the number of scores compared (a run that logged none fails here, not silently)."""
    import json

    import torch

    it = torch.load(work_dir / ckpt, weights_only=True)["iter"]
    rows = [json.loads(x) for x in (work_dir / "log.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["event"] == "val" and r["iter"] == it][-1]
    shared = [k for k in val if k in metrics and k not in ("event", "iter", "epoch")]
    assert len(shared) > 3, shared
    def same(a, b) -> bool:  # float sums over images are added in another order across ranks: 1e-12 relative
        if isinstance(a, list):
            return len(a) == len(b) and all(map(same, a, b))
        return a == b or (a != a and b != b) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)

    diff = {k: (val[k], metrics[k]) for k in shared if not same(val[k], metrics[k])}
    assert not diff, f"test.py differs from the validation that saved {ckpt} (iteration {it}): {diff}"
    return len(shared)
