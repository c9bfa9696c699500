"""Hand-computed loss values and inference invariants (slide == whole, TTA, binary probabilities)."""

import math

import pytest
import torch
import torch.nn as nn

from iceseg.inference import logits_to_probs, predict, window_starts
from iceseg.losses import bce_dice_loss, cross_entropy
from iceseg.transforms import rescale_size


def test_cross_entropy_mmseg_averaging_counts_ignored_pixels():
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0] = math.log(3.0)  # pixel 0: softmax (3/4, 1/4)
    label = torch.tensor([[[0, 255]]])
    # pixel 0 loss = -log(3/4); pixel 1 ignored; avg_non_ignore=False divides by 2 pixels
    assert cross_entropy(logits, label).item() == pytest.approx(-math.log(0.75) / 2)
    assert cross_entropy(logits, label, avg_non_ignore=True).item() == pytest.approx(-math.log(0.75))
    w = torch.tensor([2.0, 1.0])
    assert cross_entropy(logits, label, class_weight=w).item() == pytest.approx(-2 * math.log(0.75) / 2)


def test_cross_entropy_upsamples_logits_to_label_size():
    logits = torch.randn(2, 3, 4, 4)
    label = torch.randint(0, 3, (2, 8, 8))
    up = nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert cross_entropy(logits, label).item() == pytest.approx(nn.functional.cross_entropy(up, label).item(), rel=1e-6)


def test_bce_dice_hand_value():
    z = torch.tensor([[[[0.0, math.log(3.0)]]]])  # sigmoid: 0.5, 0.75
    y = torch.tensor([[[0, 1]]])
    bce = (-math.log(0.5) - math.log(0.75)) / 2
    dice = (2 * 0.75 + 1e-6) / (0.5 + 0.75 + 1 + 1e-6)
    assert bce_dice_loss(z, y).item() == pytest.approx(0.7 * bce + 0.3 * (1 - dice), rel=1e-6)
    y_ign = torch.tensor([[[255, 1]]])  # ignoring pixel 0 removes it from both terms
    dice2 = (2 * 0.75 + 1e-6) / (0.75 + 1 + 1e-6)
    assert bce_dice_loss(z, y_ign).item() == pytest.approx(0.7 * -math.log(0.75) + 0.3 * (1 - dice2), rel=1e-6)
    with pytest.raises(ValueError, match="expects"):
        bce_dice_loss(torch.zeros(1, 2, 1, 2), y)


def test_binary_probabilities_and_strict_threshold():
    probs = logits_to_probs(torch.tensor([[[[0.0, 1e-3, -1e-3]]]]))
    assert probs.shape == (1, 2, 1, 3)
    assert probs.argmax(1).tolist() == [[[0, 1, 0]]]  # p = 0.5 exactly -> background (p > 0.5 rule)


def test_slide_equals_whole_for_a_pointwise_model_and_tta_flip_invariance():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1).eval()  # pointwise: every window sees the same per-pixel function
    img = torch.randn(1, 3, 37, 53)
    whole = predict(model, img, "whole")
    slide = predict(model, img, "slide", crop_size=(16, 20), stride=(11, 13))
    assert torch.allclose(whole, slide, atol=1e-6)
    tta = predict(model, img, "whole", flips=["horizontal", "vertical", "both"])
    assert torch.allclose(tta, whole, atol=1e-6)  # flips commute with a pointwise model
    with pytest.raises(ValueError, match="TTA flip"):
        predict(model, img, flips=["diagonal"])


def test_slide_windows_cover_every_pixel_once_at_least():
    class Ones(nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 2, *x.shape[-2:])

    probs = predict(Ones(), torch.zeros(1, 1, 50, 70), "slide", crop_size=(32, 32), stride=(20, 20))
    assert torch.allclose(probs, torch.full_like(probs, 0.5))  # averaging divides by the right count


def test_rescale_size_keep_ratio():
    assert rescale_size((1600, 640), (2048, 1024)) == (2048, 819)  # NWPU 1600x640 -> 2048x819 (w, h)
    assert rescale_size((512, 512), (2048, 1024)) == (1024, 1024)
    assert window_starts(1000, 512, 341) == [0, 341, 488] and window_starts(300, 512, 341) == [0]


def test_test_time_resize_returns_input_size():
    model = nn.Conv2d(3, 2, 3, padding=1).eval()
    out = predict(model, torch.randn(1, 3, 40, 100), resize=(200, 100), scales=[0.5, 1.0])
    assert out.shape == (1, 2, 40, 100) and torch.allclose(out.sum(1), torch.ones(1, 40, 100))


@pytest.mark.parametrize("config,bn_left", [("deeplab_autoice_debug", 0), ("unetpp_glacier_debug", 0),
                                            ("knet_yrcc2_debug", 0), ("icesegnet_yrcc2_debug", 4)])
def test_fuse_conv_bn_matches_unfused_model(config, bn_left):
    """test.py's eval.fuse_conv_bn: every model family gives the same outputs with BN folded into its convs
    (SEFPN's BN follows a ConvModule, not a Conv2d, and stays)."""
    import copy

    import configs
    from iceseg.fast import fuse_conv_bn, optimize
    from iceseg.segmentor import build_model
    from tests.golden import seeded_state_dict

    cfg = configs.get_config(config)
    cfg.model.pretrained = ""
    model = build_model(cfg)
    # golden.py's seeded weights: BN statistics and affine terms away from 0/1, so a wrong fold (a dropped bias) shows
    model.load_state_dict(seeded_state_dict({k: v.shape for k, v in model.state_dict().items()}))
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn(copy.deepcopy(model).train())
    model.eval()
    part = copy.deepcopy(model)
    next(part.children()).train()  # one submodule left in training mode is refused too
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn(part)
    fused = fuse_conv_bn(copy.deepcopy(model))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == bn_left
    fast_fused = fuse_conv_bn(optimize(copy.deepcopy(model)))  # as test.py runs it (the sliced UPer bottleneck
    # then adds the bias that folding creates)
    in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(1, in_channels, 64, 48)
    with torch.no_grad():
        ref, out, fast_out = model(x), fused(x), fast_fused(x)
    pairs = [(ref[k], o[k]) for k in ref for o in (out, fast_out)] if isinstance(ref, dict) else [(ref, out), (ref, fast_out)]
    for a, b in pairs:
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4 * a.abs().max(), (config, (a - b).abs().max(), a.abs().max())
