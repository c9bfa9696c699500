"""Export a train.py checkpoint for a model file copied alone: its bare state dict plus its constructor arguments.

    python dev/export_weights.py work_dirs/unetpp_glacier/best.pt unetpp_glacier.pth

writes ``unetpp_glacier.pth`` (the model file's own state dict, plain tensors, ``torch.load(weights_only=True)``)
and ``unetpp_glacier.json``::

    {"model_file": "unetpp.py", "class": "UNetPlusPlus", "kwargs": {...}, "part": "whole model",
     "config": "unetpp_glacier", "checkpoint": "...", "iter": 1234}

so that, with ``unetpp.py`` alone::

    import json, unetpp
    meta = json.load(open("unetpp_glacier.json"))
    model = unetpp.UNetPlusPlus(**meta["kwargs"])
    unetpp.load_pretrained(model, "unetpp_glacier.pth")

Families: ``unetpp`` (``unetpp.py`` ``UNetPlusPlus``) and ``deeplab_multitask`` (``deeplab.py``
``MultiTaskDeepLab``, without its loss) export the whole network. IceSegNet and K-Net are compositions of four
model files (``swin.py``, ``sefpn.py``, ``uper.py``, ``knet.py``) joined in ``iceseg/segmentor.py``; for them the
trained backbone is exported (``swin.py`` ``SwinTransformer``, official key layout, ``kwargs`` = its
``SwinConfig`` fields: ``SwinTransformer(SwinConfig(**kwargs))``), and the whole segmentor is what
``iceseg.segmentor.build_model`` loads from the checkpoint itself.
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import configs  # noqa: E402
from iceseg.checkpoint import load_checkpoint, load_model_state, unwrap_state_dict  # noqa: E402
from iceseg.segmentor import build_model  # noqa: E402


def export(ckpt_path: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write ``out`` (state dict) and ``out`` with suffix ``.json`` (constructor arguments); return the JSON.

    Raises:
        ValueError: the checkpoint stores no config, or its weights do not fit it.
    """
    ckpt = load_checkpoint(ckpt_path, fallback=False)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict):
        raise ValueError(f"{ckpt_path}: stores no config (not a train.py checkpoint)")
    cfg = configs.from_dict(ckpt["config"])
    cfg.model.pretrained = ""
    model = build_model(cfg)
    load_model_state(model, unwrap_state_dict(ckpt), str(ckpt_path), cfg.name, ckpt["config"])
    a, name = cfg.model.arch, cfg.model.name
    if name == "unetpp":
        net, meta = model.net, {"model_file": "unetpp.py", "class": "UNetPlusPlus", "part": "whole model",
                                "kwargs": {"in_channels": cfg.data.in_channels, "num_classes": cfg.model.num_classes,
                                           "decoder_channels": list(a.decoder_channels),
                                           "decoder_attention_type": a.decoder_attention_type or None,
                                           "decoder_interpolation": a.decoder_interpolation}}
        state = net.state_dict()
    elif name == "deeplab_multitask":
        meta = {"model_file": "deeplab.py", "class": "MultiTaskDeepLab", "part": "whole model (no loss)",
                "kwargs": {"in_channels": cfg.data.in_channels, "tasks": dict(a.tasks), "layers": list(a.layers),
                           "atrous_rates": list(a.atrous_rates), "aspp_channels": a.aspp_channels, "pool": a.pool,
                           "dropout": a.dropout}}
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("criterion.")}
    elif name in ("icesegnet", "knet"):
        meta = {"model_file": "swin.py", "class": "SwinTransformer", "part": "backbone (SwinTransformer(SwinConfig"
                "(**kwargs))); the heads are composed in iceseg/segmentor.py", "kwargs": dataclasses.asdict(a.backbone)}
        state = model.backbone.state_dict()
    else:
        raise ValueError(f"{ckpt_path}: model {name!r} has no export (known: unetpp, deeplab_multitask, icesegnet, knet)")
    meta.update(config=cfg.name, checkpoint=str(ckpt_path), iter=ckpt.get("iter"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, write in ((out, lambda f: torch.save({k: v.detach().clone() for k, v in state.items()}, f)),
                        (out.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=2).encode()))):
        tmp = path.with_name(path.name + ".tmp")  # atomic: a killed export leaves no half file
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a train.py checkpoint (best.pt or last.pt)")
    ap.add_argument("out", help="output state dict (.pth); the constructor arguments go beside it as .json")
    args = ap.parse_args()
    try:
        meta = export(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
    print(f"{args.out}: {meta['class']} ({meta['part']}) of config {meta['config']!r}; arguments in "
          f"{Path(args.out).with_suffix('.json')}")


if __name__ == "__main__":
    main()
