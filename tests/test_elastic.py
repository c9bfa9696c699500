"""Reliability at cluster scale: torchrun's elastic agent restarts a failed group and training resumes by
itself (SIGKILL of one worker, an exception in one worker), a failure no restart can fix ends the job without
a hang, two agents rendezvous over c10d like one, checkpoints stay small (best.pt without optimizer state),
``train.keep_last`` keeps exactly k snapshots, and a full disk stops the run with ``last.pt`` intact.

Faults are injected from outside the code under test: signals, and a ``sitecustomize`` module on the
PYTHONPATH of the run (Python imports it at start-up) that makes a chosen ``torch.save`` call fail with ENOSPC or
turns SIGUSR1 into an exception raised in the worker's main thread.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from iceseg.checkpoint import save_checkpoint
from iceseg.synthetic import make_glacier_dataset
from tests.conftest import ROOT, free_port
from tests.test_reliability import (  # noqa: F401 - _no_orphans: its autouse fixture, killing runs a failed test left
    LAUNCHED,
    MAX_ITERS,
    _args,
    _assert_losses_equal,
    _finish,
    _kill_all,
    _launch,
    _no_orphans,
    _rows,
    _wait_for_iter,
    _worker_pid,
)

SITECUSTOMIZE = '''
import os, signal
if os.environ.get("ICESEG_TEST_ENOSPC_AT"):  # the n-th checkpoint file this process writes fails: disk full
    import errno, torch
    _save, _calls = torch.save, [0]
    def _failing_save(obj, f, *args, **kwargs):
        if str(getattr(f, "name", f)).endswith(".pt.tmp"):  # save_checkpoint's file, not a pickled collective
            _calls[0] += 1
            if _calls[0] == int(os.environ["ICESEG_TEST_ENOSPC_AT"]):
                raise OSError(errno.ENOSPC, "No space left on device")
        return _save(obj, f, *args, **kwargs)
    torch.save = _failing_save
if os.environ.get("ICESEG_TEST_BLOCK_FILE"):  # reading this file never returns: a hung network mount
    import time, numpy
    _load = numpy.load
    def _blocking_load(file, *args, **kwargs):
        if str(file).endswith(os.environ["ICESEG_TEST_BLOCK_FILE"]):
            time.sleep(3600)
        return _load(file, *args, **kwargs)
    numpy.load = _blocking_load
def _raise(signum, frame):
    raise RuntimeError("test: an exception inside this worker's step (SIGUSR1)")
signal.signal(signal.SIGUSR1, _raise)
'''


def _hooks(tmp_path):
    folder = tmp_path / "hooks"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def _torchrun(torchrun_args, train_args, cwd, name, env=None):
    """Start ``python -m torch.distributed.run <torchrun_args> train.py <train_args>`` like tests.test_reliability
    (``torchrun_args`` None: ``python train.py``), with the hooks of ``SITECUSTOMIZE`` importable."""
    env = {**os.environ, "PYTHONPATH": f"{_hooks(cwd)}:{ROOT}", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           **(env or {})}
    run = [] if torchrun_args is None else ["-m", "torch.distributed.run", *torchrun_args]
    cmd = [sys.executable, *run, str(ROOT / "train.py"), *train_args[1:]]
    work_dir = next(a.split("=", 1)[1] for a in train_args if a.startswith("--train.work_dir="))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(cwd / f"{name}.out", "w"),
                            stderr=open(cwd / f"{name}.err", "w"))
    proc.out, proc.err, proc.work_dir = cwd / f"{name}.out", cwd / f"{name}.err", Path(work_dir)
    proc.n_rows = len(_rows(proc.work_dir))
    LAUNCHED.append(proc)
    return proc


ELASTIC = ["--standalone", "--nproc_per_node=2", "--max-restarts=3", "--monitor-interval=0.2"]


@pytest.mark.slow
def test_failure_a_restart_cannot_fix_ends_the_job_without_a_hang(tmp_path, glacier_root):
    t0 = time.time()
    proc = _torchrun(["--standalone", "--nproc_per_node=2", "--max-restarts=2", "--monitor-interval=0.2"],
                     _args(tmp_path / "run", glacier_root, "--data.batch_size=64"), tmp_path, "startup")
    out, err = _finish(proc, timeout=60, rc=None)
    assert proc.returncode != 0 and time.time() - t0 < 60
    assert err.count("samples: too few for batch 64 x 1 accumulation steps x 2 processes") == 3, err[-3000:]  # 3 tries


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigkill", "exception"])
def test_elastic_restart_resumes_by_itself_with_equal_losses(tmp_path, glacier_root, fault):
    ref = _launch(_args(tmp_path / "ref", glacier_root, "--train.ckpt_interval=100"), tmp_path, "ref", nproc=2)
    proc = _torchrun(ELASTIC, _args(tmp_path / "run", glacier_root), tmp_path, fault)
    _wait_for_iter(proc, 5)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGKILL if fault == "sigkill" else signal.SIGUSR1)
    out, err = _finish(proc, timeout=240)
    assert "resumed from" in out and f"done: {MAX_ITERS} iterations" in out, (out[-2000:], err[-3000:])
    if fault == "exception":
        assert "test: an exception inside this worker's step" in err
    _finish(ref)
    assert _assert_losses_equal(tmp_path / "ref", tmp_path / "run") > MAX_ITERS  # iterations 5.. ran twice


@pytest.mark.slow
def test_two_agents_over_c10d_equal_one_agent(tmp_path, glacier_root):
    ref = _launch(_args(tmp_path / "ref", glacier_root), tmp_path, "ref", nproc=2)
    port = free_port()
    agents = [_torchrun(["--nnodes=2", f"--node-rank={n}", "--nproc_per_node=1", "--rdzv-backend=c10d",
                         f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=iceseg-test"],
                        _args(tmp_path / "run", glacier_root), tmp_path, f"node{n}") for n in (0, 1)]
    for agent in agents:
        _finish(agent, timeout=240)
    _finish(ref)
    assert _assert_losses_equal(tmp_path / "ref", tmp_path / "run") == MAX_ITERS


@pytest.mark.slow
def test_best_pt_is_small_and_keep_last_keeps_k_snapshots(tmp_path, glacier_root):
    wd = tmp_path / "run"
    _finish(_launch(_args(wd, glacier_root, "--train.keep_last=2", "--train.val_interval=4"), tmp_path, "keep"))
    assert sorted(p.name for p in wd.glob("iter_*.pt")) == ["iter_000006.pt", "iter_000008.pt"]
    assert not list(wd.glob("*.tmp")) and not (wd / "best.prev.pt").exists()
    best, last = (torch.load(wd / f, weights_only=True) for f in ("best.pt", "last.pt"))
    assert "optimizer" not in best and "rng" not in best and "metrics" in best and "MCC" in best["metrics"]
    assert "optimizer" in last and (wd / "best.pt").stat().st_size < 0.5 * (wd / "last.pt").stat().st_size
    assert torch.load(wd / "iter_000008.pt", weights_only=True)["iter"] == MAX_ITERS
    scene = tmp_path / "scene.npy"  # predict.py (and test.py, in tests/test_train.py) read the slim best.pt
    np.save(scene, np.random.default_rng(0).random((40, 50, 5)).astype(np.float32))
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(scene), "--checkpoint", str(wd / "best.pt"),
                           "--out", str(tmp_path / "preds")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "preds" / "scene_pred.tif").is_file(), proc.stderr[-2000:]


@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_last_pt_stays_loadable(tmp_path, glacier_root):
    wd = tmp_path / "run"
    proc = _torchrun(["--standalone", "--nproc_per_node=2"], _args(wd, glacier_root), tmp_path, "enospc",
                     env={"ICESEG_TEST_ENOSPC_AT": "2"})  # rank 0's first save (iteration 2) works, the second fails
    out, err = _finish(proc, timeout=120, rc=None)
    assert proc.returncode != 0
    lines = [x for x in err.splitlines() if "cannot write checkpoint" in x]
    assert lines == [f"error: cannot write checkpoint {wd / 'last.pt'} (No space left on device); the previous "
                     f"last.pt is unchanged; stopped after iteration 4 (free space, then rerun to resume)"], err[-3000:]
    assert torch.load(wd / "last.pt", weights_only=True)["iter"] == 2 and not list(wd.glob("*.tmp"))


def test_save_checkpoint_on_a_full_disk_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"iter": 1}, path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*last\.pt \(No space left on device\); the previous "
                                      r"last\.pt is unchanged") as e:
        save_checkpoint({"iter": 2}, path)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["iter"] == 1 and not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["stall", "crash"])
def test_stalled_or_dead_dataloader_worker_names_the_sample_and_file(tmp_path, fault):
    """Reading one image never returns in the worker (as on a hung network mount): the run stops after
    ``data.timeout_s`` (stall), or at once when that worker is SIGKILLed (crash), naming the sample's files."""
    from tests.test_reliability import _children

    root = make_glacier_dataset(tmp_path / "data")
    timeout = 3 if fault == "stall" else 120
    proc = _torchrun(None, _args(tmp_path / "run", root, "--data.num_workers=1", f"--data.timeout_s={timeout}"),
                     tmp_path, fault, env={"ICESEG_TEST_BLOCK_FILE": "masked_0003.npy"})
    if fault == "crash":
        t0 = time.time()
        while not _children(proc.pid) and time.time() - t0 < 60:
            time.sleep(0.1)
        time.sleep(5)  # the worker reaches the file in the first epochs and blocks there
        for pid in _children(proc.pid):
            os.kill(pid, signal.SIGKILL)
    out, err = _finish(proc, timeout=90, rc=1)
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    cause = "DataLoader timed out after 3.0 seconds (data.timeout_s)" if fault == "stall" else "DataLoader worker (pid(s)"
    assert len(lines) == 1 and cause in lines[0], err[-3000:]
    assert lines[0].endswith(f"{root / 'masked_0003.npy'}, {root / '0003.tif'})"), lines[0]
    assert "while reading sample" in lines[0] and "Traceback" not in err
