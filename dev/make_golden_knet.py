"""Write the K-Net golden asset ``tests/assets/knet_mmseg.pt`` from mmseg 1.2.2's K-Net.

Dev-only: needs the reference venv described in dev/make_golden_swin.py (mmsegmentation 1.2.2,
mmengine, mmcv-lite with a stub ``mmcv.ops``), then

    /work/venv-ref/bin/python dev/make_golden_knet.py

Reference model: the ``knet-s3_swin-t_upernet_8xb2-adamw-80k_ade20k-512x512`` config (Swin-T, UPerHead
kernel generator, 3 KernelUpdateHeads with FFN 2048 and 8 heads, FCN aux head on level 2 with
``concat_input=False`` and weight 0.4) with plain BN instead of SyncBN and 4 classes. Weights are not
stored: both mmseg and iceseg get them from the key names through ``tests/golden.py::seeded_state_dict``
(with every ``fc_mask.weight`` scaled by ``fc_mask_scale`` = 0.25, see :func:`golden_state_dict`);
iceseg's ``knet`` model (``iceseg.segmentor.build_knet`` with a Swin-T backbone) loads them through
``iceseg.segmentor.convert_mmseg_segmentor`` (mmseg key layout, spec icesegnet.md §9.4).

Stored (fp32): key names + shapes, a uint8 input ``x = u8 / 64 - 2`` of shape 2x3x65x83 (odd sizes: Swin
padding, uneven FPN resizes), a label with ignored pixels, and
    ``eval_logits``: eval-mode logits resized to the input size (mmseg ``encode_decode``), every
    ``OUTPUT_STRIDE``-th element (``eval_logits_f64``: the same in float64, where the two implementations
    agree to ~1e-13 while float32 rounding alone moves mmseg's logits by ~1e-5); ``eval_s3``: the last
    stage's 1/4-resolution logits (mmseg ``decode_head.forward``) in full; ``train_losses``: mmseg ``loss()``
    values (``decode.loss_ce.s0..s3`` and ``aux.loss_ce``) in train mode with the backbone in eval mode and both
    Dropout2d set to p = 0 (so the batch-statistics BN path and the mmseg CE averaging are compared
    deterministically).
"""

import sys
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "dev")]
from refenv import allow_torchvision_import, load_golden, stub_mmcv_ops  # noqa: E402

_golden = load_golden()

import configs  # noqa: E402
from iceseg.models.swin import swin_tiny  # noqa: E402
from iceseg.segmentor import build_model, convert_mmseg_segmentor  # noqa: E402

OUTPUT_STRIDE = 7
NUM_CLASSES = 4
SHAPE = (2, 3, 65, 83)
FC_MASK_SCALE = 0.25


def import_mmseg():
    """mmseg's model registry with a stub ``mmcv.ops`` (mmcv-lite has no compiled ops) and the PyPI
    torchvision wheel's ``nms``/``qnms`` schemas defined on CPU torch (pytorch/vision#9085; mmseg's registry
    imports timm, which imports torchvision)."""
    allow_torchvision_import()
    stub_mmcv_ops()
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    return MODELS


def reference_config() -> dict:
    """knet-s3 Swin-T UPerNet with BN and 4 classes (values of the mmseg 1.2.2 config files)."""
    norm = dict(type="BN", requires_grad=True)
    stage = dict(type="KernelUpdateHead", num_classes=150, num_ffn_fcs=2, num_heads=8, num_mask_fcs=1,
                 feedforward_channels=2048, in_channels=512, out_channels=512, dropout=0.0, conv_kernel_size=1,
                 ffn_act_cfg=dict(type="ReLU", inplace=True), with_ffn=True,
                 feat_transform_cfg=dict(conv_cfg=dict(type="Conv2d"), act_cfg=None),
                 kernel_updator_cfg=dict(type="KernelUpdator", in_channels=256, feat_channels=256, out_channels=256,
                                         act_cfg=dict(type="ReLU", inplace=True), norm_cfg=dict(type="LN")))
    return dict(
        type="EncoderDecoder",
        backbone=dict(type="SwinTransformer", embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                      window_size=7, mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                      drop_path_rate=0.3, use_abs_pos_embed=False, patch_norm=True, out_indices=(0, 1, 2, 3)),
        decode_head=dict(
            type="IterativeDecodeHead", num_stages=3, kernel_update_head=[dict(stage) for _ in range(3)],
            kernel_generate_head=dict(type="UPerHead", in_channels=[96, 192, 384, 768], in_index=[0, 1, 2, 3],
                                      pool_scales=(1, 2, 3, 6), channels=512, dropout_ratio=0.1,
                                      num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False,
                                      loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))),
        auxiliary_head=dict(type="FCNHead", in_channels=384, in_index=2, channels=256, num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm,
                            align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
        train_cfg=dict(), test_cfg=dict(mode="whole"))


def ours_config():
    """The iceseg config the test builds: ``knet_yrcc2`` with a Swin-T backbone and no pretrained file."""
    cfg = configs.get_config("knet_yrcc2")
    cfg.model.pretrained = ""
    cfg.model.arch.backbone = swin_tiny(drop_path_rate=0.3)
    return cfg


def golden_state_dict(shapes: dict) -> dict:
    """``seeded_state_dict`` with each stage's ``fc_mask.weight`` scaled by ``FC_MASK_SCALE``.

    Seeded N(0, 1/fan_in) weights give dynamic kernels whose dot products with the 512-channel features reach
    logits of ~20; the sharp softmax of the next stage then amplifies float32 rounding so much that mmseg's own
    float32 logits are ~1e-4 away from its float64 ones. Smaller kernels (logits of a few units) keep the
    float32 comparison meaningful at the 1e-4 level. The test applies the same rule.
    """
    sd = _golden.seeded_state_dict(shapes)
    for k in sd:
        if k.endswith("fc_mask.weight"):
            sd[k] = sd[k] * FC_MASK_SCALE
    return sd


def make_inputs():
    g = torch.Generator().manual_seed(97)
    u8 = torch.randint(0, 256, SHAPE, generator=g, dtype=torch.uint8)
    label = torch.randint(0, NUM_CLASSES, (SHAPE[0], *SHAPE[2:]), generator=g, dtype=torch.uint8)
    label[:, :9, :] = 255  # an ignored band: mean over all pixels vs non-ignored ones differs
    return u8, label


def main():
    MODELS = import_mmseg()
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    torch.manual_seed(0)
    ref = MODELS.build(reference_config())
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("relative_position_index")}
    sd = golden_state_dict(shapes)
    res = ref.load_state_dict(sd, strict=False)
    assert not res.unexpected_keys and all(k.endswith("relative_position_index") for k in res.missing_keys)

    ours = build_model(ours_config())
    ours.load_state_dict(convert_mmseg_segmentor(sd), strict=True)

    u8, label = make_inputs()
    x = u8.float() / 64 - 2
    ref.eval()
    ours.eval()
    with torch.no_grad():
        want = ref.encode_decode(x, [dict(img_shape=tuple(SHAPE[2:]))])
        want_s3 = ref.decode_head(ref.extract_feat(x))
        got = ours(x)
        got_s3 = ours.decode_head(ours.extract_feat(x))
    d_eval, d_s3 = (got - want).abs().max().item(), (got_s3 - want_s3).abs().max().item()
    print(f"eval logits {tuple(want.shape)} max|diff| {d_eval:.2e} (max |logit| {want.abs().max():.1f}); "
          f"s3 {tuple(want_s3.shape)} max|diff| {d_s3:.2e}")
    meta = [dict(img_shape=tuple(SHAPE[2:]))]
    with torch.no_grad():  # float64: separates implementation differences from float32 rounding
        want64 = ref.double().encode_decode(x.double(), meta)
        d64 = (ours.double()(x.double()) - want64).abs().max().item()
        d32_vs_64 = (want - want64).abs().max().item()
    ref.float()
    ours.float()
    print(f"float64: ours vs mmseg max|diff| {d64:.2e}; mmseg float32 vs float64 {d32_vs_64:.2e}")

    for m in (ref, ours):
        m.train()
        m.backbone.eval()  # no drop-path randomness
    ref.decode_head.kernel_generate_head.dropout.p = 0.0
    ref.auxiliary_head.dropout.p = 0.0
    ours.decode_head.kernel_generate_head.dropout.p = 0.0
    ours.auxiliary_head.dropout.p = 0.0
    samples = []
    for b in range(SHAPE[0]):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=label[b][None].long())
        s.set_metainfo(dict(img_shape=tuple(SHAPE[2:]), ori_shape=tuple(SHAPE[2:])))
        samples.append(s)
    with torch.no_grad():
        ref_losses = {k: v.item() for k, v in ref.loss(x, samples).items() if "loss" in k}
        our_losses = {k: v.item() for k, v in ours(x, label.long()).items()}
    assert sorted(ref_losses) == sorted(our_losses), (ref_losses, our_losses)
    d_loss = max(abs(ref_losses[k] - our_losses[k]) for k in ref_losses)
    print("train losses (mmseg):", {k: round(v, 6) for k, v in ref_losses.items()}, f"max|diff| {d_loss:.2e}")

    asset = {
        "versions": {n: version(n) for n in ("torch", "mmsegmentation", "mmengine", "mmcv-lite")},
        "reference": "mmseg knet-s3_swin-t_upernet (BN, 4 classes) EncoderDecoder",
        "ref_shapes": shapes, "fc_mask_scale": FC_MASK_SCALE, "input_u8": u8, "label": label,
        "eval_shape": tuple(want.shape), "output_stride": OUTPUT_STRIDE,
        "eval_logits": want.flatten()[::OUTPUT_STRIDE].clone(), "eval_s3": want_s3.clone(),
        "eval_logits_f64": want64.flatten()[::OUTPUT_STRIDE].clone(),
        "train_losses": ref_losses,
        "dev_max_abs_diff": {"eval": d_eval, "s3": d_s3, "loss": d_loss, "eval_f64": d64,
                             "mmseg_f32_vs_f64": d32_vs_64},
    }
    path = ROOT / "tests" / "assets" / "knet_mmseg.pt"
    torch.save(asset, path)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
