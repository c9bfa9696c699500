"""Reliability: exact resume after SIGKILL (world size 1 and 2, gloo), the last.pt fall-back, a clean
SIGTERM stop on which all ranks agree, a dead rank ending the job with a message, and the non-finite guard.

The training runs use ``unetpp_glacier_debug`` with ``--train.deterministic=True`` and
``--train.log_interval=1``; kills are timed by polling ``log.jsonl`` (never by sleeping blindly).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from iceseg.checkpoint import load_checkpoint, prev_path, rng_state, save_checkpoint, set_rng_state
from tests.conftest import ROOT, free_port

MAX_ITERS = 8
ITER_ARGS = ["--train.max_epochs=0", f"--train.max_iters={MAX_ITERS}", "--train.val_interval=100",
             "--train.ckpt_interval=2", "--train.deterministic=True", "--train.log_interval=1"]


LAUNCHED = []  # runs started with _launch; any still alive after a test are killed


@pytest.fixture(autouse=True)
def _no_orphans():
    yield
    while LAUNCHED:
        proc = LAUNCHED.pop()
        if proc.poll() is None:
            _kill_all(proc)



def _args(work_dir, data_root, *extra):
    return ["train.py", "--config", "unetpp_glacier_debug", f"--train.work_dir={work_dir}",
            f"--data.root={data_root}", *ITER_ARGS, *extra]


def _rows(work_dir, event="train"):
    """Complete log.jsonl rows of one event (a line still being written is ignored)."""
    f = work_dir / "log.jsonl"
    lines = f.read_text().split("\n")[:-1] if f.is_file() else []  # drops "" or a partial last line
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _launch(args, cwd, name, nproc=1):
    """Start train.py (under torchrun for nproc > 1); stdout/stderr go to ``cwd/name.{out,err}``.

    Every run uses one OpenMP thread per process: exact repeats need the same thread count
    (it fixes the summation order), and a reference run can then share the two cores with another.
    """
    script, *rest = args
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / script), *rest] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
        "127.0.0.1", "--master_port", str(free_port()), str(ROOT / script), *rest]
    work_dir = next(Path(a.split("=", 1)[1]) for a in rest if a.startswith("--train.work_dir="))
    n_rows = len(_rows(work_dir))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(cwd / f"{name}.out", "w"),
                            stderr=open(cwd / f"{name}.err", "w"))
    proc.out, proc.err, proc.work_dir, proc.n_rows = cwd / f"{name}.out", cwd / f"{name}.err", work_dir, n_rows
    LAUNCHED.append(proc)
    return proc


def _wait_for_iter(proc, it, timeout=180):
    """Poll log.jsonl until this run logs iteration ``it`` or later; fail if it ends or stalls first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(r["iter"] >= it for r in _rows(proc.work_dir)[proc.n_rows:]):
            return
        assert proc.poll() is None, f"run ended early:\n{proc.out.read_text()[-2000:]}\n{proc.err.read_text()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"iteration {it} not reached in {timeout} s")


def _finish(proc, timeout=180, rc=0):
    """Wait for the run to end by itself (no hang) and check its exit status; returns (stdout, stderr)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        _kill_all(proc)
        raise AssertionError(f"no exit within {timeout} s (hang):\n{proc.err.read_text()[-3000:]}") from e
    out, err = proc.out.read_text(), proc.err.read_text()
    assert rc is None or proc.returncode == rc, (proc.returncode, out[-2000:], err[-4000:])
    return out, err


def _children(pid):
    """PIDs whose parent is ``pid`` (torchrun starts each worker in a session of its own)."""
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return out


def _kill_all(proc):
    """SIGKILL the run and all its processes at once (a lost node)."""
    pids = [proc.pid]
    for p in pids:
        pids += _children(p)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    t0 = time.time()
    while any(map(_alive, pids[1:])) and time.time() - t0 < 10:
        time.sleep(0.02)  # orphaned workers are not our children: wait until they are gone


def _alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _worker_pid(torchrun_pid, rank):
    """PID of the torchrun worker with RANK=rank."""
    for pid in _children(torchrun_pid):
        if f"RANK={rank}".encode() in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
            return pid
    raise AssertionError(f"no worker with RANK={rank}")


def _assert_losses_equal(ref_dir, run_dir):
    """Every loss the interrupted run logged (repeats after a resume included) equals the reference."""
    ref = {r["iter"]: r["loss"] for r in _rows(ref_dir)}
    rows = _rows(run_dir)
    assert sorted(ref) == list(range(1, MAX_ITERS + 1)) and {r["iter"] for r in rows} == set(ref)
    for r in rows:
        assert r["loss"] == ref[r["iter"]], (r["iter"], r["loss"], ref[r["iter"]])
    return len(rows)


def test_sigkill_at_three_iterations_and_truncated_last_pt_resume_exactly_ws1(tmp_path, glacier_root):
    extra = ("--data.num_workers=1",)  # one loader worker: its seeds must repeat after a resume too
    ref = _launch(_args(tmp_path / "ref", glacier_root, *extra, "--train.ckpt_interval=100"), tmp_path, "ref")
    wd = tmp_path / "run"
    args = _args(wd, glacier_root, *extra)
    for kill_at in (2, 5, 7):
        proc = _launch(args, tmp_path, f"kill{kill_at}")
        _wait_for_iter(proc, kill_at)
        _kill_all(proc)
        if kill_at == 5:  # iteration 5 is logged, so a save at 4 is complete; now a crash truncates last.pt
            prev_iter = torch.load(prev_path(wd / "last.pt"), weights_only=True)["iter"]
            data = (wd / "last.pt").read_bytes()
            (wd / "last.pt").write_bytes(data[: len(data) // 2])
    out, err = _finish(_launch(args, tmp_path, "final"))
    assert re.search(r"last\.pt is unreadable .*falling back to .*last\.prev\.pt", (tmp_path / "kill7.err").read_text())
    assert f"resumed from {wd / 'last.prev.pt'} at iteration {prev_iter}" in (tmp_path / "kill7.out").read_text()
    assert "resumed from" in out and f"done: {MAX_ITERS} iterations" in out
    _finish(ref)
    assert _assert_losses_equal(tmp_path / "ref", wd) > MAX_ITERS  # some iterations ran twice, identically


def test_sigterm_agreement_rank_death_and_sigkill_resume_exactly_ws2(tmp_path, glacier_root):
    ref = _launch(_args(tmp_path / "ref", glacier_root, "--train.ckpt_interval=100"), tmp_path, "ref", nproc=2)
    wd = tmp_path / "run"
    args = _args(wd, glacier_root, "--train.dist_timeout_min=1")
    # 1) SIGKILL of the whole job (a lost node)
    proc = _launch(args, tmp_path, "kill_all_1", nproc=2)
    _wait_for_iter(proc, 2)
    _kill_all(proc)
    # 2) SIGTERM to rank 1 only: both ranks finish the step, agree, save a complete last.pt and exit 143
    proc = _launch(args, tmp_path, "sigterm", nproc=2)
    _wait_for_iter(proc, 3)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGTERM)
    out, err = _finish(proc, rc=None)
    stopped = re.search(r"stopped by SIGTERM after iteration (\d+): last\.pt saved", out)
    assert stopped and "rank 1: SIGTERM received" in out, (out[-2000:], err[-3000:])
    assert "collective operation failed" not in err and "exitcode  : 143" in err  # the first rank to exit
    ckpt = torch.load(wd / "last.pt", weights_only=True)  # complete: loads without the fall-back
    m = int(stopped.group(1))
    assert ckpt["iter"] == m and len(ckpt["rng"]) == 2 and m <= MAX_ITERS - 3
    # 3) SIGKILL of rank 1 only: rank 0 must not hang; the job ends by itself with a clear message
    proc = _launch(args, tmp_path, "kill_rank1", nproc=2)
    _wait_for_iter(proc, m + 1)
    t0 = time.time()
    os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL)
    out, err = _finish(proc, timeout=60, rc=None)
    assert proc.returncode != 0 and time.time() - t0 < 25
    assert "rank 0: a collective operation failed: another process has most likely died" in err, err[-3000:]
    # 4) SIGKILL of the whole job again, then run to the end
    proc = _launch(args, tmp_path, "kill_all_2", nproc=2)
    _wait_for_iter(proc, m + 3)
    _kill_all(proc)
    out, err = _finish(_launch(args, tmp_path, "final", nproc=2))
    assert "resumed from" in out and f"done: {MAX_ITERS} iterations" in out
    _finish(ref)
    _assert_losses_equal(tmp_path / "ref", wd)


def test_nan_loss_is_skipped_counted_logged_and_stops_after_patience(tmp_path, glacier_root):
    wd = tmp_path / "run"
    out, err = _finish(_launch(_args(wd, glacier_root, "--train.debug_nan_iters=[1, 3, 4]", "--train.max_iters=20",
                                     "--train.nonfinite_patience=2", "--train.ckpt_interval=100",
                                     "--train.deterministic=False"), tmp_path, "nan"), rc=1)
    assert "iter 1: loss nan, grad norm nan: step skipped (1 non-finite in a row, 1 skipped in all)" in out
    assert "stopping: 2 consecutive steps with a non-finite loss or gradient (iterations 3-4)" in out
    skips = _rows(wd, "skip")
    assert [(r["iter"], r["in_a_row"], r["skipped"]) for r in skips] == [(1, 1, 1), (3, 1, 2), (4, 2, 3)]
    assert [(r["iter"], r["skipped"]) for r in _rows(wd)] == [(2, 1)]  # the one step that was taken
    ckpt = torch.load(wd / "last.pt", weights_only=True)
    assert ckpt["iter"] == 4 and ckpt["skipped"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_bad_choice_lists_valid_values(tmp_path):
    out, err = _finish(_launch(_args(tmp_path / "run", tmp_path, "--train.best_mode=maximum"), tmp_path, "choice"), rc=2)
    assert err.strip() == "error: --train.best_mode='maximum': must be one of 'max', 'min'"


# ------------------------------------------------------------------ checkpoint unit tests (fast)

def test_atomic_save_keeps_previous_and_falls_back_when_missing_or_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"iter": 1, "w": torch.ones(3)}, path)
    save_checkpoint({"iter": 2, "w": torch.ones(3)}, path)
    assert torch.load(prev_path(path), weights_only=True)["iter"] == 1
    assert not list(tmp_path.glob("*.tmp"))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(UserWarning, match="falling back"):
        assert load_checkpoint(path)["iter"] == 1
    path.unlink()  # a crash between the two renames of an older writer: only .prev.pt is left
    with pytest.warns(UserWarning, match="is missing; falling back"):
        assert load_checkpoint(path)["iter"] == 1
    prev_path(path).write_bytes(b"garbage")
    save_checkpoint({"iter": 3}, path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*last\.prev\.pt: not a PyTorch checkpoint"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_checkpoint(path)


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    import random

    random.seed(3)
    save_checkpoint({"rng": [rng_state()]}, tmp_path / "r.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"][0])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
