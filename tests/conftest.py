"""Shared fixtures: the real-imagery folder, a script runner, and a free TCP port."""

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(args: list[str], cwd: Path, nproc: int = 1, timeout: int = 600,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run ``train.py``/``test.py`` (repo root scripts) in ``cwd``; with ``nproc > 1`` under torchrun (gloo)."""
    script, *rest = args
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1" if nproc > 1 else "2",
           "PYTHONUNBUFFERED": "1"}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / script), *rest]
    else:
        cmd = [sys.executable, str(ROOT / script), *rest]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
