"""Hand-computed checks of iceseg.metrics (mmseg IoUMetric semantics + multi-class MCC).

Convention everywhere: mat[t, p] counts pixels with target t and prediction p (rows = target).
I = diag, L = row sums, P = column sums, U = P + L - I; IoU-family values are percent.
"""

import json
import math

import numpy as np
import pytest
import torch

from iceseg.metrics import ConfusionMatrix, compute_metrics, confusion_matrix, format_table

NAN = float("nan")


def assert_list_close(actual: list, expected: list, tol: float = 1e-9) -> None:
    """Elementwise closeness, with NaN only matching NaN."""
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected, strict=True):
        if math.isnan(e):
            assert math.isnan(a), (actual, expected)
        else:
            assert a == pytest.approx(e, abs=tol), (actual, expected)


# Binary case, class 1 positive: TP=3, TN=4, FP=1 (target 0 -> pred 1), FN=2 (target 1 -> pred 0).
# Rows = target: row 0 = [TN, FP] = [4, 1], row 1 = [FN, TP] = [2, 3]; n = 10.
BINARY = torch.tensor([[4, 1], [2, 3]])


def test_binary_hand_values():
    m = compute_metrics(BINARY)
    # I = [4, 3], L = [5, 5], P = [6, 4], U = P + L - I = [7, 6].
    assert m["aAcc"] == pytest.approx(70.0)  # (4 + 3) / 10
    assert_list_close(m["IoU"], [400 / 7, 50.0])  # 4/7 = 57.142857..%, 3/6 = 50%
    assert m["mIoU"] == pytest.approx((400 / 7 + 50) / 2)  # 53.5714..
    assert_list_close(m["Acc"], [80.0, 60.0])  # I/L = 4/5, 3/5
    assert m["mAcc"] == pytest.approx(70.0)
    assert_list_close(m["Dice"], [800 / 11, 200 / 3])  # 2I/(P+L) = 8/11, 6/9
    assert m["mDice"] == pytest.approx((800 / 11 + 200 / 3) / 2)  # 69.6969..
    assert_list_close(m["Precision"], [200 / 3, 75.0])  # I/P = 4/6, 3/4
    assert_list_close(m["Recall"], [80.0, 60.0])
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 - 2) / sqrt(4*5*5*6) = 1/sqrt(6)
    assert m["MCC"] == pytest.approx(1 / math.sqrt(6), abs=1e-12)  # 0.408248..


def test_fscore_beta():
    # beta = 1: F = 2PR/(P+R) equals Dice, e.g. class 1: 2*0.75*0.6/1.35 = 2/3.
    m1 = compute_metrics(BINARY, beta=1.0)
    assert_list_close(m1["Fscore"], m1["Dice"])
    assert m1["mFscore"] == pytest.approx(m1["mDice"])
    # beta = 2: F = 5PR/(4P+R).
    # class 1: P = 3/4, R = 3/5 -> 5*0.45/(3 + 0.6) = 0.625  (= 5TP/(5TP + 4FN + FP) = 15/24)
    # class 0: P = 4/6, R = 4/5 -> 5*(8/15)/(8/3 + 4/5) = 10/13 (= 20/(20 + 4*1 + 2))
    m2 = compute_metrics(BINARY, beta=2.0)
    assert_list_close(m2["Fscore"], [1000 / 13, 62.5])
    assert m2["mFscore"] == pytest.approx((1000 / 13 + 62.5) / 2)
    # beta does not change the other metrics
    assert m2["mIoU"] == m1["mIoU"] and m2["MCC"] == m1["MCC"]


def test_class_absent_from_pred_and_target_is_skipped_in_means():
    # Class 2 never appears: every class-2 ratio is 0/0 = NaN and means skip it.
    mat = torch.tensor([[5, 1, 0], [2, 2, 0], [0, 0, 0]])
    m = compute_metrics(mat)
    # I = [5, 2, 0], L = [6, 4, 0], P = [7, 3, 0], U = [8, 5, 0]
    assert_list_close(m["IoU"], [62.5, 40.0, NAN])  # 5/8, 2/5, 0/0
    assert m["mIoU"] == pytest.approx(51.25)  # (62.5 + 40)/2, not /3
    assert_list_close(m["Acc"], [500 / 6, 50.0, NAN])
    assert m["mAcc"] == pytest.approx((500 / 6 + 50) / 2)
    assert_list_close(m["Dice"], [1000 / 13, 400 / 7, NAN])  # 10/13, 4/7
    assert_list_close(m["Precision"], [500 / 7, 200 / 3, NAN])
    assert_list_close(m["Fscore"], m["Dice"])
    assert m["aAcc"] == pytest.approx(70.0)  # 7/10
    # K=3 MCC: n=10, trace c=7, t=[6,4,0], p=[7,3,0]:
    # (c*n - p.t) / sqrt((n^2 - p.p)(n^2 - t.t)) = (70 - 54) / sqrt((100 - 58)(100 - 52)) = 16/sqrt(2016),
    # the same as the binary MCC of [[5,1],[2,2]]: (2*5 - 1*2)/sqrt(3*4*6*7) = 8/sqrt(504).
    assert m["MCC"] == pytest.approx(16 / math.sqrt(2016), abs=1e-12)  # 0.356348..
    assert m["MCC"] == pytest.approx(compute_metrics(mat[:2, :2])["MCC"], abs=1e-12)


def test_class_absent_only_from_pred():
    # Class 2 has 2 target pixels (predicted 0 and 1) and is never predicted.
    mat = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 1, 0]])
    m = compute_metrics(mat)
    # I = [3, 2, 0], L = [4, 2, 2], P = [4, 4, 0], U = [5, 4, 2]
    assert_list_close(m["IoU"], [60.0, 50.0, 0.0])  # class 2: 0/2 = 0, counted in the mean
    assert m["mIoU"] == pytest.approx(110 / 3)  # (60 + 50 + 0)/3 = 36.67
    assert_list_close(m["Acc"], [75.0, 100.0, 0.0])
    assert_list_close(m["Dice"], [75.0, 200 / 3, 0.0])  # 6/8, 4/6, 0/2
    assert m["mDice"] == pytest.approx((75 + 200 / 3) / 3)
    assert_list_close(m["Precision"], [75.0, 50.0, NAN])  # class 2: 0/0
    assert m["mPrecision"] == pytest.approx(62.5)
    # mmseg builds F from precision and recall, so a NaN precision makes F NaN (Dice stays 0):
    # class 0: 2*.75*.75/1.5 = .75; class 1: 2*.5*1/1.5 = 2/3; class 2: NaN.
    assert_list_close(m["Fscore"], [75.0, 200 / 3, NAN])
    assert m["mFscore"] == pytest.approx((75 + 200 / 3) / 2)  # 70.83 != mDice 47.22
    assert m["aAcc"] == pytest.approx(62.5)  # 5/8


def test_class_absent_only_from_target():
    # Class 1 predicted twice but never in the target: IoU 0 (counted), Acc/Recall NaN, F NaN.
    mat = torch.tensor([[2, 2], [0, 0]])
    m = compute_metrics(mat)
    # I = [2, 0], L = [4, 0], P = [2, 2], U = [4, 2]
    assert_list_close(m["IoU"], [50.0, 0.0])
    assert_list_close(m["Acc"], [50.0, NAN])
    assert_list_close(m["Precision"], [100.0, 0.0])
    assert_list_close(m["Fscore"], [200 / 3, NAN])  # 2*1*.5/1.5
    assert m["mIoU"] == pytest.approx(25.0)
    assert m["MCC"] == 0.0  # only one target class: denominator 0 -> 0 (sklearn)


def test_confusion_matrix_orientation_and_ignore():
    # one pixel with target 0 predicted 1 -> row 0, column 1
    mat = confusion_matrix(torch.tensor([1]), torch.tensor([0]), num_classes=3)
    assert mat.dtype == torch.int64 and mat.shape == (3, 3)
    assert mat[0, 1] == 1 and mat.sum() == 1
    target = torch.tensor([[0, 1, 255], [2, 2, 255]])
    pred = torch.tensor([[0, 2, 200], [2, 1, 1]])  # predictions under 255 are never checked
    mat = confusion_matrix(pred, target, num_classes=3)
    expected = torch.zeros(3, 3, dtype=torch.int64)
    expected[0, 0] = 1  # t0 p0
    expected[1, 2] = 1  # t1 p2
    expected[2, 2] = 1  # t2 p2
    expected[2, 1] = 1  # t2 p1
    assert torch.equal(mat, expected)
    # bool masks (glacier: prob > 0.5) are accepted
    mat = confusion_matrix(torch.tensor([True, False]), torch.tensor([1, 1], dtype=torch.uint8), 2)
    assert mat.tolist() == [[0, 0], [1, 1]]


def test_confusion_matrix_rejects_bad_input():
    t = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="target contains value 3"):
        confusion_matrix(t, torch.tensor([0, 3, 1]), 3)
    with pytest.raises(ValueError, match="pred contains value -1"):
        confusion_matrix(torch.tensor([0, -1, 1]), t, 3)
    with pytest.raises(ValueError, match="pred contains value 5"):
        confusion_matrix(torch.tensor([0, 5, 1]), t, 3)
    with pytest.raises(ValueError, match="target contains value 254"):
        confusion_matrix(t, torch.tensor([0, 254, 1]), 3)  # 254 is not the ignore index
    with pytest.raises(TypeError, match="integer class indices"):
        confusion_matrix(t.float(), t, 3)
    with pytest.raises(ValueError, match="square"):
        compute_metrics(torch.zeros(2, 3, dtype=torch.long))


def test_dataset_level_differs_from_mean_of_images():
    # image 1: all target 0, one pixel predicted 1 -> IoU = [3/4, 0/1] -> per-image mIoU 37.5
    t1, p1 = torch.tensor([[0, 0], [0, 0]]), torch.tensor([[0, 0], [0, 1]])
    # image 2: all target 1, all correct -> IoU = [nan, 4/4] -> per-image mIoU 100
    t2, p2 = torch.tensor([[1, 1], [1, 1]]), torch.tensor([[1, 1], [1, 1]])
    per_image = [compute_metrics(confusion_matrix(p, t, 2))["mIoU"] for p, t in ((p1, t1), (p2, t2))]
    assert per_image == pytest.approx([37.5, 100.0])  # their mean would be 68.75
    cm = ConfusionMatrix(2)
    cm.update(p1, t1)
    cm.update(p2, t2)
    # summed mat = [[3, 1], [0, 4]]: I = [3, 4], U = [4, 5] -> IoU = [75, 80] -> mIoU 77.5
    assert cm.mat.tolist() == [[3, 1], [0, 4]]
    assert cm.compute()["mIoU"] == pytest.approx(77.5)
    cm.reset()
    assert cm.mat.sum() == 0


def _sklearn_mcc_numpy(y_true: np.ndarray, y_pred: np.ndarray, K: int) -> float:
    """sklearn.metrics.matthews_corrcoef, multiclass branch, re-derived in numpy from the labels."""
    C = np.zeros((K, K), dtype=np.float64)
    np.add.at(C, (y_true, y_pred), 1)
    t_sum, p_sum = C.sum(axis=1), C.sum(axis=0)
    n_correct, n = np.trace(C), C.sum()
    cov_ytyp = n_correct * n - np.dot(t_sum, p_sum)
    cov_ypyp = n**2 - np.dot(p_sum, p_sum)
    cov_ytyt = n**2 - np.dot(t_sum, t_sum)
    return 0.0 if cov_ypyp * cov_ytyt == 0 else float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def _pearson_onehot_mcc(y_true: np.ndarray, y_pred: np.ndarray, K: int) -> float:
    """Gorodkin's definition: cov(X, Y)/sqrt(cov(X, X) cov(Y, Y)) of the (n, K) one-hot matrices."""
    X, Y = np.eye(K)[y_true], np.eye(K)[y_pred]
    X, Y = X - X.mean(0), Y - Y.mean(0)
    return float((X * Y).sum() / np.sqrt((X * X).sum() * (Y * Y).sum()))


def test_mcc_matches_numpy_multiclass_formula():
    rng = np.random.default_rng(0)
    K = 4
    for _ in range(5):
        y_true = rng.integers(0, K, size=500)
        # correlated predictions: keep the label with probability 0.6, else random
        y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, K, size=500))
        mcc = compute_metrics(confusion_matrix(torch.from_numpy(y_pred), torch.from_numpy(y_true), K))["MCC"]
        assert mcc == pytest.approx(_sklearn_mcc_numpy(y_true, y_pred, K), abs=1e-12)
        assert mcc == pytest.approx(_pearson_onehot_mcc(y_true, y_pred, K), abs=1e-12)
        assert 0.3 < mcc < 0.8  # sanity: clearly positive, not perfect


def test_perfect_inverted_and_degenerate_predictions():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (4, 16, 16), generator=g)
    m = compute_metrics(confusion_matrix(target, target, 3))
    assert m["MCC"] == pytest.approx(1.0, abs=1e-12)
    assert m["mIoU"] == pytest.approx(100.0) and m["aAcc"] == pytest.approx(100.0)
    assert m["mFscore"] == pytest.approx(100.0) and m["mDice"] == pytest.approx(100.0)
    # binary, every pixel wrong: TP = TN = 0 -> MCC = -FP*FN/sqrt(FP*FN*FP*FN) = -1
    assert compute_metrics(torch.tensor([[0, 5], [3, 0]]))["MCC"] == pytest.approx(-1.0)
    # a single predicted class -> denominator 0 -> MCC 0; an empty matrix -> MCC 0, aAcc NaN
    assert compute_metrics(torch.tensor([[5, 0], [3, 0]]))["MCC"] == 0.0
    empty = compute_metrics(torch.zeros(2, 2, dtype=torch.long))
    assert empty["MCC"] == 0.0 and math.isnan(empty["aAcc"]) and math.isnan(empty["mIoU"])


def test_mcc_exact_for_large_counts():
    # Counts near a full test split (~1e10 pixels): n^2 ~ 1e20 overflows int64 and is inexact in
    # float64, but the Python-integer sums stay exact. Scaling every count by s leaves MCC unchanged.
    s = 10**9
    assert compute_metrics(BINARY * s)["MCC"] == pytest.approx(1 / math.sqrt(6), abs=1e-12)


def test_results_are_json_serialisable():
    m = compute_metrics(BINARY)
    assert all(isinstance(m[k], float) for k in ("aAcc", "mIoU", "mFscore", "MCC"))
    assert all(isinstance(v, float) for v in m["IoU"])
    assert json.loads(json.dumps(m))["mAcc"] == pytest.approx(70.0)


def test_confusion_matrix_all_reduce_is_noop_without_process_group():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 255]))
    cm.all_reduce()
    assert cm.mat.tolist() == [[0, 0], [1, 1]]


def test_format_table():
    m = compute_metrics(torch.tensor([[5, 1, 0], [2, 2, 0], [0, 0, 0]]))
    text = format_table(m, ["background", "ice", "water"])
    lines = text.splitlines()
    assert lines[0].split("|")[0].strip() == "Class"
    assert [c.strip() for c in lines[0].split("|")[1:]] == [
        "IoU",
        "Acc",
        "Dice",
        "Fscore",
        "Precision",
        "Recall",
    ]
    ice_row = next(line for line in lines if line.startswith("ice"))
    assert "40.00" in ice_row and "50.00" in ice_row and "57.14" in ice_row  # IoU, Acc, Dice of class 1
    water_row = next(line for line in lines if line.startswith("water"))
    assert water_row.count("nan") == 6
    assert "mIoU: 51.25" in lines[-1] and "aAcc: 70.00" in lines[-1]
    assert "MCC: 0.3563" in lines[-1]  # 16/sqrt(2016) = 0.356348
    with pytest.raises(ValueError, match="class_names"):
        format_table(m, ["a", "b"])
