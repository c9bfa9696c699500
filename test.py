"""Evaluate a checkpoint: metric table, metrics.json and optional prediction PNGs.

    python test.py --config unetpp_glacier_debug --checkpoint work_dirs/unetpp_glacier_debug/best.pt
    python test.py --config demo --checkpoint work_dirs/demo/best.pt --tta --show-dir work_dirs/demo/vis
    torchrun --standalone --nproc_per_node=2 test.py --config demo --checkpoint work_dirs/demo/best.pt

Options: ``--split NAME`` (default the config's val split), ``--mode whole|slide``, ``--tta``
(the config's ``eval.tta_scales`` x (identity + ``eval.tta_flips``), probabilities averaged), ``--show-dir DIR``
(colour predictions and overlays), ``--out FILE`` (default ``<work_dir>/metrics.json``), plus
the same ``--section.key=value`` overrides as train.py.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

import configs
from iceseg import dist
from iceseg.checkpoint import load_checkpoint, unwrap_state_dict
from iceseg.data import build_dataset
from iceseg.inference import predict
from iceseg.metrics import ConfusionMatrix, format_table
from iceseg.segmentor import build_model


def colourise(pred: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 RGB through ``palette`` ``(K, 3)``."""
    return palette[np.clip(pred, 0, len(palette) - 1)].astype(np.uint8)


def display_image(img: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float image -> ``(H, W, 3)`` uint8, each band min-max stretched (first 3 bands)."""
    x = img[:3] if img.shape[0] >= 3 else img[:1].expand(3, -1, -1)
    x = x.float()
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-6)
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # (H, W, 3)


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
    model = build_model(cfg)
    model.load_state_dict(unwrap_state_dict(ckpt))
    model.to(device).eval()

    split = args.split or D.val_split
    dataset = build_dataset(D, split, train=False)
    loader = DataLoader(Subset(dataset, list(range(rank, len(dataset), world))), batch_size=1,
                        num_workers=D.num_workers)
    scales, flips = (E.tta_scales, E.tta_flips) if args.tta else ([1.0], [])
    mode = args.mode or E.mode
    names = E.class_names or [str(c) for c in range(D.num_classes)]
    palette = np.array(E.palette or [[(37 * c) % 256, (91 * c) % 256, (173 * c) % 256]
                                     for c in range(D.num_classes)])
    show_dir = Path(args.show_dir) if args.show_dir else None
    if show_dir:
        show_dir.mkdir(parents=True, exist_ok=True)

    cm = ConfusionMatrix(D.num_classes, D.ignore_index, device=device)
    t0 = time.time()
    with torch.no_grad():
        for batch in loader:
            img, label = batch["img"].to(device), batch["label"].to(device)
            probs = predict(model, img, mode, E.crop_size, E.stride, E.size_divisor, E.resize, scales, flips)
            pred = probs.argmax(1)  # (1, H, W)
            cm.update(pred, label)
            if show_dir:
                p = pred[0].cpu().numpy()
                colour = colourise(p, palette)
                Image.fromarray(colour).save(show_dir / f"{batch['name'][0]}_pred.png")
                overlay = (0.5 * display_image(img[0].cpu()) + 0.5 * colour).astype(np.uint8)
                Image.fromarray(overlay).save(show_dir / f"{batch['name'][0]}_overlay.png")
    cm.all_reduce()
    metrics = cm.compute()
    elapsed = time.time() - t0
    if rank == 0:
        print(format_table(metrics, names))
        print(f"{len(dataset)} images of split {split!r} in {elapsed:.1f} s ({mode} inference"
              f"{', TTA ' + str(len(scales) * (1 + len(flips))) + ' views' if args.tta else ''})")
        out = Path(args.out) if args.out else Path(cfg.train.work_dir) / "metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"config": cfg.name, "checkpoint": str(args.checkpoint), "split": split, "mode": mode,
                  "tta": args.tta, "class_names": names, **metrics}
        out.write_text(json.dumps(result, indent=2))
        print(f"metrics written to {out}" + (f"; predictions in {show_dir}" if show_dir else ""))
    dist.barrier()
    dist.cleanup()


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, KeyError, ValueError, TypeError, RuntimeError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
