"""Swin backbone: golden parity with mmseg 1.2.2 and timm, parameter counts, converters, loader, padding.

The golden files are written by dev/make_golden_swin.py; weights are regenerated here from their
key names with tests/golden.py, so neither mmseg nor timm is needed.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iceseg.models.swin import (
    SwinTransformer,
    convert_mmseg_swin,
    convert_official_swin,
    convert_timm_swin,
    convert_to_official_swin,
    load_pretrained,
    swin_large,
    swin_large_w12,
    swin_tiny,
)
from tests import golden as _golden

ASSETS = Path(__file__).parent / "assets"
seeded_state_dict, seeded_tensor = _golden.seeded_state_dict, _golden.seeded_tensor

torch.set_num_threads(2)
NORM_KEYS = [f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]


def _tiny(**kw):
    return swin_tiny(embed_dim=8, num_heads=(1, 2, 2, 4), window_size=3, **kw)


def _asset(name):
    return torch.load(ASSETS / name, map_location="cpu", weights_only=True)


def _golden_check(asset, model, atol=1e-5):
    x = asset["input_u8"].float() / 64 - 2
    with torch.no_grad():
        outs = model.eval()(x)
    assert [tuple(o.shape) for o in outs] == [tuple(s) for s in asset["output_shapes"]]
    diffs = []
    for o, ref in zip(outs, asset["outputs"], strict=True):
        got = o.flatten()[::asset["output_stride"]]
        diffs.append((got - ref).abs().max().item())
        torch.testing.assert_close(got, ref, atol=atol, rtol=0)
    return diffs


@pytest.fixture(scope="module")
def mmseg_asset():
    return _asset("swin_mmseg.pt")


@pytest.fixture(scope="module")
def timm_asset():
    return _asset("swin_timm.pt")


def test_param_counts_on_meta():
    with torch.device("meta"):
        large, tiny = SwinTransformer(swin_large()), SwinTransformer(swin_tiny())

    def count(m, prefix=""):
        return sum(p.numel() for n, p in m.named_parameters() if n.startswith(prefix))

    assert count(large) == 194_998_164  # spec §7, mmseg layout incl. norm0..3
    assert [count(large, p) for p in ("patch_embed", "layers.0", "layers.1", "layers.2", "layers.3")] == [
        9_792, 1_188_204, 4_735_704, 132_379_440, 56_679_264]
    assert sum(count(large, f"norm{i}") for i in range(4)) == 5_760
    assert count(tiny) == 27_520_698


def test_official_names_and_non_persistent_buffers():
    model = SwinTransformer(_tiny())
    keys = set(model.state_dict())
    for k in ["patch_embed.proj.weight", "patch_embed.norm.bias", "layers.0.blocks.1.attn.qkv.weight",
              "layers.0.blocks.1.attn.relative_position_bias_table", "layers.2.blocks.5.norm1.weight",
              "layers.3.blocks.1.mlp.fc1.weight", "layers.2.downsample.reduction.weight", "norm3.weight"]:
        assert k in keys, k
    assert "layers.3.downsample.reduction.weight" not in keys
    assert not any("index" in k or "mask" in k for k in keys)
    assert any(k.endswith("relative_position_index") for k, _ in model.named_buffers())


def test_golden_mmseg_parity(mmseg_asset):
    """mmseg SwinTransformer (Swin-T) at 1x3x225x301, all four outputs, mmseg keys converted."""
    model = SwinTransformer(swin_tiny())
    plain = seeded_state_dict(mmseg_asset["ref_shapes"])
    sd = {"backbone." + k: v for k, v in plain.items()}
    sd["decode_head.conv_seg.weight"] = torch.zeros(2, 2)  # a full segmentor file: non-backbone keys ignored
    report = load_pretrained(model, {"state_dict": sd})
    assert (report["layout"], report["missing"], report["unexpected"]) == ("mmseg", [], [])
    diffs = _golden_check(mmseg_asset, model)
    print("mmseg golden max|diff|:", ["%.1e" % d for d in diffs])

    # A missing unfold->Microsoft permutation of the merge weights is caught numerically.
    raw = convert_mmseg_swin(sd)
    for k, v in plain.items():
        if ".downsample." in k:
            raw[k.replace("stages.", "layers.")] = v
    model.load_state_dict(raw)
    x = mmseg_asset["input_u8"].float() / 64 - 2
    with torch.no_grad():
        out1 = model(x)[1].flatten()[::mmseg_asset["output_stride"]]
    assert (out1 - mmseg_asset["outputs"][1]).abs().max() > 1e-2


def test_golden_timm_parity(timm_asset):
    """timm swin_tiny_patch4_window7_224 (always_partition) features + fresh LayerNorm at 224x224."""
    model = SwinTransformer(swin_tiny())
    report = load_pretrained(model, seeded_state_dict(timm_asset["ref_shapes"]))
    assert report["layout"] == "timm" and report["missing"] == NORM_KEYS
    assert report["unexpected"] == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    diffs = _golden_check(timm_asset, model)
    print("timm golden max|diff|:", ["%.1e" % d for d in diffs])


def _official_state_dict(asset):
    """Microsoft-layout Swin-T dict at 224: seeded parameters + the reference buffers from the asset."""
    params = {k: s for k, s in asset["official_shapes"].items() if not k.endswith(("_index", "attn_mask"))}
    sd = seeded_state_dict(params)
    for k, shape in asset["official_shapes"].items():
        if k.endswith("relative_position_index"):
            sd[k] = asset["official_index"].clone()
        elif k.endswith("attn_mask"):
            sd[k] = torch.zeros(shape).masked_fill_(asset["official_attn_masks"][k], asset["attn_mask_value"])
    return sd


def test_official_round_trip_exact(timm_asset):
    official = _official_state_dict(timm_asset)
    ours = convert_official_swin({"model": official})
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in ours)
    back = convert_to_official_swin(ours, img_size=224)
    assert set(back) == set(official)
    for k, v in official.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    model = SwinTransformer(swin_tiny())
    report = load_pretrained(model, {"model": official})
    assert report["layout"] == "official" and report["missing"] == NORM_KEYS
    assert report["unexpected"] == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    for k, v in model.state_dict().items():
        if not k.startswith("norm"):
            assert torch.equal(v, official[k]), k


def test_window12_official_file_into_window7(tmp_path, mmseg_asset):
    w12 = SwinTransformer(swin_tiny(window_size=12))
    official = convert_to_official_swin(w12.state_dict(), img_size=384)
    official = {k: v if k.endswith(("_index", "attn_mask")) else seeded_tensor(k, tuple(v.shape))
                for k, v in official.items()}
    assert official["layers.0.blocks.1.attn_mask"].shape == (64, 144, 144)
    official.update({"norm.weight": torch.ones(768), "norm.bias": torch.zeros(768),
                     "head.weight": torch.zeros(10, 768), "head.bias": torch.zeros(10)})
    path = tmp_path / "swin_tiny_patch4_window12_384.pth"
    torch.save({"model": official}, path)

    model = SwinTransformer(swin_tiny())  # window 7
    report = load_pretrained(model, path)
    assert report["layout"] == "official" and report["missing"] == NORM_KEYS
    assert len(report["resized"]) == 12 and report["unexpected"] == ["head.bias", "head.weight", "norm.bias",
                                                                     "norm.weight"]
    ref = mmseg_asset["resize"]  # mmseg init_weights' bicubic resize of the same seeded 23x23 table
    assert tuple(official[ref["key"]].shape) == tuple(ref["source_shape"])
    torch.testing.assert_close(model.state_dict()[ref["key"]], ref["resized"], atol=1e-6, rtol=0)
    with torch.no_grad():
        assert all(o.isfinite().all() for o in model.eval()(torch.randn(1, 3, 40, 50)))


def test_loader_rejects_bad_checkpoints(tmp_path):
    model = SwinTransformer(_tiny())
    good = model.state_dict()
    before = {k: v.clone() for k, v in good.items()}
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(model, tmp_path / "nope.pth")
    bad_cases = [
        {**good, "foo.bar": torch.zeros(1)},  # unexpected, not allow-listed
        {k: v for k, v in good.items() if k != "layers.1.blocks.0.attn.qkv.weight"},  # missing
        {**good, "layers.0.blocks.0.mlp.fc1.weight": torch.zeros(3, 3)},  # shape
    ]
    for sd in bad_cases:
        with pytest.raises(ValueError, match="load_pretrained"):
            load_pretrained(model, {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()})
    with pytest.raises(ValueError, match="layout"):
        load_pretrained(model, good, layout="detectron")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    assert load_pretrained(model, {"module." + k: v for k, v in good.items()})["missing"] == []
    with pytest.raises(ValueError, match="convert_official_swin"):
        convert_timm_swin({"layers.0.downsample.reduction.weight": torch.zeros(1)})


def test_mmseg_merge_channel_order():
    # mmseg nn.Unfold channel c*4 + k (k = 2*row + col); Microsoft blocks (0,0), (1,0), (0,1), (1,1).
    C = 3
    k = torch.arange(4).repeat(C)  # value = kernel index at each mmseg channel
    out = convert_mmseg_swin({"stages.0.downsample.norm.weight": k})["layers.0.downsample.norm.weight"]
    assert out.view(4, C)[:, 0].tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("shape", [(2, 3, 70, 90), (1, 3, 33, 17), (1, 3, 5, 5), (1, 3, 1, 1)])
def test_any_input_size_and_backward(shape):
    torch.manual_seed(0)
    model = SwinTransformer(_tiny(drop_path_rate=0.2)).train()
    outs = model(torch.randn(*shape))
    h, w = -(-shape[2] // 4), -(-shape[3] // 4)
    for i, o in enumerate(outs):
        assert o.shape == (shape[0], 8 * 2 ** i, h, w)
        h, w = -(-h // 2), -(-w // 2)
    sum(o.square().mean() for o in outs).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    with pytest.raises(ValueError, match="SwinTransformer"):
        model(torch.randn(1, 4, 8, 8))


def test_fused_attention_matches_explicit():
    torch.manual_seed(0)
    fused = SwinTransformer(_tiny(fused_attn=True)).eval()
    explicit = SwinTransformer(_tiny(fused_attn=False)).eval()
    explicit.load_state_dict(fused.state_dict())
    with torch.no_grad():
        for p in fused.parameters():  # O(1) weights so the bias/mask matter
            p.add_(torch.randn_like(p) * 0.3)
        explicit.load_state_dict(fused.state_dict())
        x = torch.randn(2, 3, 61, 47)
        for a, b in zip(fused(x), explicit(x), strict=True):  # fp32 sums in another order: 1e-5 relative too
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # without the bias: off by 0.5-1.3


def test_drop_path_rises_linearly_and_presets():
    with torch.device("meta"):
        model = SwinTransformer(swin_large(drop_path_rate=0.3))
    rates = [b.drop_path.drop_prob for layer in model.layers for b in layer.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 24).tolist()) and rates[0] == 0.0
    assert [b.shift_size for b in model.layers[2].blocks[:3]] == [0, 3, 0]
    cfg = swin_large_w12()
    assert (cfg.window_size, cfg.embed_dim, cfg.depths, cfg.num_heads) == (12, 192, (2, 2, 18, 2), (6, 12, 24, 48))
    with pytest.raises(ValueError, match="out_indices"):
        SwinTransformer(swin_tiny(out_indices=(4,)))


def test_gradient_checkpointing_same_grads():
    torch.manual_seed(0)
    plain = SwinTransformer(_tiny(drop_path_rate=0.0)).train()
    cp = SwinTransformer(_tiny(drop_path_rate=0.0, with_cp=True)).train()
    cp.load_state_dict(plain.state_dict())
    calls = []
    cp.layers[0].blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    x = torch.randn(1, 3, 37, 29)
    for m in (plain, cp):
        sum(o.sum() for o in m(x)).backward()
    assert len(calls) == 2  # forward + recomputation in backward
    for (n, a), b in zip(plain.named_parameters(), cp.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=n)


def test_file_runs_alone(tmp_path):
    src = Path(__file__).parents[1] / "iceseg" / "models" / "swin.py"
    tree = ast.parse(src.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert mods <= {"torch", "math", "os", "re", "dataclasses", "collections"}, mods
    shutil.copy(src, tmp_path / "swin.py")
    code = ("import swin, torch; m = swin.SwinTransformer(swin.swin_tiny(embed_dim=8, num_heads=(1, 1, 1, 1)));"
            "r = swin.load_pretrained(m, m.state_dict()); print([tuple(o.shape) for o in m(torch.randn(1, 3, 30, 30))])")
    proc = subprocess.run([sys.executable, "-E", "-s", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(1, 64, 1, 1)" in proc.stdout
