"""Dev-only: regenerate tests/assets/unetpp_golden.pt from segmentation_models_pytorch.

Builds ``smp.UnetPlusPlus("resnet34", encoder_weights=None, in_channels=5, classes=1)`` (and the
same with ``decoder_attention_type="scse"``), fills it with ``tests.golden.seeded_state_dict``
weights, and stores key names + shapes, seeded inputs and smp's outputs (no weights, < 1 MB):

    keys_shapes        {key: [shape]} of the default model (350 keys)
    input, output      eval-mode forward, input (1, 5, 64, 96) -> logits (1, 1, 64, 96)
    train_input, train_output   train-mode forward (batch-statistics BN), (2, 5, 64, 64)
    scse_keys_shapes, scse_output   scse-attention model, eval forward on ``input``
    versions           {"smp", "torch", "torchvision"}

Needs the reference venv (see notes/PREAMBLE.md), e.g.

    python -m venv --system-site-packages /work/venv-ref
    /work/venv-ref/bin/pip install --no-deps segmentation-models-pytorch==0.6.0 "torchvision==0.28.*" timm
    /work/venv-ref/bin/pip install huggingface-hub safetensors tqdm pyyaml
    /work/venv-ref/bin/python dev/make_golden_unetpp.py

The PyPI torchvision wheel does not import on CPU-only torch (pytorch/vision#9085: its compiled
ops are missing); the schemas it looks up at import time are declared below first.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT / "dev"))
from refenv import allow_torchvision_import, load_golden  # noqa: E402

allow_torchvision_import()

import segmentation_models_pytorch as smp  # noqa: E402
import torchvision  # noqa: E402

_golden = load_golden()
seeded_state_dict = _golden.seeded_state_dict

OUT = ROOT / "tests" / "assets" / "unetpp_golden.pt"


def build(**kw) -> tuple:
    """Return (smp model with seeded weights, {key: shape list})."""
    model = smp.UnetPlusPlus("resnet34", encoder_weights=None, in_channels=5, classes=1, **kw)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state_dict(shapes), strict=True)
    return model, shapes


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 5, 64, 96, generator=g)
    x_train = torch.rand(2, 5, 64, 64, generator=g)

    model, shapes = build()
    with torch.no_grad():
        y = model.eval()(x)
        y_train = model.train()(x_train)
    scse, scse_shapes = build(decoder_attention_type="scse")
    with torch.no_grad():
        y_scse = scse.eval()(x)

    asset = {
        "keys_shapes": shapes,
        "input": x,
        "output": y,
        "train_input": x_train,
        "train_output": y_train,
        "scse_keys_shapes": scse_shapes,
        "scse_output": y_scse,
        "versions": {
            "smp": str(smp.__version__),
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
        },  # plain str: weights_only-loadable
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(asset, OUT)
    back = torch.load(OUT, map_location="cpu", weights_only=True)
    assert torch.equal(back["output"], y)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB): {len(shapes)} keys, {n:,} params, "
        f"output std {y.std():.3f}, versions {asset['versions']}"
    )


if __name__ == "__main__":
    main()
