"""U-Net++ (ResNet-34): golden parity with smp 0.6.0, key layout, first-conv rule, loaders.

The golden file is written by dev/make_golden_unetpp.py; weights are regenerated here from
its key names with tests/golden.py, so smp is not needed.
"""

from pathlib import Path

import pytest
import torch

from iceseg.models.unetpp import (
    UNetPlusPlus,
    convert_smp_unetpp,
    convert_torchvision_resnet,
    load_pretrained,
    patch_first_conv,
    unetpp_resnet34,
)
from tests import golden as _golden

ASSET = Path(__file__).parent / "assets" / "unetpp_golden.pt"
seeded_state_dict = _golden.seeded_state_dict

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def golden():
    return torch.load(ASSET, map_location="cpu", weights_only=True)


def _shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_keys_shapes_and_param_count(golden):
    model = unetpp_resnet34()
    assert list(_shapes(model).items()) == list(golden["keys_shapes"].items())  # same keys, order, shapes
    assert len(golden["keys_shapes"]) == 350
    assert sum(p.numel() for p in model.parameters()) == 26_084_881
    scse = unetpp_resnet34(decoder_attention_type="scse")
    assert list(_shapes(scse).items()) == list(golden["scse_keys_shapes"].items())


@pytest.mark.parametrize("case", ["eval", "train", "scse"])
def test_golden_parity_with_smp(golden, case):
    keys = golden["scse_keys_shapes"] if case == "scse" else golden["keys_shapes"]
    model = UNetPlusPlus(5, 1, decoder_attention_type="scse" if case == "scse" else None)
    sd = convert_smp_unetpp({"state_dict": {"module." + k: v for k, v in seeded_state_dict(keys).items()}})
    model.load_state_dict(sd, strict=True)
    x = golden["train_input"] if case == "train" else golden["input"]
    ref = golden[{"eval": "output", "train": "train_output", "scse": "scse_output"}[case]]
    with torch.no_grad():
        y = model.train(case == "train")(x)
    diff = (y - ref).abs().max().item()
    print(f"unetpp golden parity ({case}): max |diff| = {diff:.3e}, ref std {ref.std():.3f}")
    assert y.shape == ref.shape
    assert diff <= 1e-5


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_patch_first_conv_closed_form(n):
    w = torch.randn(64, 3, 7, 7)
    out = patch_first_conv(w, n)
    assert out.shape == (64, n, 7, 7)
    if n == 1:
        expected = w.sum(1, keepdim=True)
    else:
        expected = torch.stack([w[:, i % 3] for i in range(n)], dim=1) * (3 / n)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if n == 5:  # R, G, B, R, G filters, each x 0.6
        torch.testing.assert_close(out[:, 3], 0.6 * w[:, 0], rtol=0, atol=0)


def _fake_torchvision_resnet34():
    """A torchvision-layout resnet34 state dict: our encoder keys, 3-channel conv1, plus fc."""
    enc = {
        k[len("encoder.") :]: v
        for k, v in UNetPlusPlus(in_channels=3).state_dict().items()
        if k.startswith("encoder.")
    }
    enc = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in enc.items()}
    enc["fc.weight"], enc["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return enc


def test_load_torchvision_encoder_file(tmp_path):
    tv = _fake_torchvision_resnet34()
    path = tmp_path / "resnet34.pth"
    torch.save(tv, path)
    model = UNetPlusPlus(in_channels=5)
    head_before = model.segmentation_head[0].weight.clone()
    report = load_pretrained(model, path)
    assert report["layout"] == "torchvision" and report["unexpected"] == []
    assert report["missing"] and all(
        k.startswith(("decoder.", "segmentation_head.")) for k in report["missing"]
    )
    assert len(report["missing"]) == 350 - 216
    sd = model.state_dict()
    torch.testing.assert_close(
        sd["encoder.conv1.weight"], patch_first_conv(tv["conv1.weight"], 5), rtol=0, atol=0
    )
    torch.testing.assert_close(
        sd["encoder.layer3.0.downsample.1.running_var"], tv["layer3.0.downsample.1.running_var"]
    )
    assert torch.equal(model.segmentation_head[0].weight, head_before)  # untouched
    conv = convert_torchvision_resnet(tv, in_channels=5)
    assert "fc.weight" not in conv and conv["encoder.conv1.weight"].shape == (64, 5, 7, 7)


def test_load_rejects_unexpected_and_missing_keys(tmp_path):
    tv = _fake_torchvision_resnet34()
    tv["layer5.0.conv1.weight"] = torch.randn(8, 8, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(tv, path)
    model = UNetPlusPlus(in_channels=5)
    before = model.encoder.conv1.weight.clone()
    with pytest.raises(ValueError, match="layer5.0.conv1.weight"):
        load_pretrained(model, path)
    assert torch.equal(model.encoder.conv1.weight, before)  # nothing loaded on failure
    smp_sd = {k: v for k, v in model.state_dict().items() if not k.startswith("decoder.blocks.x_0_4.")}
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(model, smp_sd)  # full-model layout: nothing may be missing
    extra = dict(model.state_dict(), **{"decoder.blocks.x_9_9.conv1.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="x_9_9"):
        load_pretrained(model, extra)
    with pytest.raises(FileNotFoundError):
        load_pretrained(model, tmp_path / "nope.pth")


def test_load_smp_checkpoint_roundtrip(tmp_path):
    src = UNetPlusPlus()
    path = tmp_path / "smp.pth"
    torch.save({"model": {"_orig_mod." + k: v for k, v in src.state_dict().items()}}, path)
    dst = UNetPlusPlus()
    report = load_pretrained(dst, path)
    assert report == {"layout": "smp", "missing": [], "unexpected": []}
    x = torch.rand(1, 5, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))
    with pytest.raises(ValueError, match="shapes"):
        load_pretrained(UNetPlusPlus(num_classes=3), path)


def test_bad_size_raises_and_backward_is_finite():
    model = UNetPlusPlus()
    with pytest.raises(ValueError, match="64x80"):
        model(torch.rand(1, 5, 64, 80))
    with pytest.raises(ValueError, match="input"):
        model(torch.rand(1, 3, 64, 64))
    x = torch.rand(1, 5, 64, 64)
    y = model(x)
    assert y.shape == (1, 1, 64, 64)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.conv1.weight.grad.abs().sum() > 0


def test_channels_last_gives_the_same_logits_and_gradients():
    """train.channels_last (the U-Net++ configs' default): the same function as NCHW, NHWC activations.

    Checked in float64 (agreement ~1e-13): in float32 train mode the BatchNorms on batch statistics of 2x64x64
    maps amplify rounding to ~1e-4 in the logits and ~1 % in the gradients, for both layouts alike."""
    torch.manual_seed(0)
    ref = UNetPlusPlus().double()
    fast = UNetPlusPlus().double().to(memory_format=torch.channels_last)
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(2, 5, 64, 64, dtype=torch.float64)
    y_ref, y = ref(x), fast(x)
    deep_ref, deep = ref.encoder(x)[-1], fast.encoder(x)[-1]  # (2, 512, 2, 2): the layout shows at C > 1
    assert deep.is_contiguous(memory_format=torch.channels_last)
    assert not deep_ref.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    y_ref.square().mean().backward()
    y.square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-10, rtol=1e-8, msg=name)
