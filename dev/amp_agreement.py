"""How much a lower-precision autocast changes a checkpoint's predictions on its validation set.

    python dev/amp_agreement.py --config demo --checkpoint work_dirs/demo/best.pt [--amp bf16] [--json out.json]

Runs the config's evaluation (``eval.mode``, resize, fast paths and folded BatchNorm, as ``test.py``) twice over the
validation split, in fp32 and under ``torch.autocast(--amp)``, and reports the share of labelled pixels (and of
all pixels) whose predicted class is the same, and the two mIoU figures. Dev tool, not part of the test suite.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import configs  # noqa: E402
from iceseg.checkpoint import load_checkpoint, unwrap_state_dict  # noqa: E402
from iceseg.data import build_dataset  # noqa: E402
from iceseg.evaluation import build_evaluator  # noqa: E402
from iceseg.inference import autocast_dtype  # noqa: E402
from iceseg.segmentor import build_inference_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--amp", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    args, overrides = ap.parse_known_args()
    cfg = configs.get_config(args.config)
    configs.apply_overrides(cfg, overrides)
    device = torch.device(args.device)
    ckpt = load_checkpoint(args.checkpoint, fallback=False)
    model = build_inference_model(cfg, unwrap_state_dict(ckpt), device, args.checkpoint, ckpt.get("config"))
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False)
    dtype = autocast_dtype(args.amp, device)
    if dtype is None:
        sys.exit(f"error: --amp {args.amp} has no autocast on {device}")
    evs = {"fp32": build_evaluator(cfg, device), args.amp: build_evaluator(cfg, device)}
    same = labelled_same = pixels = labelled = 0
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            batch = {"img": item["img"][None].to(device), "label": item["label"][None].to(device),
                     "name": [item["name"]]}
            preds = {}
            for name, ev in evs.items():
                with torch.autocast(device.type, dtype=dtype, enabled=name != "fp32"):
                    preds[name] = ev.predict(model, batch["img"]).argmax(1)  # (1, H, W)
                ev.cm.update(preds[name], batch["label"])
            eq = preds["fp32"] == preds[args.amp]
            valid = batch["label"] != cfg.data.ignore_index
            same, pixels = same + int(eq.sum()), pixels + eq.numel()
            labelled_same, labelled = labelled_same + int((eq & valid).sum()), labelled + int(valid.sum())
    miou = {name: ev.cm.compute()["mIoU"] for name, ev in evs.items()}
    report = {"config": cfg.name, "checkpoint": args.checkpoint, "amp": args.amp, "images": len(dataset),
              "same_class_labelled": labelled_same / max(labelled, 1), "same_class_all": same / max(pixels, 1),
              "mIoU_fp32": miou["fp32"], f"mIoU_{args.amp}": miou[args.amp],
              "mIoU_difference": miou[args.amp] - miou["fp32"]}
    print(f"{cfg.name}, {len(dataset)} validation images: same class on {100 * report['same_class_labelled']:.3f} % "
          f"of labelled pixels ({100 * report['same_class_all']:.3f} % of all); mIoU fp32 {miou['fp32']:.2f}, "
          f"{args.amp} {miou[args.amp]:.2f} (difference {report['mIoU_difference']:+.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
