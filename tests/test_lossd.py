"""The distance loss (iceseg/losses.py DistanceLoss): pinned values, gradients, ignore, config plumbing,
and real LoveDA tiles trained with and without Lossd."""

import json
import math

import numpy as np
import pytest
import torch

import configs
from iceseg.losses import DistanceLoss, SegLoss, distance_loss
from iceseg.segmentor import build_model
from tests.conftest import run_script

K_CAP = 50


def phi(d: float) -> float:
    return math.log1p(d) / math.log1p(K_CAP)


EPS = math.log1p(1e-6) / math.log1p(K_CAP)  # Lossd's cost of a correct pixel (~2.5e-7)


def square_label(H: int = 12, W: int = 14) -> torch.Tensor:
    label = torch.zeros(1, H, W, dtype=torch.long)
    label[0, 3:9, 2:8] = 1  # a 6 x 6 square, inside distance up to 3
    return label


def binary_prob(pred: torch.Tensor) -> torch.Tensor:
    """(B, H, W) 0/1 prediction -> (B, 1, H, W) foreground probability, exactly 0/1, requires grad."""
    return pred[:, None].float().requires_grad_()


def onehot_prob(pred: torch.Tensor, K: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, K).permute(0, 3, 1, 2).float().requires_grad_()  # (B, K, H, W)


@pytest.mark.parametrize("binary", [True, False])
def test_perfect_prediction(binary):
    label = square_label()
    prob = binary_prob(label) if binary else onehot_prob(label, 2)
    assert distance_loss(prob, label, "lossd").item() == pytest.approx(EPS, rel=1e-4)  # ~2.5e-7 per class
    assert distance_loss(prob, label, "boundary").item() == 0.0


@pytest.mark.parametrize("d", [1, 2, 4])
@pytest.mark.parametrize("mode", ["lossd", "boundary"])
def test_single_over_segmented_pixel_costs_phi_d_over_n(mode, d):
    label = square_label()
    N = label.numel()
    pred = label.clone()
    pred[0, 5, 7 + d] = 1  # L1 distance d to the square's right edge (column 7)
    loss = distance_loss(binary_prob(pred), label, mode).item()
    expected = phi(d) / N + (EPS * (N - 1) / N if mode == "lossd" else 0.0)
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mode", ["lossd", "boundary"])
def test_under_segmentation_is_symmetric(mode):
    label = square_label()
    N = label.numel()
    for (r, c), d in (((3, 4), 1), ((4, 4), 2), ((5, 5), 3)):  # inside distances of square pixels
        pred = label.clone()
        pred[0, r, c] = 0
        loss = distance_loss(binary_prob(pred), label, mode).item()
        assert loss == pytest.approx(phi(d) / N + (EPS * (N - 1) / N if mode == "lossd" else 0.0), rel=1e-5)


def test_multiclass_wrong_pixel_charges_both_classes():
    label = torch.zeros(1, 10, 10, dtype=torch.long)
    label[0, :, 5:] = 1
    label[0, 7:, :3] = 2
    pred = label.clone()
    pred[0, 2, 3] = 1  # class-0 pixel predicted 1: over-seg of 1 at d_out = 2, under-seg of 0 at d_in = 2
    N, n_cls = label.numel(), 3
    loss = distance_loss(onehot_prob(pred, 3), label, "boundary").item()
    assert loss == pytest.approx(2 * phi(2) / N / n_cls, rel=1e-5)
    w = torch.tensor([1.0, 3.0, 1.0])
    loss_w = distance_loss(onehot_prob(pred, 3), label, "boundary", class_weight=w).item()
    assert loss_w == pytest.approx((phi(2) + 3 * phi(2)) / N / n_cls, rel=1e-5)


def test_lossd_gradient_zero_on_correct_pixels_and_d_over_1_plus_d_on_wrong_ones():
    label = square_label()
    N = label.numel()
    pred = label.clone()
    pred[0, 5, 7 + 3] = 1  # over-segmented at d = 3
    pred[0, 4, 4] = 0  # under-segmented at d = 2
    prob = binary_prob(pred)
    distance_loss(prob, label, "lossd").backward()
    g = prob.grad[0, 0] * N * math.log1p(K_CAP)  # undo the 1/N mean and the log normaliser
    wrong = torch.zeros_like(g, dtype=torch.bool)
    wrong[5, 10] = wrong[4, 4] = True
    assert (g[~wrong] == 0).all()
    assert g[5, 10].item() == pytest.approx(3 / (1 + 3), rel=1e-5)  # + d/(1+d): lowering p helps
    assert g[4, 4].item() == pytest.approx(-2 / (1 + 2), rel=1e-5)  # - d/(1+d): raising p helps


def test_boundary_gradient_is_plus_minus_phi():
    label = square_label()
    N = label.numel()
    prob = torch.full((1, 1, *label.shape[1:]), 0.3, requires_grad=True)  # soft, the target is never met
    distance_loss(prob, label, "boundary", alpha=1.0, beta=2.0).backward()
    d_out = torch.tensor([[abs(r - min(max(r, 3), 8)) + abs(c - min(max(c, 2), 7)) for c in range(14)]
                          for r in range(12)], dtype=torch.float32)  # L1 distance to the square
    expect = torch.where(label[0] == 1, -2.0 * torch.log1p(torch.tensor(
        [[min(r - 2, 9 - r, c - 1, 8 - c) for c in range(14)] for r in range(12)], dtype=torch.float32).clamp(min=0)),
        torch.log1p(d_out)) / math.log1p(K_CAP) / N
    torch.testing.assert_close(prob.grad[0, 0], expect, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("mode", ["lossd", "boundary"])
def test_ignore_pixels_contribute_nothing(mode):
    label = square_label()
    label[0, :2, :] = 255
    pred = label.clamp(max=1).clone()
    pred[0, 5, 9] = 1  # a real error
    base = distance_loss(binary_prob(pred), label, mode).item()
    pred2 = pred.clone()
    pred2[0, :2, :] = 1 - pred2[0, :2, :]  # anything on ignore pixels
    prob = binary_prob(pred2)
    loss = distance_loss(prob, label, mode)
    loss.backward()
    assert loss.item() == pytest.approx(base, rel=1e-6)
    assert (prob.grad[0, 0, :2] == 0).all()
    N_valid = int((label != 255).sum())
    assert base == pytest.approx(phi(2) / N_valid + (EPS * (N_valid - 1) / N_valid if mode == "lossd" else 0),
                                 rel=1e-5)
    all_ignore = torch.full_like(label, 255)
    assert distance_loss(binary_prob(pred), all_ignore, mode).item() == 0.0


def test_euclidean_metric():
    label = square_label()
    pred = label.clone()
    pred[0, 10, 9] = 1  # (10, 9) to the corner (8, 7): Euclidean sqrt(8), L1 4
    N = label.numel()
    loss = distance_loss(binary_prob(pred), label, "boundary", metric="euclidean").item()
    assert loss == pytest.approx(math.log1p(math.sqrt(8)) / math.log1p(K_CAP) / N, rel=1e-5)


def test_module_logits_lambda_and_warmup():
    label = square_label()
    logits = torch.randn(1, 1, 12, 14, requires_grad=True)
    loss = DistanceLoss("lossd", 2, loss_weight=0.5, warmup=0.1)
    full = loss(logits, label)["loss_dist"]
    assert full.item() > 0
    loss.set_progress(0, 100)
    zero = loss(logits, label)["loss_dist"]
    assert zero.item() == 0.0 and zero.requires_grad
    loss.set_progress(5, 100)
    assert loss(logits, label)["loss_dist"].item() == pytest.approx(full.item() / 2, rel=1e-6)
    loss.set_progress(50, 100)
    assert loss(logits, label)["loss_dist"].item() == pytest.approx(full.item(), rel=1e-6)
    multi = DistanceLoss("boundary", 3)
    out = multi(torch.randn(1, 3, 6, 7), torch.randint(0, 3, (1, 12, 14)))["loss_dist"]  # logits upsampled
    assert torch.isfinite(out)
    with pytest.raises(ValueError, match="channels"):
        multi(torch.randn(1, 4, 12, 14), label)
    with pytest.raises(ValueError, match="class weights"):
        DistanceLoss("lossd", 3, class_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="mode"):
        DistanceLoss("hausdorff", 3)


def test_config_plugs_the_loss_into_any_dense_model():
    cfg = configs.get_config("unetpp_loveda_lossd_debug")
    model = build_model(cfg)
    assert isinstance(model.criterion, SegLoss) and isinstance(model.criterion.distance, DistanceLoss)
    losses = model(torch.randn(2, 3, 64, 64), torch.randint(0, 7, (2, 64, 64)))
    assert set(losses) == {"loss_ce", "loss_dist"} and all(torch.isfinite(v) for v in losses.values())
    cfg.loss.dist_warmup = 0.5
    model = build_model(cfg)
    model.set_progress(0, 10)  # train.py's hook reaches the distance loss through DenseSegmentor
    assert model.criterion.distance.scale == 0.0
    glacier = build_model(configs.get_config("unetpp_glacier_lossd"))  # binary sigmoid model
    assert glacier.criterion.distance.num_classes == 2
    ice = configs.get_config("icesegnet_yrcc2_debug")
    ice.loss.dist_mode = "lossd"
    ice = build_model(ice)  # EncoderDecoder computes its own losses: the distance loss is its extra_loss
    assert isinstance(ice.extra_loss, DistanceLoss)
    assert "loss_dist" in ice(torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64)))
    assert "loss_dist" not in build_model(configs.get_config("unetpp_loveda_debug"))(
        torch.randn(2, 3, 32, 32), torch.randint(0, 7, (2, 32, 32)))


def _train_losses(work_dir):
    rows = [json.loads(x) for x in (work_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "train"], [r for r in rows if r["event"] == "val"]


def test_loveda_tiles_train_with_and_without_lossd(shared_data, tmp_path):
    """Real LoveDA tiles through the LoveDA dataset: the loss falls with and without Lossd."""
    for name in ("unetpp_loveda_debug", "unetpp_loveda_lossd_debug"):
        wd = tmp_path / name
        run_script(["train.py", "--config", name, f"--data.root={shared_data / 'loveda_samples'}",
                    f"--train.work_dir={wd}"], cwd=tmp_path)
        train, val = _train_losses(wd)
        losses = [r["loss"] for r in train]
        assert len(losses) == 12 and np.isfinite(losses).all()
        assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
        if "lossd" in name:
            dist = [r["loss_dist"] for r in train]
            assert np.isfinite(dist).all() and min(dist) > 0 and np.mean(dist[-3:]) < np.mean(dist[:3]), dist
        else:
            assert "loss_dist" not in train[0]
        assert 0 <= val[-1]["mBFscore"] <= 100 and 0 <= val[-1]["mBIoU"] <= 100  # boundary metrics reported
