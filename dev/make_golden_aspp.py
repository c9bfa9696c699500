"""Dev-only: regenerate tests/assets/aspp_golden.pt from torchvision (ASPP, ResNet-152, the seed model).

Three references, all filled with ``tests/golden.py::seeded_state_dict`` weights and run in eval
mode on seeded inputs (``seeded_tensor``; only the input sums are stored, the test regenerates the
inputs), so the asset holds key names, shapes and outputs only (< 1 MB):

    aspp_keys_shapes, aspp_input_shape, aspp_input_sum, aspp_output
        torchvision ``ASPP(1024, [12, 24, 36], 32)`` (global pooling), input (1, 1024, 40, 40)
    resnet152_keys_shapes                    torchvision ``resnet152()`` state dict (all keys)
    trunk_input_shape, trunk_input_sum, trunk_output
        ``IntermediateLayerGetter(resnet152 with an 18-band conv1, {"layer3": "out"})``, input
        (1, 18, 64, 64) -> (1, 1024, 4, 4)
    seed_keys_shapes, seed_input_shape, seed_input_sum, seed_outputs
        the AutoICE seed ``ResNetASPP`` rebuilt from its ``models.py`` (geohai/autoice-challenge-
        geospatial-encoding @ dcb9af0): trunk above + three ``Sequential(ASPP(1024, [12, 24, 36],
        32), Conv3x3, BN, ReLU, Conv1x1)`` decoders (SIC 1, SOD 7, FLOE 8) whose pooling is
        ``AvgPool2d(2, 2)``; input (1, 18, 48, 80); outputs ``{"SIC": (1, 48, 80), ...}``
    versions                                  {"torch", "torchvision"}

Run with the reference venv (see notes/PREAMBLE.md):

    /work/venv-ref/bin/python dev/make_golden_aspp.py

The PyPI torchvision wheel does not import on CPU-only torch (pytorch/vision#9085); the op
schemas it looks up at import time are declared first.
"""

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "assets" / "aspp_golden.pt"

sys.path.insert(0, str(ROOT / "dev"))
from refenv import allow_torchvision_import, load_golden  # noqa: E402

allow_torchvision_import()

import torchvision  # noqa: E402
from torchvision.models import resnet152  # noqa: E402
from torchvision.models._utils import IntermediateLayerGetter  # noqa: E402
from torchvision.models.segmentation.deeplabv3 import ASPP  # noqa: E402

_golden = load_golden()


def seeded(model: nn.Module) -> dict:
    """Fill ``model`` with seeded weights; return its ``{key: shape list}``."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(_golden.seeded_state_dict(shapes), strict=True)
    return shapes


def seed_trunk() -> nn.Module:
    """The seed's encoder: resnet152, fresh 18-band stem, cut after layer3."""
    net = resnet152(weights=None)
    net.conv1 = nn.Conv2d(18, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return IntermediateLayerGetter(net, return_layers={"layer3": "out"})


class SeedResNetASPP(nn.Module):
    """The seed's ``ResNetASPP`` (models.py), rebuilt with the same module names and layout."""

    def __init__(self):
        super().__init__()
        self.encoder = seed_trunk()
        for name, k in (("sic", 1), ("sod", 7), ("floe", 8)):
            dec = nn.Sequential(ASPP(1024, [12, 24, 36], 32), nn.Conv2d(32, 32, 3, padding=1, bias=False),
                                nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, k, 1))
            assert isinstance(dec[0].convs[-1][0], nn.AdaptiveAvgPool2d)
            dec[0].convs[-1][0] = nn.AvgPool2d(2, 2)
            setattr(self, f"{name}_decoder", dec)

    def forward(self, x):
        size = x.shape[-2:]
        feats = self.encoder(x)["out"]
        out = {c.upper(): F.interpolate(getattr(self, f"{c}_decoder")(feats), size=size, mode="bilinear",
                                        align_corners=False) for c in ("sic", "sod", "floe")}
        out["SIC"] = out["SIC"].squeeze(1)
        return out


def main() -> None:
    asset = {"versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}}
    with torch.no_grad():
        aspp = ASPP(1024, [12, 24, 36], 32).eval()
        asset["aspp_keys_shapes"] = seeded(aspp)
        x = _golden.seeded_tensor("aspp.input", (1, 1024, 40, 40))
        asset.update(aspp_input_shape=list(x.shape), aspp_input_sum=float(x.double().sum()), aspp_output=aspp(x))

        asset["resnet152_keys_shapes"] = {k: list(v.shape) for k, v in resnet152(weights=None).state_dict().items()}

        trunk = seed_trunk().eval()
        seeded(trunk)
        x = _golden.seeded_tensor("trunk.input", (1, 18, 64, 64))
        asset.update(trunk_input_shape=list(x.shape), trunk_input_sum=float(x.double().sum()),
                     trunk_output=trunk(x)["out"])

        seed = SeedResNetASPP().eval()
        asset["seed_keys_shapes"] = seeded(seed)
        x = _golden.seeded_tensor("seed.input", (1, 18, 48, 80))
        asset.update(seed_input_shape=list(x.shape), seed_input_sum=float(x.double().sum()), seed_outputs=seed(x))
    n_seed = sum(p.numel() for p in seed.parameters())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(asset, OUT)
    back = torch.load(OUT, map_location="cpu", weights_only=True)
    assert torch.equal(back["aspp_output"], asset["aspp_output"])
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB); seed model {n_seed:,} params; output std: "
          f"aspp {asset['aspp_output'].std():.3f}, trunk {asset['trunk_output'].std():.3f}, "
          + ", ".join(f"{k} {v.std():.3f}" for k, v in asset["seed_outputs"].items()) + f"; {asset['versions']}")


if __name__ == "__main__":
    main()
