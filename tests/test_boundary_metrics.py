"""BFscore and Boundary IoU (iceseg/metrics.py) on hand-computed masks, and their use in SegEvaluator."""

import math

import numpy as np
import pytest
import torch

import configs
from iceseg.evaluation import SegEvaluator
from iceseg.metrics import BoundaryMetrics, boundary_band, boundary_pixels, exclude_from_means


def reference_band(mask: np.ndarray, d: int) -> np.ndarray:
    """boundary-iou-api: pad one ring of zeros, erode d times with a 3x3 square, crop, mask - eroded."""
    m = np.pad(mask.astype(np.uint8), 1)
    for _ in range(d):
        p = np.pad(m, 1)
        m = np.min([p[1 + dy:p.shape[0] - 1 + dy, 1 + dx:p.shape[1] - 1 + dx]
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    return mask & ~m[1:-1, 1:-1].astype(bool)


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


def test_boundary_pixels_ignore_the_image_border():
    m = torch.zeros(5, 5, dtype=torch.bool)
    m[:, :2] = True
    assert boundary_pixels(m).nonzero()[:, 1].unique().tolist() == [1]


def test_ignore_pixels_are_not_scored():
    pred, target = stair_masks()
    t2 = target.clone()
    t2[0, 3:, :] = 255  # the rows where the prediction is wrong
    m = BoundaryMetrics(2, bf_tolerance=0.5 / math.hypot(6, 6), biou_dilation=1 / math.hypot(6, 6))
    m.update(pred, t2)
    out = m.compute()
    assert out["mBFscore"] == 100.0 and out["mBIoU"] == 100.0


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
    assert a.compute() == pytest.approx(whole.compute())
    out = whole.compute()
    assert out["mBIoU"] == pytest.approx(np.mean(out["BIoU"][:2]))
    means = exclude_from_means({"IoU": [10.0, 20.0, float("nan"), 90.0], "mIoU": 40.0, "aAcc": 50.0}, [3])
    assert means["mIoU"] == pytest.approx(15.0) and means["aAcc"] == 50.0


class FixedModel(torch.nn.Module):
    """Returns logits whose argmax is a stored prediction."""

    def __init__(self, pred: torch.Tensor, K: int):
        super().__init__()
        self.pred, self.K = pred, K

    def forward(self, img):
        return 10.0 * torch.nn.functional.one_hot(self.pred, self.K).permute(0, 3, 1, 2).float()  # (B, K, H, W)


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
