"""Multi-task DeepLab (iceseg/deeplab.py): golden parity with torchvision's ASPP / ResNet-152 and the
AutoICE seed model, the 2x2-pool crop invariance, checkpoint loading and the parameter count.

The golden file is written by dev/make_golden_aspp.py (torchvision 0.28); weights and inputs
are regenerated here from key names with tests/golden.py, so torchvision is not needed.
"""

from pathlib import Path

import pytest
import torch

from iceseg.models.deeplab import (
    ASPP,
    MultiTaskDeepLab,
    autoice_deeplab,
    convert_torchvision_resnet,
    load_pretrained,
)
from tests import golden as _golden

ASSET = Path(__file__).parent / "assets" / "aspp_golden.pt"

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def golden():
    return torch.load(ASSET, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def seed_model():
    return autoice_deeplab().eval()  # 18 bands, SIC 1 / SOD 7 / FLOE 8, avg2 pooling, ResNet-152 trunk


def _input(golden, prefix):
    x = _golden.seeded_tensor(f"{prefix}.input", tuple(golden[f"{prefix}_input_shape"]))
    assert abs(float(x.double().sum()) - golden[f"{prefix}_input_sum"]) < 1e-6 * x.numel()  # generator unchanged
    return x


def test_aspp_loads_torchvision_state_dict_and_matches_golden(golden):
    aspp = ASPP(1024, [12, 24, 36], 32, pool="global").eval()
    shapes = golden["aspp_keys_shapes"]
    assert [(k, list(v.shape)) for k, v in aspp.state_dict().items()] == list(shapes.items())  # names, order
    aspp.load_state_dict(_golden.seeded_state_dict(shapes), strict=True)
    with torch.no_grad():
        y = aspp(_input(golden, "aspp"))
    ref = golden["aspp_output"]
    diff = (y - ref).abs().max().item()
    print(f"ASPP golden parity (global pooling): max |diff| = {diff:.3e}, ref std {ref.std():.3f}")
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_avg2_pooling_aspp_interior_does_not_depend_on_input_extent():
    torch.manual_seed(0)
    aspp = ASPP(16, (12, 24, 36), 8, pool="avg2").eval()
    x = torch.randn(1, 16, 160, 160)
    x[:, :, 136:] += 2.0  # a bright band outside the crop: moves the global mean, not the interior
    oy, ox, n, m = 16, 24, 112, 36  # even offset/size (the 2x2 grid stays aligned), margin = largest rate
    with torch.no_grad():
        full, crop = aspp(x), aspp(x[:, :, oy:oy + n, ox:ox + n])
        inner = crop[..., m:-m, m:-m]
        torch.testing.assert_close(inner, full[..., oy + m:oy + n - m, ox + m:ox + n - m], rtol=1e-5, atol=1e-6)
        glob = ASPP(16, (12, 24, 36), 8, pool="global").eval()
        glob.load_state_dict(aspp.state_dict())  # same keys: only the pooling module differs
        g_full, g_crop = glob(x), glob(x[:, :, oy:oy + n, ox:ox + n])
    assert (g_crop[..., m:-m, m:-m] - g_full[..., oy + m:oy + n - m, ox + m:ox + n - m]).abs().max() > 1e-2


def test_param_count_of_the_18_band_three_head_model(seed_model):
    n = sum(p.numel() for p in seed_model.parameters())
    assert n == 46_121_808  # = the seed ResNetASPP built from torchvision (make_golden_aspp.py)
    assert abs(n / 46.1e6 - 1) < 1e-3
    assert sum(p.numel() for p in seed_model.encoder.parameters()) == 43_226_112


def test_torchvision_resnet152_loads_with_no_unexpected_keys(golden, seed_model):
    sd = _golden.seeded_state_dict(golden["resnet152_keys_shapes"])  # full torchvision resnet152 (3-band stem)
    assert any(k.startswith("layer4.") for k in sd) and "fc.weight" in sd
    model = seed_model
    report = load_pretrained(model, {"state_dict": sd})
    assert report["layout"] == "torchvision" and report["unexpected"] == []
    assert {k for k in report["missing"] if not k.startswith("heads.")} == {"encoder.conv1.weight"}  # stem replaced
    assert torch.equal(model.state_dict()["encoder.layer3.35.conv3.weight"], sd["layer3.35.conv3.weight"])
    assert "encoder.conv1.weight" not in convert_torchvision_resnet(sd, 18)
    assert "encoder.conv1.weight" in convert_torchvision_resnet(sd, 3)  # same band count: stem kept


def test_truncated_resnet152_matches_torchvision_golden(golden, seed_model):
    shapes = {k: v for k, v in golden["resnet152_keys_shapes"].items() if not k.startswith(("layer4", "fc"))}
    shapes["conv1.weight"] = [64, 18, 7, 7]  # the golden trunk's replaced 18-band stem
    load_pretrained(seed_model, _golden.seeded_state_dict(shapes))
    with torch.no_grad():
        y = seed_model.encoder(_input(golden, "trunk"))
    ref = golden["trunk_output"]
    assert y.shape == (1, 1024, 4, 4)
    print(f"ResNet-152 trunk golden parity: max |diff| = {(y - ref).abs().max():.3e}, ref std {ref.std():.3f}")
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_seed_checkpoint_loads_and_the_whole_model_matches_golden(golden, seed_model):
    sd = {"model_state_dict": _golden.seeded_state_dict(golden["seed_keys_shapes"])}  # seed's torch.save layout
    report = load_pretrained(seed_model, sd)
    assert report["layout"] == "seed" and report["missing"] == [] and report["unexpected"] == []
    with torch.no_grad():
        out = seed_model(_input(golden, "seed"))
    for task, ref in golden["seed_outputs"].items():
        y = out[task][:, 0] if task == "SIC" else out[task]  # the seed squeezes SIC to (B, H, W)
        print(f"seed model golden parity {task}: max |diff| = {(y - ref).abs().max():.3e}, ref std {ref.std():.3f}")
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    assert out["SOD"].shape == (1, 7, 48, 80) and out["FLOE"].shape == (1, 8, 48, 80)


def test_forward_outputs_losses_and_errors():
    class Crit(torch.nn.Module):
        def forward(self, logits, label):
            return {"loss_sum": sum(v.mean() for v in logits.values())}

    model = MultiTaskDeepLab(4, {"A": 1, "B": 3}, layers=(1, 1, 1), aspp_channels=4, criterion=Crit()).eval()
    x = torch.randn(2, 4, 70, 90)  # odd size: heads upsample to the exact input size
    out = model(x)
    assert out["A"].shape == (2, 1, 70, 90) and out["B"].shape == (2, 3, 70, 90)
    assert set(model(x, {"A": None})) == {"loss_sum"}
    with pytest.raises(ValueError, match="expects 4 input bands"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="at least 2x2"):
        model(torch.randn(1, 4, 16, 64))
    with pytest.raises(ValueError, match="without a criterion"):
        MultiTaskDeepLab(4, {"A": 1}, layers=(1, 1, 1))(x, {"A": None})
    with pytest.raises(ValueError, match="pool must be"):
        ASPP(8, (1,), 4, pool="max")


def test_load_pretrained_rejects_foreign_or_mismatching_weights():
    model = MultiTaskDeepLab(18, {"SIC": 1}, layers=(1, 1, 1), aspp_channels=4)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_pretrained(model, {"model": sd})["layout"] == "iceseg"
    with pytest.raises(ValueError, match="unexpected keys .*heads.SOD"):
        load_pretrained(model, {**sd, "heads.SOD.4.bias": torch.zeros(7)})
    with pytest.raises(ValueError, match="shape mismatches"):
        load_pretrained(model, {**sd, "heads.SIC.4.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="missing keys"):
        load_pretrained(model, {k: v for k, v in sd.items() if k != "heads.SIC.4.bias"})
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        load_pretrained(model, {"backbone.x": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        load_pretrained(model, "/nonexistent/resnet152.pth")


def test_channels_last_gives_the_same_outputs():
    """train.channels_last (the DeepLab configs' default): same charts as NCHW, at a tiny width."""
    torch.manual_seed(0)
    ref = MultiTaskDeepLab(in_channels=4, layers=(1, 1, 1)).eval()
    fast = MultiTaskDeepLab(in_channels=4, layers=(1, 1, 1)).eval().to(memory_format=torch.channels_last)
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(1, 4, 48, 64)
    with torch.no_grad():
        a, b = ref.logits(x), fast.logits(x)
    for task in a:
        assert b[task].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(b[task], a[task], atol=1e-5, rtol=1e-5)
