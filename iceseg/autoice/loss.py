"""AutoICE training loss: masked MSE for the SIC regression head, cross-entropy for SoD and FLOE
(spec autoice.md §2.4, the seed's ``loss_functions.py``), weighted per task."""

import torch

from iceseg.losses import cross_entropy, match_size


def masked_mse(pred: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
               reduction: str = "mean") -> torch.Tensor:
    """Mean squared error over valid target pixels (the AutoICE seed's SIC regression loss).

    loss = sum_{p: y_p != ignore} (z_p - y_p)^2 / #{p: y_p != ignore}, on the target's scale (SIC
    classes 0..10 in the seed; spec autoice.md §2.4). The seed also drops non-finite predictions;
    here they propagate, so a diverging model shows up as a non-finite loss.

    Args:
        pred: ``(B, 1, h, w)`` or ``(B, h, w)`` float regression output (upsampled bilinearly to
            the target size when smaller).
        target: ``(B, H, W)`` integer or float values, ``ignore_index`` = masked.
        ignore_index: masked target value (255).
        reduction: ``"mean"`` (the formula above; 0 when nothing is valid) or ``"sum"`` (numerator only).

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: ``pred`` has more than one channel, or an unknown reduction.
    """
    if pred.dim() == 3:
        pred = pred[:, None]  # (B, 1, h, w)
    if pred.shape[1] != 1:
        raise ValueError(f"masked_mse expects a (B, 1, H, W) regression map, got {tuple(pred.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"masked_mse reduction must be 'mean' or 'sum', not {reduction!r}")
    z = match_size(pred, target)[:, 0].float()  # (B, H, W)
    valid = target != ignore_index
    sq = ((z - target.float()) ** 2 * valid).sum()
    return sq if reduction == "sum" else sq / valid.sum().clamp_min(1)


class MultiTaskLoss(torch.nn.Module):
    """Weighted sum of per-task losses for multi-head charts (AutoICE: SIC, SOD, FLOE).

    A task with one output channel is a regression trained with :func:`masked_mse`; a task with
    ``K > 1`` outputs is a classification trained with softmax cross-entropy averaged over
    non-ignored pixels (``torch.nn.CrossEntropyLoss(ignore_index=255)``, i.e. :func:`cross_entropy`
    with ``avg_non_ignore=True``). The seed weights all three 1:1:1 (spec autoice.md §2.4); the
    challenge winner used SIC:SOD:FLOE = 1:3:3.

    Args:
        tasks: ``{task: K}`` output channels per task (e.g. ``{"SIC": 1, "SOD": 7, "FLOE": 8}``).
        weights: ``{task: weight}``; missing tasks weigh 1.
        ignore_index: masked label value (255).

    Raises:
        ValueError: a weight names an unknown task.
    """

    def __init__(self, tasks: dict, weights: dict | None = None, ignore_index: int = 255):
        super().__init__()
        unknown = sorted(set(weights or {}) - set(tasks))
        if unknown:
            raise ValueError(f"loss task_weights name unknown tasks {unknown}; tasks are {list(tasks)}")
        self.tasks = {t: int(k) for t, k in tasks.items()}
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in tasks}
        self.ignore_index = ignore_index

    def task_loss(self, task: str, logits: torch.Tensor, label: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Unweighted loss of one task: ``(B, K, h, w)`` logits vs ``(B, H, W)`` label (255 = ignore).

        ``reduction="sum"`` returns the summed per-pixel loss (divide by the valid count yourself).
        """
        if self.tasks[task] == 1:
            return masked_mse(logits, label, self.ignore_index, reduction)
        if reduction == "sum":
            return cross_entropy(logits, label.long(), self.ignore_index) * label.numel()
        return cross_entropy(logits, label.long(), self.ignore_index, avg_non_ignore=True)

    def forward(self, logits: dict, label: dict) -> dict:
        """``{task: (B, K, h, w)}`` and ``{task: (B, H, W)}`` -> ``{"loss_<task>": weight * loss}``.

        Raises:
            KeyError: a task has no label.
        """
        missing = [t for t in self.tasks if t not in label]
        if missing:
            raise KeyError(f"MultiTaskLoss: no label for tasks {missing} (labels given: {sorted(label)})")
        return {f"loss_{t}": self.weights[t] * self.task_loss(t, logits[t], label[t]) for t in self.tasks}
