"""Segmentation losses: mmseg-style cross-entropy and the glacier seed's BCE + Dice.

All losses take raw logits. When logits are smaller than the label they are bilinearly upsampled
to the label size first (``align_corners=False``), as mmseg's decode heads do.
"""

import math

import torch
import torch.nn.functional as F

from iceseg.distance import class_distance_maps
from iceseg.metrics import label_edges


def match_size(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``(B, K, h, w)`` logits bilinearly upsampled (align_corners False) to the ``(B, H, W)`` label's size."""
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255,
                  class_weight: torch.Tensor | None = None, avg_non_ignore: bool = False) -> torch.Tensor:
    """Softmax cross-entropy with mmseg's averaging (``mmseg/models/losses/cross_entropy_loss.py``).

    loss = sum_p w[y_p] * (-log softmax(z_p)[y_p]) / D, where ignored pixels contribute 0 and D is
    the number of all pixels (``avg_non_ignore=False``, mmseg's default) or of non-ignored pixels.

    Args:
        logits: ``(B, K, h, w)`` float logits.
        label: ``(B, H, W)`` int64 class indices in ``[0, K)`` or ``ignore_index``.
        ignore_index: label value that contributes no loss.
        class_weight: ``(K,)`` per-class weights or None.
        avg_non_ignore: divide by the non-ignored pixel count instead of all pixels.

    Returns:
        Scalar loss.
    """
    logits = match_size(logits, label)
    loss = F.cross_entropy(logits.float(), label, weight=class_weight, ignore_index=ignore_index,
                           reduction="none")  # (B, H, W)
    denom = (label != ignore_index).sum().clamp_min(1) if avg_non_ignore else label.numel()
    return loss.sum() / denom


def bce_dice_loss(logits: torch.Tensor, label: torch.Tensor, bce_weight: float = 0.7,
                  smooth: float = 1e-6, ignore_index: int = 255) -> torch.Tensor:
    """The glacier seed's ``CombinedLoss``: ``a * BCE + (1 - a) * (1 - Dice)`` (spec §A3).

    BCE-with-logits is averaged over all valid pixels; Dice = (2 sum(p*y) + s) / (sum p + sum y + s)
    with p = sigmoid(z), summed over the whole batch at once (one Dice per batch, as the seed).
    Pixels labelled ``ignore_index`` are excluded from both terms.

    Args:
        logits: ``(B, 1, h, w)`` logits of the positive class.
        label: ``(B, H, W)`` int64 in {0, 1} or ``ignore_index``.
        bce_weight: a, weight of the BCE term (seed 0.7).
        smooth: s, added to numerator and denominator of Dice (seed 1e-6).

    Returns:
        Scalar loss.

    Raises:
        ValueError: logits do not have exactly one channel.
    """
    if logits.shape[1] != 1:
        raise ValueError(f"bce_dice_loss expects (B, 1, H, W) logits, got {tuple(logits.shape)}")
    z = match_size(logits, label)[:, 0].float()  # (B, H, W)
    valid = (label != ignore_index)
    y = (label == 1).float()
    bce = F.binary_cross_entropy_with_logits(z[valid], y[valid]) if valid.any() else z.sum() * 0
    p = torch.sigmoid(z) * valid
    dice = (2 * (p * y).sum() + smooth) / (p.sum() + (y * valid).sum() + smooth)
    return bce_weight * bce + (1 - bce_weight) * (1 - dice)


class SegLoss(torch.nn.Module):
    """Config-driven loss wrapper: ``forward(logits, label) -> {"loss_<name>": scalar}``.

    Args:
        name: "ce" or "bce_dice".
        ignore_index, class_weight, avg_non_ignore: see :func:`cross_entropy`.
        bce_weight: see :func:`bce_dice_loss`.
        distance: optional :class:`DistanceLoss` added as ``"loss_dist"`` (e.g. Lossd, see
            :func:`build_loss`).

    Raises:
        ValueError: unknown loss name.
    """

    def __init__(self, name: str = "ce", ignore_index: int = 255, class_weight=None,
                 avg_non_ignore: bool = False, bce_weight: float = 0.7, distance: torch.nn.Module | None = None):
        super().__init__()
        self.distance = distance
        if name not in ("ce", "bce_dice"):
            raise ValueError(f"unknown loss {name!r}; valid: 'ce', 'bce_dice'")
        self.name, self.ignore_index, self.avg_non_ignore, self.bce_weight = name, ignore_index, avg_non_ignore, bce_weight
        self.register_buffer("class_weight", torch.tensor(class_weight, dtype=torch.float32) if class_weight else None,
                             persistent=False)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> dict:
        if self.name == "ce":
            out = {"loss_ce": cross_entropy(logits, label, self.ignore_index, self.class_weight, self.avg_non_ignore)}
        else:
            out = {"loss_bce_dice": bce_dice_loss(logits, label, self.bce_weight, ignore_index=self.ignore_index)}
        if self.distance is not None:
            out.update(self.distance(logits, label))
        return out

    def set_progress(self, it: int, max_iters: int) -> None:
        """Forward train.py's progress hook to the distance loss (its lambda warm-up)."""
        if self.distance is not None:
            self.distance.set_progress(it, max_iters)


def stage_cross_entropy(logits, label: torch.Tensor, weight: float = 1.0, prefix: str = "decode.loss_ce",
                        ignore_index: int = 255, class_weight: torch.Tensor | None = None,
                        avg_non_ignore: bool = False) -> dict:
    """Weighted :func:`cross_entropy` on every output of a multi-stage head (mmseg K-Net ``loss_by_feat``).

    loss_i = weight * CE(upsample(s_i), y) for each stage i, with mmseg averaging (see :func:`cross_entropy`);
    IceSegNet uses weight 0.9 on s0..s3 (spec icesegnet.md §2).

    Args:
        logits: ``(B, K, h, w)`` logits, or a list of them (one per stage).
        label: ``(B, H, W)`` int64 class indices or ``ignore_index``.
        weight: loss weight applied to every stage.
        prefix: key prefix; a list gives keys ``f"{prefix}.s{i}"``, a single tensor the key ``prefix``.

    Returns:
        ``{key: scalar}``.
    """
    if isinstance(logits, torch.Tensor):
        return {prefix: weight * cross_entropy(logits, label, ignore_index, class_weight, avg_non_ignore)}
    return {f"{prefix}.s{i}": weight * cross_entropy(x, label, ignore_index, class_weight, avg_non_ignore)
            for i, x in enumerate(logits)}


def edge_target(label: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary edge ground truth from a label map (IceSegNet ``paper`` edge mode, spec icesegnet.md §8.1).

    A pixel is an edge when its label differs from one of its 4-neighbours inside the image. Pixels
    labelled ``ignore_index`` and their 4-neighbours are invalid (excluded from the loss).

    Args:
        label: ``(B, H, W)`` int64 class indices or ``ignore_index``.

    Returns:
        (``(B, H, W)`` float32 edge map in {0, 1}, ``(B, H, W)`` bool validity mask).
    """
    ign = label == ignore_index
    invalid = ign | label_edges(ign)  # ignored pixels and their 4-neighbours
    return label_edges(label).float(), ~invalid


def edge_bce_loss(edge_logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """BCE-with-logits between edge logits and :func:`edge_target`, averaged over valid pixels.

    loss = mean over valid p of [softplus(z_p) - e_p * z_p] (no positive-class weight; spec §8.1).
    The logits are bilinearly upsampled to the label size first.

    Args:
        edge_logits: ``(B, 1, h, w)`` edge logits.
        label: ``(B, H, W)`` int64 class indices or ``ignore_index``.

    Returns:
        Scalar loss (0 when no pixel is valid).

    Raises:
        ValueError: ``edge_logits`` does not have one channel.
    """
    if edge_logits.dim() != 4 or edge_logits.shape[1] != 1:
        raise ValueError(f"edge_bce_loss expects (B, 1, h, w) logits, got {tuple(edge_logits.shape)}")
    z = match_size(edge_logits, label)[:, 0].float()  # (B, H, W)
    target, valid = edge_target(label, ignore_index)
    if not valid.any():
        return z.sum() * 0
    return F.binary_cross_entropy_with_logits(z[valid], target[valid])


# --------------------------------------------------------------------------- distance loss (Lossd)
# Spec unetpp_glacier_and_lossd.md B2 (the released Lossd, reconstructed) and B4 (boundary form).

def distance_loss(prob: torch.Tensor, label: torch.Tensor, mode: str = "lossd", max_dist: int = 50,
                  metric: str = "manhattan", alpha: float = 1.0, beta: float = 1.0,
                  class_weight: torch.Tensor | None = None, ignore_index: int = 255) -> torch.Tensor:
    """Distance-weighted over-/under-segmentation loss on class probabilities.

    Per class c with GT mask g = [y = c], valid mask v = [y != ignore], capped distance maps
    d_in (g pixels to the nearest non-c pixel) and d_out (non-g pixels to the nearest c pixel) from
    :func:`iceseg.distance.class_distance_maps`, and phi(d) = log(1 + d) / log(1 + K):

    - ``"lossd"`` (B2, the release): straight-through hard prediction m = (hard - p).detach() + p
      (exactly 0/1 forward, d/dp backward), s = d_in - d_out, and per pixel
      ``log1p(|m s - d_in| + 1e-6) / log1p(K)``, i.e. phi(d_out) on over-segmented, phi(d_in) on
      under-segmented and ~2.5e-7 on correct pixels. Correct pixels get zero gradient, wrong ones
      d / ((1 + d) ln(1 + K)).
    - ``"boundary"`` (B4 default): soft m = p, ``alpha (1 - g) p phi(d_out) + beta g (1 - p) phi(d_in)``
      (Kervadec's boundary loss with a capped, log-compressed signed map, shifted to be >= 0 and 0 at
      a perfect prediction); gradient +alpha phi(d_out) off the class, -beta phi(d_in) on it.

    In ``"lossd"`` mode alpha / beta weight the off-class / on-class pixels the same way (1, 1 = release).
    loss_c = sum(v * value) / sum(v); the result is sum_c w_c loss_c / |C| over the classes C present
    in the valid target or the valid hard prediction (Lossd's "prediction U target"). Deviation from
    the release: ignore pixels are masked (it averages over all B*H*W pixels; equal without ignore).
    Ignore pixels still count as "not c" when the distances are measured.

    Args:
        prob: ``(B, K, H, W)`` softmax probabilities, or ``(B, 1, H, W)`` sigmoid foreground
            probability of a binary task (classes {0, 1}; only class 1 is scored, hard = p > 0.5).
        label: ``(B, H, W)`` int64 class indices or ``ignore_index``.
        mode: ``"lossd"`` or ``"boundary"``.
        max_dist: K, distance cap in pixels (Lossd ``max_iter`` = 50).
        metric: ``"manhattan"`` (Lossd) or ``"euclidean"``.
        alpha, beta: weights of over- and under-segmentation.
        class_weight: ``(K,)`` per-class weights w_c (K = 2 for a binary task), None = 1.
        ignore_index: label value excluded from the loss.

    Returns:
        Scalar float32 loss, >= 0 (0 with a graph when no pixel is valid or no class is present).

    Raises:
        ValueError: unknown mode, or ``prob`` and ``label`` sizes differ.
    """
    if mode not in ("lossd", "boundary"):
        raise ValueError(f"distance_loss: mode must be 'lossd' or 'boundary', not {mode!r}")
    if prob.dim() != 4 or prob.shape[0] != label.shape[0] or prob.shape[-2:] != label.shape[-2:]:
        raise ValueError(f"distance_loss: prob {tuple(prob.shape)} must be (B, K, H, W) matching label "
                         f"{tuple(label.shape)}")
    binary = prob.shape[1] == 1
    K = 2 if binary else prob.shape[1]
    valid = label != ignore_index  # (B, H, W)
    n_valid = valid.sum()
    with torch.no_grad():
        hard = (prob[:, 0] > 0.5).long() if binary else prob.argmax(1)  # (B, H, W) predicted class
        seen = torch.bincount(label[valid].clamp(0, K), minlength=K + 1)[:K] > 0
        seen |= torch.bincount(hard[valid], minlength=K)[:K] > 0
        classes = [1] if binary and bool(seen[1]) else [] if binary else seen.nonzero().flatten().tolist()  # (n,)
        if n_valid == 0 or not classes:
            return prob.sum() * 0
        d_in, d_out = class_distance_maps(label, K, max_dist, metric)  # (B, K, H, W) pixels
    v = valid.float()
    log_k = math.log1p(max_dist)
    total = prob.new_zeros(())
    for c in classes:
        p = prob[:, 0] if binary else prob[:, c]  # (B, H, W)
        g = (label == c).float()
        if mode == "lossd":
            m = ((hard == c).float() - p).detach() + p  # straight-through: exact 0/1 forward
            value = torch.log1p((m * (d_in[:, c] - d_out[:, c]) - d_in[:, c]).abs() + 1e-6) / log_k
            value = value * (alpha * (1 - g) + beta * g)
        else:
            value = (alpha * (1 - g) * p * torch.log1p(d_out[:, c]) + beta * g * (1 - p) * torch.log1p(d_in[:, c])) / log_k
        w = 1.0 if class_weight is None else class_weight[c]
        total = total + w * (value * v).sum() / n_valid
    return total / len(classes)


class DistanceLoss(torch.nn.Module):
    """:func:`distance_loss` on logits, weighted by lambda with an optional linear warm-up.

    Plugs into any model's logits: ``(B, 1, h, w)`` -> sigmoid (binary), ``(B, K, h, w)`` -> softmax;
    logits smaller than the label are upsampled bilinearly. Returns ``{"loss_dist": lambda_t * L}``
    with lambda_t = ``loss_weight * min(1, it / (warmup * max_iters))`` once :meth:`set_progress`
    has been called (train.py calls it every iteration through the model), ``loss_weight`` before.
    The paper's lambda is unknown (spec B4): ramp it in.

    Args:
        mode, max_dist, metric, alpha, beta, ignore_index: see :func:`distance_loss`.
        num_classes: data classes K (2 for a binary sigmoid model).
        class_weight: K per-class weights, or None.
        loss_weight: lambda.
        warmup: fraction of training over which lambda ramps linearly from 0 (0 = none).

    Raises:
        ValueError: bad mode/metric/cap/warm-up, class weights of the wrong length, or logits whose
            channel count fits neither sigmoid nor ``num_classes``.
    """

    def __init__(self, mode: str = "lossd", num_classes: int = 2, max_dist: int = 50, metric: str = "manhattan",
                 alpha: float = 1.0, beta: float = 1.0, class_weight=None, ignore_index: int = 255,
                 loss_weight: float = 1.0, warmup: float = 0.0):
        super().__init__()
        if mode not in ("lossd", "boundary") or metric not in ("manhattan", "euclidean"):
            raise ValueError(f"DistanceLoss: mode must be lossd/boundary and metric manhattan/euclidean, got "
                             f"{mode!r}, {metric!r}")
        if not max_dist >= 1 or not 0 <= warmup < 1:
            raise ValueError(f"DistanceLoss: need max_dist >= 1 px and 0 <= warmup < 1, got {max_dist}, {warmup}")
        if class_weight and len(class_weight) != num_classes:
            raise ValueError(f"DistanceLoss: {len(class_weight)} class weights for {num_classes} classes")
        self.mode, self.num_classes, self.max_dist, self.metric = mode, num_classes, max_dist, metric
        self.alpha, self.beta, self.ignore_index = alpha, beta, ignore_index
        self.loss_weight, self.warmup, self.scale = loss_weight, warmup, 1.0
        self.register_buffer("class_weight", torch.tensor(class_weight, dtype=torch.float32) if class_weight else None,
                             persistent=False)

    def set_progress(self, it: int, max_iters: int) -> None:
        """Set the warm-up factor for iteration ``it`` (0-based) of ``max_iters``."""
        ramp = self.warmup * max_iters
        self.scale = min(1.0, it / ramp) if ramp > 0 else 1.0

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> dict:
        """``(B, 1 or K, h, w)`` logits, ``(B, H, W)`` int64 label -> ``{"loss_dist": scalar}``."""
        weight = self.loss_weight * self.scale
        if weight == 0:  # warm-up start: skip the distance maps, keep a graph
            return {"loss_dist": logits.sum() * 0}
        z = match_size(logits, label).float()
        if z.shape[1] == 1 and self.num_classes == 2:
            prob = torch.sigmoid(z)
        elif z.shape[1] == self.num_classes:
            prob = z.softmax(1)
        else:
            raise ValueError(f"DistanceLoss: logits have {z.shape[1]} channels, expected 1 (binary) or "
                             f"{self.num_classes}")
        return {"loss_dist": weight * distance_loss(prob, label, self.mode, self.max_dist, self.metric, self.alpha,
                                                    self.beta, self.class_weight, self.ignore_index)}


def build_distance_loss(cfg) -> DistanceLoss | None:
    """The :class:`DistanceLoss` of ``cfg.loss.dist_*`` (``cfg.data.num_classes`` classes), or None when
    ``cfg.loss.dist_mode`` is empty. Usable as ``EncoderDecoder(extra_loss=...)``."""
    L = cfg.loss
    if not getattr(L, "dist_mode", ""):
        return None
    return DistanceLoss(L.dist_mode, cfg.data.num_classes, L.dist_max, L.dist_metric, L.dist_alpha, L.dist_beta,
                        L.dist_class_weight or None, cfg.data.ignore_index, L.dist_weight, L.dist_warmup)


def build_loss(cfg) -> SegLoss:
    """:class:`SegLoss` of ``cfg.loss`` plus the configured distance loss (``cfg.loss.dist_mode``)."""
    L = cfg.loss
    return SegLoss(L.name, cfg.data.ignore_index, L.class_weight, L.avg_non_ignore, L.bce_weight,
                   distance=build_distance_loss(cfg))
