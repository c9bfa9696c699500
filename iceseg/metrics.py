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

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

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


# --------------------------------------------------------------------------- AutoICE chart scores
# Official AutoICE scoring (starter kit functions.py, spec autoice.md §4), pooled over all valid
# pixels of all scenes: R² for SIC (sklearn r2_score), weighted F1 for SOD and FLOE (sklearn
# f1_score(average="weighted")), combined = (2 R²_SIC + 2 F1_SOD + F1_FLOE) / 5, all in percent.


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op without an initialised group of size > 1); returns ``t``.

    The tensor is moved to the backend's device (CUDA for NCCL, CPU for gloo) for the collective.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return t
    backend = str(dist.get_backend()).lower()
    comm = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else (
        torch.device("cpu") if backend == "gloo" else t.device)
    buf = t.to(comm)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    t.copy_(buf)
    return t


def r2_from_sums(n: float, sum_y: float, sum_y2: float, sse: float) -> float:
    """R² = 1 - SSE / SST with SST = sum y² - (sum y)² / n (sklearn ``r2_score`` on pooled pixels).

    As sklearn's ``force_finite=True``: a constant target (SST = 0) gives 1.0 for a perfect
    prediction and 0.0 otherwise; no pixels give NaN.

    Returns:
        R² as a fraction (1 = perfect; can be negative).
    """
    if n == 0:
        return float("nan")
    sst = sum_y2 - sum_y * sum_y / n
    if sst <= 0:
        return 1.0 if sse == 0 else 0.0
    return 1.0 - sse / sst


class RegressionStats:
    """Running sums ``[n, sum y, sum y², sum (y - ŷ)²]`` (float64) for a pooled, all-reducible R².

    Integer targets (SIC classes) keep the sums exact in float64 up to 2^53.

    Args:
        ignore_index: target value dropped (255).
        round_clip: ``(lo, hi)`` to round predictions to integers and clip them first (the
            leaderboard scored uint8 charts), or None for raw values (the seed).
        device: where the sums live.
    """

    def __init__(self, ignore_index: int = 255, round_clip: tuple | None = None, device="cpu"):
        self.ignore_index, self.round_clip = ignore_index, round_clip
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add pixels: ``pred`` float, ``target`` integer/float (``ignore_index`` dropped), same shape.

        Raises:
            ValueError: shapes differ.
        """
        if pred.shape != target.shape:
            raise ValueError(f"RegressionStats: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        keep = target != self.ignore_index
        y = target[keep].to(self.sums.device, torch.float64)  # (N_valid,)
        p = pred[keep].to(self.sums.device, torch.float64)  # (N_valid,)
        if self.round_clip is not None:
            p = p.round().clamp(*self.round_clip)
        self.sums += torch.stack([torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device),
                                  y.sum(), (y * y).sum(), ((y - p) ** 2).sum()])

    def all_reduce(self) -> None:
        """Sum over ranks (collective; call once per evaluation on every rank)."""
        all_reduce_sum(self.sums)

    def r2(self) -> float:
        """Pooled R² (fraction) of everything added so far; see :func:`r2_from_sums`."""
        return r2_from_sums(*self.sums.tolist())


def weighted_f1(mat: torch.Tensor) -> float:
    """Support-weighted F1 of a ``(K, K)`` confusion matrix (rows target, columns prediction).

    F1_w = sum_c (n_c / N) F1_c with n_c = row sum (target pixels of class c), N = sum n_c and
    F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c) (= 2PR / (P + R); 0 when TP_c = 0), i.e. sklearn
    ``f1_score(average="weighted", zero_division=0)``. Predicted classes without targets weigh 0.

    Returns:
        F1 as a fraction in [0, 1]; NaN for an empty matrix.
    """
    mat = mat.double()
    tp = mat.diag()
    support = mat.sum(1)
    denom = 2 * tp + (mat.sum(0) - tp) + (support - tp)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    n = support.sum()
    return float((support / n * f1).sum()) if n > 0 else float("nan")


# --------------------------------------------------------------------------- boundary metrics
# BFscore (Csurka, Larlus & Perronnin, BMVC 2013; MATLAB ``bfscore``) and Boundary IoU (Cheng et al.,
# CVPR 2021, ``bowenc0221/boundary-iou-api``), spec unetpp_glacier_and_lossd.md B6 and icesegnet.md §5.
# Boundaries and bands are taken on the label and prediction maps as they are (the ignore value is a
# label value like any other), then boundary / band pixels on ignored target pixels are not scored, so
# an ignore region never creates matching boundaries on both sides.


def exclude_from_means(metrics: dict, exclude) -> dict:
    """Recompute the NaN-skipping class means ``m<Key>`` of every per-class list without ``exclude``.

    ISPRS Potsdam/Vaihingen report mF1/mIoU without clutter (spec B7); per-class values and aAcc, MCC
    are unchanged (clutter pixels still count as errors of the other classes).

    Args:
        metrics: dict with per-class lists (``"IoU"``, ``"Fscore"``, ... ``"BIoU"``) and their ``"m"`` means.
        exclude: class indices to leave out.

    Returns:
        New dict.
    """
    out = dict(metrics)
    drop = {int(c) for c in exclude}
    for key, values in metrics.items():
        if isinstance(values, list) and "m" + key in metrics:
            kept = torch.tensor([v for c, v in enumerate(values) if c not in drop], dtype=torch.float64)
            out["m" + key] = _nanmean(kept)
    return out


def boundary_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Boundary IoU's inner band: ``mask`` pixels within chessboard distance ``width`` of a non-mask pixel.

    As the reference (1-pixel zero padding, ``width`` erosions with a 3x3 square), pixels outside the
    image count as non-mask, so a mask pixel in row r is in the band when r + 1 <= width.

    Args:
        mask: ``(N, H, W)`` bool.
        width: band width d >= 1 in pixels.

    Returns:
        ``(N, H, W)`` bool, ``mask & ~eroded(mask)``.
    """
    from iceseg.distance import within_chessboard

    outside = F.pad(~mask, (1, 1, 1, 1), value=True)  # (N, H+2, W+2) the zero ring of the reference
    return mask & within_chessboard(outside, width)[:, 1:-1, 1:-1]


def label_edges(lab):
    """Pixels with a 4-neighbour of another value; the image border is no edge (crops and tiles).

    Args:
        lab: ``(..., H, W)`` numpy array or torch tensor of labels (any dtype with ``!=``).

    Returns:
        ``(..., H, W)`` bool, of the input's kind (numpy or torch, same device).
    """
    out = np.zeros(lab.shape, dtype=bool) if isinstance(lab, np.ndarray) else torch.zeros_like(lab, dtype=torch.bool)
    dv, dh = lab[..., 1:, :] != lab[..., :-1, :], lab[..., :, 1:] != lab[..., :, :-1]  # (..., H-1, W), (..., H, W-1)
    out[..., 1:, :] |= dv
    out[..., :-1, :] |= dv
    out[..., :, 1:] |= dh
    out[..., :, :-1] |= dh
    return out


class BoundaryMetrics:
    """Running, all-reducible BFscore and Boundary IoU per class (percent).

    Per image of size H x W (diagonal D = sqrt(H^2 + W^2)) and class c, on the maps as they are:
    G = [target = c], P = [pred = c], V = [target != ignore] (an ignored pixel is never in G, and is
    in P wherever the prediction there is c). The classes of an image are those present in its
    target or its prediction on V.

    - BF: boundary pixels on the raw maps, edges = pixels with a 4-neighbour of another value
      (:func:`label_edges`; the image border is no edge): B_G = G & edges(target) (valid pixels by
      definition, the target's edge against ignored pixels included) and B_P* = P & edges(pred), of
      which B_P = B_P* & V is scored. Precision = share of B_P within Euclidean distance theta =
      ``bf_tolerance`` * D of B_G; recall = share of B_G within theta of B_P* (a boundary the
      prediction draws through an ignored region may be the partner of the label's edge beside it:
      ISPRS's eroded boundaries). Neither set is ever made by the ignore value on the prediction
      side, so an ignore band cannot create matching boundaries on both sides. A ratio over an empty
      set is 1, so F1 = 2PR / (P + R) is 1 when there are no boundaries on either side and 0 when
      the label has some the prediction never comes near (e.g. a one-class prediction).
      The image score is the mean F1 over the classes present in its valid target (minus
      ``exclude``); ``mBFscore`` is the mean over images (per-image averaging, MATLAB ``bfscore``),
      ``BFscore[c]`` the mean F1 over the images whose valid target contains c.
    - BIoU: bands G_d = :func:`boundary_band` (G, d) & V and P_d = :func:`boundary_band` (P, d) & V,
      d = max(1, round(``biou_dilation`` * D)): the band is taken on the raw mask first (G's band
      runs along ignore borders, P's along the prediction's own contour, also through ignored
      pixels), then its pixels on ignored pixels are dropped. |G_d & P_d| and |G_d | P_d| are summed
      over the dataset per class, ``BIoU[c]`` = their ratio (NaN when the union is empty) and
      ``mBIoU`` the NaN-skipping mean over classes not excluded.

    Args:
        num_classes: K.
        ignore_index: target value excluded (255).
        bf_tolerance: theta as a fraction of the image diagonal (0.75 %).
        biou_dilation: d as a fraction of the image diagonal (2 %).
        exclude: class indices left out of the image / class means.
        device: where the sums live.

    Raises:
        ValueError: ``num_classes < 1`` or a negative tolerance.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, bf_tolerance: float = 0.0075,
                 biou_dilation: float = 0.02, exclude=(), device="cpu"):
        if num_classes < 1 or bf_tolerance < 0 or biou_dilation < 0:
            raise ValueError(f"BoundaryMetrics: need num_classes >= 1 and tolerances >= 0, got {num_classes}, "
                             f"{bf_tolerance}, {biou_dilation}")
        self.K, self.ignore_index = int(num_classes), ignore_index
        self.bf_tolerance, self.biou_dilation, self.exclude = bf_tolerance, biou_dilation, {int(c) for c in exclude}
        # [BF sum per class | images per class | BIoU intersection | BIoU union | image-score sum | images]
        self.sums = torch.zeros(4 * self.K + 2, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add images: ``pred`` and ``target`` ``(B, H, W)`` (or ``(H, W)``) integer class maps.

        ``pred`` holds classes in ``[0, K)``, ``target`` classes or ``ignore_index`` (any other target
        value is valid but of no class).

        Raises:
            ValueError: shapes differ.
        """
        from iceseg.distance import within_distance

        if pred.shape != target.shape:
            raise ValueError(f"BoundaryMetrics: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        # numpy on the CPU: per-image work on (classes, H, W) masks, several times faster than torch
        # ops on a busy machine (the distance helpers take CPU tensors as zero-copy numpy views).
        preds, targets = pred.detach().cpu().numpy(), target.detach().cpu().numpy()
        if targets.ndim == 2:
            preds, targets = preds[None], targets[None]  # (1, H, W)
        H, W = targets.shape[-2:]
        diag = math.hypot(H, W)
        theta, d = self.bf_tolerance * diag, max(1, round(self.biou_dilation * diag))
        K, keep = self.K, np.array([c not in self.exclude for c in range(self.K)])
        stats = np.zeros((4, K))  # BF sum, images, BIoU intersection, union
        img_sum = img_n = 0.0
        for t, p in zip(targets, preds, strict=True):
            valid = t != self.ignore_index  # (H, W); t and p stay as they are, in_gt / in_pred are (K,)
            in_gt, in_pred = (np.bincount(x[valid & (x >= 0) & (x < K)], minlength=K) > 0 for x in (t, p))
            cls = np.flatnonzero(in_gt | in_pred)
            if cls.size == 0:
                continue
            n, ids = cls.size, cls[:, None, None]
            masks = np.concatenate([t[None] == ids, p[None] == ids])  # (2n, H, W) G then P per class
            edges = np.concatenate([np.broadcast_to(label_edges(x), (n, H, W)) for x in (t, p)])  # (2n, H, W)
            raw = masks & edges  # (2n, H, W) every boundary pixel; the target's lie on valid pixels already
            bnd = raw & valid  # (2n, H, W) B_G then B_P: predicted boundary pixels on ignored targets dropped
            near = within_distance(torch.from_numpy(raw), theta).numpy()  # (2n, H, W) within theta of each set
            count = lambda x: np.count_nonzero(x, axis=(1, 2)).astype(np.float64)  # noqa: E731
            n_g, n_q = count(bnd[:n]), count(bnd[n:])
            prec = np.where(n_q > 0, count(bnd[n:] & near[:n]) / np.maximum(n_q, 1), 1.0)  # empty set: 1
            rec = np.where(n_g > 0, count(bnd[:n] & near[n:]) / np.maximum(n_g, 1), 1.0)
            f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
            band = boundary_band(torch.from_numpy(masks), d).numpy() & valid  # (2n, H, W) G_d then P_d
            gt = in_gt[cls]
            stats[:, cls] += [f1 * gt, gt, count(band[:n] & band[n:]), count(band[:n] | band[n:])]
            scored = gt & keep[cls]
            if scored.any():
                img_sum, img_n = img_sum + f1[scored].mean(), img_n + 1
        self.sums += torch.from_numpy(np.concatenate([stats.ravel(), [img_sum, img_n]])).to(self.sums)

    def all_reduce(self) -> None:
        """Sum over ranks (collective: call once per evaluation on every rank)."""
        all_reduce_sum(self.sums)

    def compute(self) -> dict:
        """``{"BFscore": [K], "mBFscore", "BIoU": [K], "mBIoU"}`` in percent (NaN where undefined)."""
        K, s = self.K, self.sums.cpu()
        bf = _safe_ratio(s[:K], s[K:2 * K]) * 100
        biou = _safe_ratio(s[2 * K:3 * K], s[3 * K:4 * K]) * 100
        keep = [c for c in range(K) if c not in self.exclude]
        return {"BFscore": bf.tolist(), "mBFscore": float(s[-2] / s[-1] * 100) if s[-1] > 0 else float("nan"),
                "BIoU": biou.tolist(), "mBIoU": _nanmean(biou[keep]) if keep else float("nan")}
