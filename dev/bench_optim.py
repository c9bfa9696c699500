"""Time one AdamW step over Swin-L's parameters: torch's default CPU implementation vs ``fused=True``.

    python dev/bench_optim.py [--threads 2] [--repeats 5]

Dev tool (``optim.fused``). Gradients are random and fixed; prints the median seconds per step.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iceseg.models.swin import SwinTransformer, swin_large  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = list(SwinTransformer(swin_large()).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    print(f"Swin-L: {sum(p.numel() for p in params):,} parameters, {args.threads} threads")
    for fused in (None, True):
        opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=1e-4, fused=fused)
        opt.step()  # state allocation is not timed
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        print(f"AdamW fused={fused}: median {statistics.median(times):.3f} s per step")


if __name__ == "__main__":
    main()
