"""Count process aborts at exit: the 2-process gloo train-then-test of tests/test_train.py, repeated.

    python dev/exit_aborts.py --runs 30                 # -> "aborts: 0 of 30 runs (0 train, 0 test)"
    python dev/exit_aborts.py --runs 30 --load 2        # with 2 busy-looping processes beside it (load)

Each run trains ``unetpp_glacier_debug`` for one epoch under ``torchrun --nproc_per_node=2`` (gloo), then
scores its ``best.pt`` with ``test.py`` in 2 processes. A run counts as an abort when a process died by SIGABRT
(exit status -6 or 134, or torchrun's ``Signal 6``) or printed ``terminate called`` (a C++ ``std::terminate``,
e.g. a joinable thread destroyed at exit). Dev tool: not part of the test suite (it takes minutes).
"""

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def aborted(proc: subprocess.CompletedProcess) -> bool:
    """True when a process of this command died by SIGABRT or std::terminate."""
    text = proc.stdout + proc.stderr
    return proc.returncode in (-6, 134) or "terminate called" in text or "Signal 6 (SIGABRT)" in text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--load", type=int, default=0, help="busy-looping processes running beside the runs")
    args = ap.parse_args()
    from iceseg.synthetic import make_glacier_dataset

    tmp = Path(tempfile.mkdtemp(prefix="iceseg_exit_"))
    data = make_glacier_dataset(tmp / "glacier_data")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    stop = mp.Event()
    hogs = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(args.load)]
    for h in hogs:
        h.start()
    counts = {"train": 0, "test": 0, "failed": 0}
    t0 = time.time()
    try:
        for i in range(args.runs):
            wd = tmp / f"run{i}"
            train = subprocess.run([*torchrun, str(ROOT / "train.py"), "--config", "unetpp_glacier_debug",
                                    f"--data.root={data}", f"--train.work_dir={wd}", "--train.max_epochs=1"],
                                   cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
            test = subprocess.run([*torchrun, str(ROOT / "test.py"), "--config", "unetpp_glacier_debug",
                                   "--checkpoint", str(wd / "best.pt"), f"--data.root={data}",
                                   "--out", str(wd / "metrics.json")],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
            for name, proc in (("train", train), ("test", test)):
                if aborted(proc):
                    counts[name] += 1
                    print(f"run {i} {name}: abort (exit {proc.returncode})\n{proc.stderr[-1500:]}", flush=True)
                elif proc.returncode:
                    counts["failed"] += 1
                    print(f"run {i} {name}: exit {proc.returncode}\n{proc.stderr[-1500:]}", flush=True)
            print(f"run {i + 1}/{args.runs} done ({time.time() - t0:.0f} s)", flush=True)
    finally:
        stop.set()
        for h in hogs:
            h.join()
    print(f"aborts: {counts['train'] + counts['test']} of {args.runs} runs ({counts['train']} train, "
          f"{counts['test']} test); other failures: {counts['failed']}; load {args.load}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
