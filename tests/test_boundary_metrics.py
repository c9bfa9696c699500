"""BFscore and Boundary IoU (iceseg/metrics.py) on hand-computed masks, and their use in SegEvaluator."""

import math

import numpy as np
import pytest
import torch

import configs
from iceseg.evaluation import SegEvaluator
from iceseg.metrics import BoundaryMetrics, boundary_band, exclude_from_means, label_edges


def reference_band(mask: np.ndarray, d: int) -> np.ndarray:
    """boundary-iou-api: pad one ring of zeros, erode d times with a 3x3 square, crop, mask - eroded."""
    m = np.pad(mask.astype(np.uint8), 1)
    for _ in range(d):
        p = np.pad(m, 1)
        m = np.min([p[1 + dy:p.shape[0] - 1 + dy, 1 + dx:p.shape[1] - 1 + dx]
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    return mask & ~m[1:-1, 1:-1].astype(bool)


def assert_metrics_close(got: dict, want: dict) -> None:
    """Key by key (pytest 9 refuses ``approx`` of a dict holding lists); NaN equals NaN."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key


def two_rectangles(ring: int) -> torch.Tensor:
    """(1, 64, 64): two rectangles of class 1 on class 0, each inside a ``ring``-px ring of 255."""
    target = torch.zeros(1, 64, 64, dtype=torch.long)
    for r0, r1, c0, c1 in ((10, 20, 10, 24), (36, 52, 30, 50)):
        target[0, r0 - ring:r1 + ring, c0 - ring:c1 + ring] = 255
        target[0, r0:r1, c0:c1] = 1
    return target


def stair_masks():
    """6 x 6: target class 1 = columns 0-2; the prediction moves rows 3-5 one column right."""
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    target[0, :, :3] = 1
    pred = target.clone()
    pred[0, 3:, 3] = 1
    return pred, target


def test_identical_masks_score_100():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 20, 24, generator=g) * 4).long()
    target[0, :5, :5] = 255
    m = BoundaryMetrics(4)
    m.update(target.clone(), target)
    out = m.compute()
    assert out["mBFscore"] == 100.0 and out["mBIoU"] == 100.0
    assert out["BFscore"] == [100.0] * 4 and out["BIoU"] == [100.0] * 4


def test_bfscore_by_hand():
    pred, target = stair_masks()
    diag = math.hypot(6, 6)
    # theta 0.5 px: exact matches only. Class 1: B_G = column 2 (6 px), B_P = column 2 rows 0-2 + column 3
    # rows 3-5, so P = R = 3/6. Class 0 mirrors it. Image score = mean(0.5, 0.5).
    m = BoundaryMetrics(2, bf_tolerance=0.5 / diag)
    m.update(pred, target)
    assert m.compute()["BFscore"] == pytest.approx([50.0, 50.0]) and m.compute()["mBFscore"] == pytest.approx(50.0)
    m = BoundaryMetrics(2, bf_tolerance=1.0 / diag)  # theta 1 px: every boundary pixel has a partner
    m.update(pred, target)
    assert m.compute()["mBFscore"] == pytest.approx(100.0)


def test_bfscore_averages_per_image_then_over_images():
    pred, target = stair_masks()
    m = BoundaryMetrics(2, bf_tolerance=0.5 / math.hypot(6, 6))
    m.update(torch.cat([pred, target]), torch.cat([target, target]))  # images score 50 and 100
    only0 = torch.zeros(1, 6, 6, dtype=torch.long)
    m.update(only0, only0)  # class 0 alone, no boundary on either side: F1 = 1
    out = m.compute()
    assert out["mBFscore"] == pytest.approx((50 + 100 + 100) / 3)
    assert out["BFscore"] == pytest.approx([(50 + 100 + 100) / 3, (50 + 100) / 2])  # class 1 in two images
    missing = BoundaryMetrics(2)
    missing.update(torch.zeros(1, 6, 6, dtype=torch.long), target)  # class 1 never predicted: F1 0
    assert missing.compute()["BFscore"][1] == 0.0


def test_boundary_iou_by_hand():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, 1:3, 2:4] = 1
    m = BoundaryMetrics(2, biou_dilation=1 / math.hypot(4, 4))  # d = 1 px
    m.update(pred, target)
    out = m.compute()
    # class 1: both 2x2 blocks are all band, overlap 2 of 6 pixels; class 0: bands of 12 pixels each
    # (image border), 10 shared of 14.
    assert out["BIoU"] == pytest.approx([100 * 10 / 14, 100 * 2 / 6])
    assert out["mBIoU"] == pytest.approx(50 * (10 / 14 + 2 / 6))


@pytest.mark.parametrize("d", [1, 2, 3, 7])
def test_boundary_band_matches_reference_erosion(d):
    g = torch.Generator().manual_seed(d)
    masks = torch.nn.functional.interpolate(torch.rand(3, 1, 5, 6, generator=g), size=(19, 23), mode="bilinear")[:, 0] > 0.5
    got = boundary_band(masks, d).numpy()
    for i in range(3):
        np.testing.assert_array_equal(got[i], reference_band(masks[i].numpy(), d))


def test_label_edges_ignore_the_image_border():
    m = torch.zeros(5, 5, dtype=torch.bool)
    m[:, :2] = True
    assert label_edges(m).nonzero()[:, 1].unique().tolist() == [1, 2]  # both sides of the step, not the border
    assert label_edges(m.numpy()).nonzero()[1].tolist() == label_edges(m).nonzero()[:, 1].tolist()


def test_ignore_pixels_are_not_scored():
    pred, target = stair_masks()
    t2 = target.clone()
    t2[0, 3:, :] = 255  # the rows where the prediction is wrong; valid = rows 0-2
    m = BoundaryMetrics(2, bf_tolerance=0.5 / math.hypot(6, 6), biou_dilation=1 / math.hypot(6, 6))
    m.update(pred, t2)
    out = m.compute()
    # BF, exact matches. The label's edge against the ignored rows is a boundary: B_G(1) = (0,2), (1,2)
    # and row 2 cols 0-2 (5 px). The prediction's own edges on valid pixels: column 2 rows 0-2 (3 px);
    # its edges in rows 3-5 are dropped. P = 3/3, R = 3/5, F1 = 0.75; class 0 mirrors it (columns 3-5).
    assert out["BFscore"] == pytest.approx([75.0, 75.0]) and out["mBFscore"] == pytest.approx(75.0)
    # BIoU, d = 1. G_1 band = the 3x3 block minus its centre (1,1) (8 px, row 2 borders the ignored
    # rows). P_1 = the block plus rows 3-5 cols 0-3: its band misses (1,1) and (2,1), whose neighbours
    # are all predicted 1, so 7 px on valid pixels, all in G_1's band: 7/8. Class 0: both bands are
    # rows 0-2 cols 3-5 minus (1,4) ((2,4) touches the predicted 1 at (3,3)): 8/8.
    assert out["BIoU"] == pytest.approx([100.0, 87.5]) and out["mBIoU"] == pytest.approx(93.75)


def test_ignore_band_creates_no_matching_boundaries():
    plain, ringed = two_rectangles(0), two_rectangles(6)
    pred = torch.zeros(1, 64, 64, dtype=torch.long)  # class 0 everywhere, no boundary at all
    scores = []
    for target in (plain, ringed):
        m = BoundaryMetrics(2)
        m.update(pred, target)
        scores.append(m.compute())
    # B_P is empty for both classes, B_G is not (class 0 along the rectangles or along the rings):
    # F1 = 0 for both classes, with or without the ring: the ring lends the prediction no boundary.
    assert scores[1]["BFscore"][0] <= scores[0]["BFscore"][0]
    assert scores[0]["BFscore"] == [0.0, 0.0] and scores[1]["BFscore"] == [0.0, 0.0]
    assert scores[1]["mBFscore"] == 0.0


def test_perfect_prediction_with_an_ignore_band_scores_one_side():
    target = two_rectangles(6)
    inside, outside = two_rectangles(0), torch.where(target == 255, 1, target)  # ring predicted 0 / 1
    m = BoundaryMetrics(2)  # theta = 0.68 px (exact matches only), d = 2
    m.update(inside, target)
    out = m.compute()
    # Correct on every valid pixel, yet not 100: the label has a boundary on both sides of each ring,
    # the prediction one boundary, somewhere in between. Ring predicted 0: class 1's boundary (the
    # rectangle's rim) matches exactly (F1 1); class 0's label boundary (just outside the ring) has
    # no valid predicted partner, the prediction's class-0 edge lies in the ring (F1 0). Image: 50.
    assert out["BFscore"] == [0.0, 100.0] and out["mBFscore"] == 50.0
    # BIoU: class 1 bands identical. Class 0: both bands hold the 2-px image frame (64^2 - 60^2 = 496 px);
    # G_0's band also the 2-px halos outside the rings (26 * 30 - 22 * 26 = 208 and 32 * 36 - 28 * 32
    # = 256 px), P_0's band lies in the rings (dropped).
    assert out["BIoU"] == pytest.approx([100 * 496 / 960, 100.0])
    m = BoundaryMetrics(2)
    m.update(outside, target)  # ring predicted 1: now class 0 matches and class 1 does not
    assert m.compute()["BFscore"] == [100.0, 0.0] and m.compute()["mBFscore"] == 50.0


def test_sums_add_across_shards_and_exclusion():
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(4, 16, 16, generator=g) * 3).long()
    pred = torch.where(torch.rand(4, 16, 16, generator=g) < 0.8, target, (target + 1) % 3)
    whole = BoundaryMetrics(3, bf_tolerance=0.1, exclude=[2])
    whole.update(pred, target)
    a, b = BoundaryMetrics(3, bf_tolerance=0.1, exclude=[2]), BoundaryMetrics(3, bf_tolerance=0.1, exclude=[2])
    a.update(pred[:1], target[:1])
    b.update(pred[1:], target[1:])
    a.sums += b.sums  # what all_reduce does across ranks
    a.all_reduce()  # no process group: a no-op
    assert_metrics_close(a.compute(), whole.compute())
    out = whole.compute()
    assert out["mBIoU"] == pytest.approx(np.mean(out["BIoU"][:2]))
    means = exclude_from_means({"IoU": [10.0, 20.0, float("nan"), 90.0], "mIoU": 40.0, "aAcc": 50.0}, [3])
    assert means["mIoU"] == pytest.approx(15.0) and means["aAcc"] == 50.0


class FixedModel(torch.nn.Module):
    """Returns logits whose argmax is a stored ``(B, H, W)`` prediction, zero-padded to the input's size
    (inference pads to ``eval.size_divisor`` and crops back)."""

    def __init__(self, pred: torch.Tensor, K: int):
        super().__init__()
        self.pred, self.K = pred, K

    def forward(self, img):
        logits = 10.0 * torch.nn.functional.one_hot(self.pred, self.K).permute(0, 3, 1, 2).float()  # (B, K, H, W)
        H, W = self.pred.shape[-2:]
        return torch.nn.functional.pad(logits, (0, img.shape[-1] - W, 0, img.shape[-2] - H))  # (B, K, H', W')


def test_seg_evaluator_reports_boundary_metrics_and_class_exclusion():
    cfg = configs.get_config("unetpp_potsdam")
    pred, target = stair_masks()
    target = target * 5  # classes 0 and 5 (clutter)
    pred = pred * 5
    ev = SegEvaluator(cfg, torch.device("cpu"))
    ev.update(FixedModel(pred, 6), {"img": torch.zeros(1, 3, 6, 6), "label": target, "name": ["a"]})
    out = ev.compute()
    assert {"BFscore", "mBFscore", "BIoU", "mBIoU", "mFscore"} <= set(out)
    assert out["mIoU"] == pytest.approx(out["IoU"][0])  # clutter (class 5) left out; classes 1-4 absent (NaN)
    assert "mBFscore" in ev.table(out) and "clutter" in ev.table(out)
    cfg.eval.boundary_metrics = False
    ev = SegEvaluator(cfg, torch.device("cpu"))
    ev.update(FixedModel(pred, 6), {"img": torch.zeros(1, 3, 6, 6), "label": target, "name": ["a"]})
    assert "mBFscore" not in ev.compute()


def test_seg_evaluator_keeps_the_per_image_mbfscore_with_excluded_classes():
    cfg = configs.get_config("unetpp_potsdam")  # eval.exclude_classes = [5]
    assert cfg.eval.exclude_classes == [5]
    pred, target = stair_masks()  # classes 0 / 1, BF 50 and 50 (theta 0.06 px: exact matches)
    zero = torch.zeros_like(target)
    preds, targets = torch.cat([pred, zero, pred * 5]), torch.cat([target, zero, target * 5])
    # Image scores: 50 (classes 0, 1), 100 (class 0 alone), 50 (classes 0 and 5, 5 excluded) -> 200/3.
    # Per class: BF[0] = (50 + 100 + 50) / 3, BF[1] = 50, so the per-class mean is 175/3 instead.
    ev = SegEvaluator(cfg, torch.device("cpu"))
    ev.update(FixedModel(preds, 6), {"img": torch.zeros(3, 3, 6, 6), "label": targets, "name": list("abc")})
    out = ev.compute()
    bm = BoundaryMetrics(6, 255, cfg.eval.bf_tolerance, cfg.eval.biou_dilation, exclude=[5])
    bm.update(preds, targets)
    assert bm.compute()["mBFscore"] == pytest.approx(200 / 3)
    assert out["mBFscore"] == pytest.approx(bm.compute()["mBFscore"])
    assert out["mBFscore"] != pytest.approx(np.nanmean(out["BFscore"][:5]))
    assert out["BFscore"][:2] == pytest.approx([200 / 3, 50.0]) and out["BFscore"][5] == pytest.approx(50.0)
    assert out["mIoU"] == pytest.approx(np.nanmean(out["IoU"][:5]))  # clutter still left out of mIoU
