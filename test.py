"""Evaluate a checkpoint: metric table, metrics.json and optional prediction PNGs.

    python test.py --config unetpp_glacier_debug --checkpoint work_dirs/unetpp_glacier_debug/best.pt
    python test.py --config demo --checkpoint work_dirs/demo/best.pt --tta --show-dir work_dirs/demo/vis
    torchrun --standalone --nproc_per_node=2 test.py --config demo --checkpoint work_dirs/demo/best.pt

Options: ``--split NAME`` (default the config's val split), ``--mode whole|slide``, ``--tta``
(the config's ``eval.tta_scales`` x (identity + ``eval.tta_flips``), probabilities averaged), ``--show-dir DIR``
(colour predictions and overlays, with a legend), ``--out FILE`` (default ``<work_dir>/metrics.json``; a run
with ``--tta``, ``--mode`` or another ``--split`` writes ``metrics_<split>_<mode>_tta.json`` with only the parts
that differ, so runs never overwrite each other; strict JSON, ``null`` for undefined scores), plus
the same ``--section.key=value`` overrides as train.py.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

import configs
from iceseg import dist
from iceseg.checkpoint import load_checkpoint, unwrap_state_dict
from iceseg.data import build_dataset
from iceseg.evaluation import build_evaluator, json_safe, to_device
from iceseg.inference import eval_autocast
from iceseg.segmentor import build_inference_model


def metrics_name(split: str, val_split: str, args) -> str:
    """Default metrics file of a run: ``metrics.json`` for the config's own evaluation (validation split, its
    mode, no TTA), else the differences in the name, e.g. ``metrics_test_slide_tta.json``."""
    parts = [split] if split != val_split else []
    parts += [args.mode] if args.mode else []
    parts += ["tta"] if args.tta else []
    return "_".join(["metrics", *parts]) + ".json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default=None)
    parser.add_argument("--mode", choices=["whole", "slide"], default=None)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--show-dir", default=None)
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()

    cfg = configs.get_config(args.config)
    for o in configs.apply_overrides(cfg, overrides):
        dist.print0(f"override: {o}")
    D, E = cfg.data, cfg.eval
    rank, world, device = dist.init_distributed(cfg.train.device)

    ckpt = load_checkpoint(args.checkpoint, map_location="cpu", fallback=False)
    if device.type == "cpu" and ckpt.get("threads", torch.get_num_threads()) != torch.get_num_threads():
        dist.print0(f"note: validation in train.py ran with {ckpt['threads']} CPU thread(s) per process, this run with "
                    f"{torch.get_num_threads()}: scores may differ in the last digits (OMP_NUM_THREADS="
                    f"{ckpt['threads']} reproduces them exactly)")
    amp = eval_autocast(cfg, device)  # eval.amp; "" (default): train.amp, the autocast of validation in train.py
    model = build_inference_model(cfg, unwrap_state_dict(ckpt), device, str(args.checkpoint),
                                  ckpt.get("config"), amp)  # fast paths and folded BN, as validation
    if cfg.train.compile:
        model = torch.compile(model)

    split = args.split or D.val_split
    dataset = build_dataset(D, split, train=False)
    loader = DataLoader(Subset(dataset, list(range(rank, len(dataset), world))), batch_size=1,
                        num_workers=D.num_workers)
    show_dir = Path(args.show_dir) if args.show_dir else None
    if show_dir:
        show_dir.mkdir(parents=True, exist_ok=True)
    if args.mode:
        E.mode = args.mode
    evaluator = build_evaluator(cfg, device)
    t0 = time.time()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for batch in loader:
            evaluator.update(model, to_device(batch, device), show_dir=show_dir, tta=args.tta)
    metrics = evaluator.compute()
    elapsed = time.time() - t0
    peak_gib = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"  # CPU: peak RSS (KiB on Linux)
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    if rank == 0:
        print(evaluator.table(metrics))
        views = len(E.tta_scales) * (1 + len(E.tta_flips))
        print(f"{len(dataset)} images of split {split!r} in {elapsed:.1f} s ({E.mode} inference"
              f"{f', TTA {views} views' if args.tta else ''}), peak memory {peak_gib:.2f} GiB")
        out = Path(args.out) if args.out else Path(cfg.train.work_dir) / metrics_name(split, D.val_split, args)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"config": cfg.name, "checkpoint": str(args.checkpoint), "split": split, "mode": E.mode,
                  "tta": args.tta, "peak_mem_gib": peak_gib, **metrics}
        out.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))  # strict JSON: null, never NaN
        print(f"metrics written to {out}" + (f"; predictions in {show_dir}" if show_dir else ""))
    dist.barrier()
    dist.cleanup()


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, KeyError, ValueError, TypeError, RuntimeError) as e:
        dist.fail(f"error: {e.args[0] if e.args else e}")  # once per job; the process group destroyed first
