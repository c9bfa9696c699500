"""Time, minor page faults and resident-memory rise of each train step in a process of its own.

    python dev/step_faults.py --case swin_l_train_512 --impl ours|timm [--malloc keep|glibc] [--warmup 2] [--steps 4]

Dev tool (not part of the library). Builds one case of ``dev/benchmark.py`` (same weights and input, ours as its
config runs it), keeps implementation ``--impl``, and with ``--malloc keep`` applies
``iceseg.fast.keep_freed_memory`` (as ``train.py`` does with ``train.malloc="keep"``). After ``--warmup`` passes it
times ``--steps`` passes and counts the minor page faults of each (``getrusage``: pages the kernel mapped on first
touch), then prints one line: the times (s), the faults per step, and how far the resident memory rose over all
passes (MiB, ``VmHWM`` minus ``VmRSS`` after ``malloc_trim(0)`` before the first). Run each implementation in a
few processes: the allocator's state, and so the faults, differ between processes.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402  (puts the checkout on sys.path)
import torch  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="swin_l_train_512", help=f"one of: {', '.join(benchmark.CASES)}")
    ap.add_argument("--impl", default="ours", help="ours or a reference the case builds (timm, mmseg, smp, ...)")
    ap.add_argument("--malloc", choices=("keep", "glibc"), default="glibc")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = benchmark.CASES[args.case][1]
    built = getattr(benchmark, f"case_{args.case}")(settings, torch.device("cpu"), False, args.impl != "ours")
    if args.impl not in built["impls"]:
        raise SystemExit(f"{args.case}: no implementation {args.impl!r} (found: {built['refs_found']})")
    fn = built["impls"][args.impl]
    built.clear()  # drop the other implementation
    if args.malloc == "keep":
        from iceseg.fast import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("--malloc keep: glibc's mallopt is not available here")
    device = torch.device("cpu")
    rss0 = benchmark._reset_peak(device)
    for _ in range(args.warmup):
        fn()
    times, faults = [], []
    for _ in range(args.steps):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        fn()
        times.append(round(time.perf_counter() - t0, 3))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(f"{args.case} {args.impl} malloc={args.malloc}: times_s {times} minor_faults {faults} "
          f"rss_rise_mib {benchmark._peak(device) - rss0:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
