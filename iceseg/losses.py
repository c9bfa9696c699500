"""Segmentation losses: mmseg-style cross-entropy and the glacier seed's BCE + Dice.

All losses take raw logits. When logits are smaller than the label they are bilinearly upsampled
to the label size first (``align_corners=False``), as mmseg's decode heads do.
"""

import torch
import torch.nn.functional as F


def _match_size(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
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
    logits = _match_size(logits, label)
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
    z = _match_size(logits, label)[:, 0].float()  # (B, H, W)
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

    Raises:
        ValueError: unknown loss name.
    """

    def __init__(self, name: str = "ce", ignore_index: int = 255, class_weight=None,
                 avg_non_ignore: bool = False, bce_weight: float = 0.7):
        super().__init__()
        if name not in ("ce", "bce_dice"):
            raise ValueError(f"unknown loss {name!r}; valid: 'ce', 'bce_dice'")
        self.name, self.ignore_index, self.avg_non_ignore, self.bce_weight = name, ignore_index, avg_non_ignore, bce_weight
        self.register_buffer("class_weight", torch.tensor(class_weight, dtype=torch.float32) if class_weight else None,
                             persistent=False)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> dict:
        if self.name == "ce":
            return {"loss_ce": cross_entropy(logits, label, self.ignore_index, self.class_weight, self.avg_non_ignore)}
        return {"loss_bce_dice": bce_dice_loss(logits, label, self.bce_weight, ignore_index=self.ignore_index)}
