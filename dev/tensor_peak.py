"""Peak of live tensor bytes during one pass of a benchmark case, and the largest tensors alive at that moment.

    python dev/tensor_peak.py CASE [--impl ours|timm|mmseg|smp|torchvision] [--quick]

Dev tool: the deterministic counterpart of benchmark.py's RSS figure (the CPU analogue of
``torch.cuda.max_memory_allocated``). A ``TorchDispatchMode`` adds the storage bytes of every op output whose
storage is new (not a view of an input) and subtracts them when the storage is freed (a ``weakref.finalize`` on
the storage). Library scratch outside tensors (oneDNN weight reorders) is not counted. CASE and the builders come
from benchmark.py, so the reference runs with the same weights and input.
"""

import argparse
import gc
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import benchmark  # noqa: E402


class LiveBytes(TorchDispatchMode):
    """Track live bytes of storages created by ops inside the mode; keep the peak and what was alive then."""

    def __init__(self):
        super().__init__()
        self.live, self.cur, self.peak, self.at_peak = {}, 0, 0, ("", [])

    def _free(self, key: int, n: int) -> None:
        if self.live.pop(key, None) is not None:
            self.cur -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            s = t.untyped_storage()
            key, n = s.data_ptr(), s.nbytes()
            if key in inputs or key in self.live or n == 0:
                continue
            self.live[key] = (n, str(func), tuple(t.shape))
            self.cur += n
            weakref.finalize(s, self._free, key, n)
        if self.cur > self.peak:
            self.peak = self.cur
            self.at_peak = (str(func), sorted(self.live.values(), key=lambda v: -v[0])[:10])
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=[c for c in benchmark.CASES if c not in benchmark.RATES])
    ap.add_argument("--impl", default="ours")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    desc, full, quick = benchmark.CASES[args.case]
    s = quick if args.quick else full
    built = getattr(benchmark, f"case_{args.case}")(s, torch.device("cpu"), args.quick, args.impl != "ours")
    if args.impl not in built["impls"]:
        raise SystemExit(f"{args.case}: no implementation {args.impl!r} (found {sorted(built['impls'])}, "
                         f"references: {built['refs_found']})")
    fn = built["impls"][args.impl]
    built.clear()
    gc.collect()
    fn()  # warm-up outside the mode
    tracker = LiveBytes()
    with tracker:
        fn()
    print(f"{args.case} {args.impl}: peak live tensor bytes {tracker.peak / 2**20:.1f} MiB, at {tracker.at_peak[0]}")
    for n, op, shape in tracker.at_peak[1]:
        print(f"  {n / 2**20:8.1f} MiB  {op}  {shape}")


if __name__ == "__main__":
    main()
