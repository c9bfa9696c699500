"""Write the Swin golden assets ``tests/assets/swin_mmseg.pt`` and ``tests/assets/swin_timm.pt``.

Dev-only: needs the reference libraries, installed in a separate venv (never in iceseg's env):

    python -m venv --system-site-packages /work/venv-ref
    /work/venv-ref/bin/pip install --no-deps mmsegmentation==1.2.2 mmengine==0.10.7 mmcv-lite==2.1.0 \
        timm torchvision==0.28.0
    /work/venv-ref/bin/pip install addict termcolor yapf rich regex prettytable packaging ftfy \
        opencv-python-headless huggingface_hub safetensors pyyaml
    /work/venv-ref/bin/python dev/make_golden_swin.py

mmcv-lite has no compiled ops, so a stub ``mmcv.ops`` module is put in ``sys.modules`` before mmseg is
imported, and the PyPI torchvision wheel needs its ``nms``/``qnms`` op schemas defined on CPU torch
(pytorch/vision#9085). Weights are not stored: both reference models and iceseg get them from the key
names via ``tests/golden.py::seeded_state_dict``. The assets hold key names + shapes, a uint8 input
(``x = u8 / 64 - 2``), every ``OUTPUT_STRIDE``-th element of each flattened output, and library versions.

What is compared (fp32, eval, printed as max |diff|):
    mmseg ``SwinTransformer`` (Swin-T, window 7) at 1x3x225x301 after ``convert_mmseg_swin``: all four
    outputs; plus mmseg's bicubic resize of a window-12 bias table (``init_weights``) vs ours.
    timm ``swin_tiny_patch4_window7_224`` at 224x224 after ``convert_timm_swin``: timm's stage features
    plus a fresh LayerNorm (our ``norm0..3`` at init). With ``always_partition=True`` (timm then also
    shifts the 7x7 stage 3, as mmseg does) all four outputs; with timm's default only stages 0-2 agree.
    timm's ``relative_position_index`` / ``attn_mask`` buffers (= Microsoft's at 224) are stored for the
    official-layout round-trip test.
"""

import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "dev")]
from refenv import allow_torchvision_import, load_golden, stub_mmcv_ops  # noqa: E402

seeded_state_dict, seeded_tensor = load_golden().seeded_state_dict, load_golden().seeded_tensor

from iceseg.models.swin import (  # noqa: E402
    SwinTransformer,
    convert_to_official_swin,
    load_pretrained,
    relative_position_index,
    swin_tiny,
)

OUTPUT_STRIDE = 13  # keep every 13th element of each flattened output (assets < 1 MB)
RESIZE_KEY = "layers.2.blocks.3.attn.relative_position_bias_table"  # Swin-T stage 2: 12 heads


def import_references():
    """Import mmseg's SwinTransformer and timm with the two CPU workarounds described above."""
    allow_torchvision_import()
    stub_mmcv_ops()
    import timm
    from mmseg.models.backbones.swin import SwinTransformer as MMSwin
    return MMSwin, timm


def make_input(shape, seed):
    u8 = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return u8, u8.float() / 64 - 2


def sample(outs):
    return [o.detach().flatten()[::OUTPUT_STRIDE].clone() for o in outs]


def maxdiff(a, b):
    return [(x - y).abs().max().item() for x, y in zip(a, b, strict=True)]


def mmseg_asset(MMSwin):
    ref = MMSwin(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                 drop_path_rate=0.3, out_indices=(0, 1, 2, 3))
    ref.eval()  # mmseg's train() override returns None, so no chaining
    # relative_position_index is recomputed on both sides (seeded_tensor would zero it).
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("relative_position_index")}
    sd = seeded_state_dict(shapes)
    res = ref.load_state_dict(sd, strict=False)
    assert not res.unexpected_keys and all(k.endswith("relative_position_index") for k in res.missing_keys)
    idx = ref.stages[0].blocks[0].attn.w_msa.relative_position_index
    assert torch.equal(idx, relative_position_index(7)), "mmseg relative index differs from ours"

    u8, x = make_input((1, 3, 225, 301), seed=225)
    with torch.no_grad():
        want = ref(x)
    ours = SwinTransformer(swin_tiny()).eval()
    report = load_pretrained(ours, sd)
    assert report["layout"] == "mmseg" and not report["missing"] and not report["unexpected"], report
    with torch.no_grad():
        got = ours(x)
    diff = maxdiff(got, want)
    print("mmseg 1x3x225x301 max|diff| per output (explicit softmax):", ["%.2e" % d for d in diff])
    fused = SwinTransformer(swin_tiny(fused_attn=True)).eval()
    fused.load_state_dict(ours.state_dict())
    with torch.no_grad():
        print("mmseg 1x3x225x301 max|diff| per output (SDPA):", ["%.2e" % d for d in maxdiff(fused(x), want)])
    for extra_shape in [(2, 3, 97, 131), (1, 3, 32, 45)]:  # more odd sizes, incl. maps smaller than a window
        _, xe = make_input(extra_shape, seed=1)
        with torch.no_grad():
            print(f"mmseg {extra_shape} max|diff|:", ["%.2e" % d for d in maxdiff(ours(xe), ref(xe))])

    # Window-12 table into a window-7 model: mmseg's own loader (init_weights) does the bicubic resize.
    src = seeded_tensor(RESIZE_KEY, (23 * 23, 12))
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/w12.pth"
        torch.save({"state_dict": {"stages.2.blocks.3.attn.w_msa.relative_position_bias_table": src}}, path)
        ref_w7 = MMSwin(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                        init_cfg=dict(type="Pretrained", checkpoint=path))
        ref_w7.init_weights()
    resized = ref_w7.stages[2].blocks[3].attn.w_msa.relative_position_bias_table.detach().clone()
    ours_w7 = SwinTransformer(swin_tiny())
    load_pretrained(ours_w7, {RESIZE_KEY: src}, layout="official",
                    allow_missing=(r".*",))  # only the table is given here
    rdiff = (ours_w7.state_dict()[RESIZE_KEY] - resized).abs().max().item()
    print("bias-table resize 23x23 -> 13x13 vs mmseg init_weights max|diff|: %.2e" % rdiff)
    return {
        "versions": {n: version(n) for n in ("torch", "mmsegmentation", "mmengine", "mmcv-lite")},
        "config": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "window_size": 7},
        "ref_shapes": shapes, "input_u8": u8, "output_shapes": [tuple(o.shape) for o in want],
        "output_stride": OUTPUT_STRIDE, "outputs": sample(want), "dev_max_abs_diff": diff,
        "resize": {"key": RESIZE_KEY, "source_shape": (23 * 23, 12), "resized": resized},
    }


def timm_asset(timm):
    name = "swin_tiny_patch4_window7_224"
    refs = {ap: timm.create_model(name, pretrained=False, always_partition=ap).eval() for ap in (False, True)}
    shapes = {k: tuple(v.shape) for k, v in refs[True].state_dict().items()}
    sd = seeded_state_dict(shapes)
    for ref in refs.values():
        ref.load_state_dict(sd, strict=True)
    u8, x = make_input((1, 3, 224, 224), seed=224)
    with torch.no_grad():
        feats = {ap: ref.forward_intermediates(x, intermediates_only=True) for ap, ref in refs.items()}
    ln = [F.layer_norm(f.permute(0, 2, 3, 1), f.shape[1:2]).permute(0, 3, 1, 2) for f in feats[True]]
    ln_default = [F.layer_norm(f.permute(0, 2, 3, 1), f.shape[1:2]).permute(0, 3, 1, 2) for f in feats[False]]

    ours = SwinTransformer(swin_tiny()).eval()
    report = load_pretrained(ours, sd)
    assert report["layout"] == "timm" and report["missing"] == [f"norm{i}.{p}" for i in range(4)
                                                                for p in ("bias", "weight")], report
    with torch.no_grad():
        got = ours(x)
    diff = maxdiff(got, ln)
    print("timm 224 always_partition=True max|diff| per output (explicit):", ["%.2e" % d for d in diff])
    fused = SwinTransformer(swin_tiny(fused_attn=True)).eval()
    fused.load_state_dict(ours.state_dict(), strict=False)
    with torch.no_grad():
        print("timm 224 always_partition=True max|diff| per output (SDPA):", ["%.2e" % d for d in maxdiff(fused(x), ln)])
    print("timm 224 default (stage 3 not shifted by timm) max|diff|:", ["%.2e" % d for d in maxdiff(got, ln_default)])

    # Microsoft layout at 224, with the buffers as timm (= official) registers them.
    official, buffers = {}, {}
    for k, v in shapes.items():
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            k = ".".join(["layers", str(int(parts[1]) - 1)] + parts[2:])
        official[k.replace("head.fc.", "head.")] = v
    for k, b in refs[False].named_buffers():
        if b is not None and (k.endswith("relative_position_index") or k.endswith("attn_mask")):
            official[k] = tuple(b.shape)
            buffers[k] = b.clone()
    masks = {k: (b != 0) for k, b in buffers.items() if k.endswith("attn_mask")}
    assert all(torch.equal(b.unique(), torch.tensor([-100.0, 0.0])) for k, b in buffers.items() if k in masks)
    index = buffers["layers.0.blocks.0.attn.relative_position_index"]
    assert all(torch.equal(b, index) for k, b in buffers.items() if k.endswith("index"))
    ours_official = convert_to_official_swin(ours.state_dict(), img_size=224)
    backbone_keys = {k for k in official if not k.startswith(("head.", "norm."))}
    ok = set(ours_official) == backbone_keys and all(
        torch.equal(ours_official[k], buffers[k]) for k in buffers)
    print("convert_to_official_swin buffers equal timm's (Microsoft layout) at 224:", ok, "-", len(masks), "masks")
    return {
        "versions": {n: version(n) for n in ("torch", "timm")},
        "model_name": name, "create_kwargs": {"always_partition": True},
        "ref_shapes": shapes, "input_u8": u8, "output_shapes": [tuple(o.shape) for o in ln],
        "output_stride": OUTPUT_STRIDE, "outputs": sample(ln), "dev_max_abs_diff": diff,
        "official_shapes": official, "official_index": index,
        "official_attn_masks": masks, "attn_mask_value": -100.0,
    }


def main():
    MMSwin, timm = import_references()
    out_dir = ROOT / "tests" / "assets"
    for fname, asset in [("swin_mmseg.pt", mmseg_asset(MMSwin)), ("swin_timm.pt", timm_asset(timm))]:
        torch.save(asset, out_dir / fname)
        print(f"wrote {out_dir / fname} ({(out_dir / fname).stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
