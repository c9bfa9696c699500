"""Export a train.py checkpoint as a ``torch.export`` program (``.pt2``) or an ONNX model and check it against
the eager model.

    python dev/export.py --checkpoint work_dirs/unetpp_glacier/best.pt --out unetpp_glacier.pt2
    python dev/export.py --checkpoint best.pt --out model.pt2 --static      # one fixed input size (crop_size)
    python predict.py --checkpoint unetpp_glacier.pt2 scenes/ --out preds/
    python dev/export.py --checkpoint best.pt --out model.onnx --format onnx  # needs onnx, onnxscript

The program holds the weights and the config (``iceseg.export``); with ``--config`` and ``--section.key=value``
overrides the config is chosen as in ``predict.py``. After writing, the program and the eager model run on two
input sizes (``--check-sizes``, multiples of 32; a static program on its own size only) and the largest
absolute logit difference is printed; the export fails (exit 1, file removed) above ``--atol``. An ONNX model
is the same program converted (``iceseg.export.save_onnx``) and is checked on ONNX Runtime when
``onnxruntime`` is installed (otherwise the check is skipped and said so).
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import configs  # noqa: E402
from iceseg.checkpoint import load_checkpoint, unwrap_state_dict  # noqa: E402
from iceseg.export import MULTIPLE, export_model, load_onnx, load_program, save_onnx, save_program  # noqa: E402
from iceseg.segmentor import build_inference_model  # noqa: E402


def max_abs_diff(a, b) -> float:
    """Largest ``|a - b|`` over two logits tensors or two dicts of them (the multi-task DeepLab)."""
    if isinstance(a, dict):
        return max(max_abs_diff(a[k], b[k]) for k in a)
    return (a.float() - b.float()).abs().max().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a train.py checkpoint (best.pt or last.pt)")
    ap.add_argument("--out", required=True, help="the file to write (.pt2, or .onnx with --format onnx)")
    ap.add_argument("--config", default=None, help="named config (default: the checkpoint's own)")
    ap.add_argument("--format", choices=["torch-export", "onnx"], default="torch-export",
                    help="torch-export: a .pt2 program (torch only); onnx: ONNX (optional onnx, onnxscript)")
    ap.add_argument("--static", action="store_true", help="trace one fixed input size (eval.crop_size)")
    ap.add_argument("--check-sizes", default="", help="H,W;H,W sizes compared with eager (default: two)")
    ap.add_argument("--atol", type=float, default=1e-4, help="largest logit difference accepted")
    args, overrides = ap.parse_known_args()
    try:
        ckpt = load_checkpoint(args.checkpoint, fallback=False)
        stored = ckpt.get("config") if isinstance(ckpt, dict) else None
        if args.config:
            cfg = configs.get_config(args.config)
        elif isinstance(stored, dict):
            cfg = configs.from_dict(stored)
        else:
            raise ValueError(f"{args.checkpoint}: stores no config; give --config NAME")
        configs.apply_overrides(cfg, overrides)
        cfg.model.pretrained = ""
        plain = copy.deepcopy(cfg)  # the plain model (iceseg.fast is not exported); cfg is stored as it is
        plain.train.fast_paths = plain.train.channels_last = False
        model = build_inference_model(plain, unwrap_state_dict(ckpt), torch.device("cpu"), str(args.checkpoint),
                                      stored)
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
    dynamic = not args.static
    t0 = time.time()
    ep, meta = export_model(model, cfg, dynamic=dynamic)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        (save_onnx if args.format == "onnx" else save_program)(ep, meta, out, cfg)
    except ImportError as e:
        sys.exit(f"error: {e}")
    lo = meta["min_hw"][0]
    shape = f"H and W multiples of {MULTIPLE} from {lo}" if dynamic else f"fixed {tuple(meta['input_hw'])}"
    print(f"{out}: {cfg.model.name} of config {cfg.name!r}, one image, {shape}; {args.format} in "
          f"{time.time() - t0:.1f} s")

    if args.format == "onnx":
        try:
            net, _, _ = load_onnx(out)
        except ImportError as e:
            print(f"  not checked against the eager model: {e}")
            return
    else:
        net, _, _ = load_program(out)
    if args.check_sizes:
        sizes = [tuple(int(v) for v in s.split(",")) for s in args.check_sizes.split(";")]
    elif dynamic:
        h, w = (max(-(-s // MULTIPLE) * MULTIPLE, lo) for s in cfg.eval.crop_size)
        sizes = [(h, w), (h + 2 * MULTIPLE, max(lo, w - MULTIPLE))]
    else:
        sizes = [tuple(meta["input_hw"])]
    torch.manual_seed(0)
    worst = 0.0
    for hw in sizes:
        x = torch.randn(1, cfg.data.in_channels, *hw)  # (1, C, H, W)
        with torch.no_grad():
            d = max_abs_diff(model(x), net(x))
        worst = max(worst, d)
        print(f"  {hw[0]}x{hw[1]}: max |program - eager| = {d:.2e}")
    if not worst <= args.atol:
        out.unlink()
        sys.exit(f"error: the program differs from the eager model by {worst:.2e} > --atol {args.atol}; "
                 f"{out} removed")


if __name__ == "__main__":
    main()
