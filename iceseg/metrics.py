"""Segmentation metrics from a dataset-level confusion matrix (mmseg ``IoUMetric`` semantics + MCC).

Every metric here is a function of one ``(K, K)`` confusion matrix summed over the whole split (and
over all ranks), never an average of per-image scores:

    mat[t, p] = number of valid pixels with target class t and predicted class p
    I_c = mat[c, c]            (intersection)
    L_c = sum_p mat[c, p]      (label / target pixels of class c, row sums)
    P_c = sum_t mat[t, c]      (predicted pixels of class c, column sums)
    U_c = P_c + L_c - I_c      (union)

Semantics follow mmsegmentation ``mmseg/evaluation/metrics/iou_metric.py`` (``IoUMetric`` with
``iou_metrics=['mIoU', 'mDice', 'mFscore']``, ``nan_to_num=None``), see specs/icesegnet.md §5:
aAcc and the per-class IoU family are reported in percent, a 0/0 class value is NaN and class means
skip NaN. Deviations, all intentional: computed in float64 (mmseg uses float32 histograms), means are
not rounded to 2 decimals (format the numbers when printing instead), and an MCC is added.

MCC is the multi-class Matthews correlation coefficient (Gorodkin, "Comparing two K-category
assignments by a K-category correlation coefficient", Comput. Biol. Chem. 28, 2004), in the
covariance form used by ``sklearn.metrics.matthews_corrcoef``; for K = 2 it is the usual binary
(TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) with class 1 positive, which is the glacier
U-Net++ model-selection metric (specs/unetpp_glacier_and_lossd.md §A3).

Dimension legend: ``K`` classes, ``N`` any number of pixels (any shape with N elements).
"""

import math

import torch
import torch.distributed as dist

_PER_CLASS_KEYS = ("IoU", "Acc", "Dice", "Precision", "Recall", "Fscore")


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Count (target, prediction) pairs of one batch of label maps.

    Args:
        pred: predicted class indices, any shape (e.g. ``(B, H, W)``), integer or bool dtype, values in
            ``[0, num_classes)`` wherever ``target != ignore_index``.
        target: ground-truth class indices, same shape as ``pred``, integer or bool dtype, values in
            ``[0, num_classes)`` or ``ignore_index``; pixels equal to ``ignore_index`` are dropped.
        num_classes: ``K`` >= 1.
        ignore_index: target value that marks unlabelled pixels (255 in mmseg).

    Returns:
        ``(K, K)`` int64 tensor on ``pred``'s device; rows are target classes, columns predicted
        classes, so ``mat.sum(1)`` counts label pixels and ``mat.sum(0)`` predicted pixels.

    Raises:
        TypeError: if ``pred`` or ``target`` has a floating-point or complex dtype.
        ValueError: if ``num_classes < 1``, the shapes differ, or a kept target / prediction value
            is outside ``[0, num_classes)`` (the message names the offending value).
    """
    K = int(num_classes)
    if K < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    for name, x in (("pred", pred), ("target", target)):
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"confusion_matrix: {name} must hold integer class indices, got dtype {x.dtype}")
    if pred.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    target = target.to(device=pred.device, dtype=torch.long).flatten()  # (N,)
    pred = pred.to(dtype=torch.long).flatten()  # (N,)
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]  # (N_valid,), (N_valid,)
    for name, x in (("target", target), ("pred", pred)):
        bad = (x < 0) | (x >= K)
        if bool(bad.any()):
            value = int(x[bad][0])
            extra = f" or ignore_index {ignore_index}" if name == "target" else ""
            raise ValueError(
                f"confusion_matrix: {name} contains value {value}, expected a class index in [0, {K}){extra}"
            )
    # A pixel with target t and prediction p lands in flat bin t*K + p, i.e. row t, column p.
    counts = torch.bincount(target * K + pred, minlength=K * K)  # (K*K,)
    return counts.view(K, K)  # (K, K)


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """Elementwise ``num / den`` in float64 with NaN exactly where ``den == 0`` (0/0 in mmseg)."""
    return torch.where(den > 0, num / den, torch.full_like(num, float("nan")))


def _nanmean(values: torch.Tensor) -> float:
    """Mean over non-NaN entries of a 1-D tensor; NaN if every entry is NaN (``np.nanmean``)."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() > 0 else float("nan")


def matthews_corrcoef(mat: torch.Tensor) -> float:
    """Multi-class Matthews correlation coefficient of a confusion matrix.

    With ``n`` = total count, ``t_k`` = row sums (true counts), ``p_k`` = column sums (predicted counts)
    and ``c`` = trace (correct count)::

        MCC = (c*n - sum_k p_k*t_k) / sqrt((n^2 - sum_k p_k^2) * (n^2 - sum_k t_k^2))

    i.e. the Pearson correlation of the one-hot target and prediction matrices (Gorodkin 2004,
    ``sklearn.metrics.matthews_corrcoef``). For K = 2 it equals the binary formula with class 1
    positive. The sums run over Python integers, so they are exact for any pixel count; only the
    final division is float64.

    Args:
        mat: ``(K, K)`` confusion matrix, rows = target, columns = prediction, non-negative counts.

    Returns:
        MCC in ``[-1, 1]``; 0.0 when the denominator is 0 (only one class in the targets or in the
        predictions, or an empty matrix), as in sklearn.
    """
    counts = mat.detach().cpu()
    if counts.is_floating_point():
        counts = counts.to(torch.float64)
    rows = counts.tolist()  # K lists of K Python ints (exact) or floats
    K = len(rows)
    t = [sum(r) for r in rows]
    p = [sum(rows[i][j] for i in range(K)) for j in range(K)]
    n = sum(t)
    c = sum(rows[k][k] for k in range(K))
    cov_tp = c * n - sum(pk * tk for pk, tk in zip(p, t, strict=True))
    cov_pp = n * n - sum(pk * pk for pk in p)
    cov_tt = n * n - sum(tk * tk for tk in t)
    if cov_pp * cov_tt <= 0:
        return 0.0
    mcc = cov_tp / math.sqrt(cov_pp * cov_tt)
    return max(-1.0, min(1.0, float(mcc)))  # clamp float rounding, e.g. 1.0000000000000002


def compute_metrics(mat: torch.Tensor, beta: float = 1.0) -> dict:
    """All metrics of a dataset-level confusion matrix, as plain (JSON-serialisable) Python values.

    Per class c (NaN where the denominator is 0), in percent like mmseg ``IoUMetric``:
    IoU = I/U, Acc = Recall = I/L, Dice = 2I/(P+L), Precision = I/P,
    Fscore = (1+beta^2)*Precision*Recall / (beta^2*Precision + Recall).
    Fscore is built from Precision and Recall exactly as mmseg does, so it equals Dice at beta = 1
    except when a class is never predicted (Precision 0/0) or never hit (Precision = Recall = 0):
    there mmseg (and this function) gives NaN where Dice gives 0, and mFscore then skips the class.

    Args:
        mat: ``(K, K)`` non-negative counts (int64 from :func:`confusion_matrix`), rows = target,
            columns = prediction, summed over the whole split.
        beta: F-score weight of recall, >= 0 (mmseg default 1).

    Returns:
        dict with
        ``"aAcc"``: float, sum(I)/sum(L) in percent (NaN for an empty matrix);
        ``"IoU", "Acc", "Dice", "Precision", "Recall", "Fscore"``: lists of K floats in percent;
        ``"mIoU", "mAcc", "mDice", "mPrecision", "mRecall", "mFscore"``: NaN-skipping class means,
        in percent, not rounded;
        ``"MCC"``: float in [-1, 1] (a coefficient, not percent), see :func:`matthews_corrcoef`.

    Raises:
        ValueError: if ``mat`` is not a square 2-D matrix, holds negative counts, or ``beta < 0``.
    """
    if mat.dim() != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] < 1:
        raise ValueError(f"compute_metrics: mat must be a square (K, K) matrix, got shape {tuple(mat.shape)}")
    if bool((mat < 0).any()):
        raise ValueError("compute_metrics: mat holds negative counts")
    if not beta >= 0:
        raise ValueError(f"compute_metrics: beta must be >= 0, got {beta}")
    m = mat.detach().to(device="cpu", dtype=torch.float64)
    inter = torch.diagonal(m)  # (K,) I_c
    label = m.sum(dim=1)  # (K,) L_c, target pixels per class
    predicted = m.sum(dim=0)  # (K,) P_c, predicted pixels per class
    union = predicted + label - inter  # (K,) U_c

    precision = _safe_ratio(inter, predicted)  # (K,) fractions
    recall = _safe_ratio(inter, label)  # (K,)
    b2 = float(beta) ** 2
    # A NaN precision/recall makes the denominator NaN, and precision = recall = 0 is 0/0: NaN both, as mmseg.
    fscore = _safe_ratio((1 + b2) * precision * recall, b2 * precision + recall)  # (K,)
    per_class = {
        "IoU": _safe_ratio(inter, union) * 100,
        "Acc": recall * 100,
        "Dice": _safe_ratio(2 * inter, predicted + label) * 100,
        "Precision": precision * 100,
        "Recall": recall * 100,
        "Fscore": fscore * 100,
    }
    total = label.sum()
    out: dict = {"aAcc": float(inter.sum() / total * 100) if total > 0 else float("nan")}
    for key in _PER_CLASS_KEYS:
        out[key] = per_class[key].tolist()
    for key in _PER_CLASS_KEYS:
        out["m" + key] = _nanmean(per_class[key])
    out["MCC"] = matthews_corrcoef(mat)
    return out


class ConfusionMatrix:
    """Running ``(K, K)`` confusion matrix for evaluation, summed over batches and (optionally) ranks.

    Usage: ``update`` per batch on every rank, then ``all_reduce()`` once, then ``compute()`` on every
    rank (every rank gets the same numbers). Rows are target classes, columns predicted classes.

    Args:
        num_classes: ``K`` >= 1.
        ignore_index: target value dropped from the counts (255 in mmseg).
        device: where ``mat`` lives; put it on the GPU to avoid a copy per batch.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu"):
        if int(num_classes) < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)  # (K, K)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch; ``pred``/``target`` as in :func:`confusion_matrix` (integer, equal shapes).

        Raises:
            TypeError, ValueError: see :func:`confusion_matrix`.
        """
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)  # (K, K)
        self.mat += cm.to(self.mat.device)

    def reset(self) -> None:
        """Zero the counts (e.g. at the start of each evaluation)."""
        self.mat.zero_()

    def all_reduce(self) -> None:
        """Sum ``mat`` over all ranks in place; a no-op unless torch.distributed is initialised with
        world size > 1. NCCL needs a CUDA tensor and gloo is used with a CPU one, so the matrix is
        moved to the backend's device for the collective and copied back. Call it exactly once per
        evaluation, on every rank (it is a collective)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return
        backend = str(dist.get_backend()).lower()
        if backend == "nccl":
            comm_device = torch.device("cuda", torch.cuda.current_device())
        elif backend == "gloo":
            comm_device = torch.device("cpu")
        else:  # mixed ("cpu:gloo,cuda:nccl") or other backends: keep the tensor where it is
            comm_device = self.mat.device
        buf = self.mat.to(comm_device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        self.mat.copy_(buf)

    def compute(self, beta: float = 1.0) -> dict:
        """Metrics of the accumulated matrix; see :func:`compute_metrics` for keys and units."""
        return compute_metrics(self.mat, beta=beta)


def format_table(metrics: dict, class_names: list[str]) -> str:
    """Plain-text per-class table plus a summary line, for logs.

    Args:
        metrics: output of :func:`compute_metrics` (percent values, MCC coefficient).
        class_names: K names, in class-index order.

    Returns:
        Multi-line string: header ``Class | IoU | Acc | Dice | Fscore | Precision | Recall``, one row per
        class with 2 decimals ("nan" for NaN), then ``aAcc, mIoU, mAcc, mDice, mFscore`` (2 decimals) and
        ``MCC`` (4 decimals).

    Raises:
        ValueError: if the number of class names differs from the number of classes in ``metrics``.
    """
    cols = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")
    K = len(metrics["IoU"])
    if len(class_names) != K:
        raise ValueError(f"format_table: got {len(class_names)} class_names for {K} classes in metrics")
    name_w = max([len("Class")] + [len(str(n)) for n in class_names])
    col_w = [max(len(c), 7) for c in cols]
    header = " | ".join([f"{'Class':<{name_w}}"] + [f"{c:>{w}}" for c, w in zip(cols, col_w, strict=True)])
    lines = [header, "-" * len(header)]
    for k, name in enumerate(class_names):
        cells = [f"{metrics[c][k]:>{w}.2f}" for c, w in zip(cols, col_w, strict=True)]
        lines.append(" | ".join([f"{str(name):<{name_w}}"] + cells))
    summary = "  ".join(f"{key}: {metrics[key]:.2f}" for key in ("aAcc", "mIoU", "mAcc", "mDice", "mFscore"))
    lines.append(f"{summary}  MCC: {metrics['MCC']:.4f}")
    return "\n".join(lines)
