"""Evaluators: run inference on validation/test batches, accumulate metrics, optionally draw PNGs.

train.py and test.py use only this interface, so a task with other outputs (multi-task charts,
boundary metrics) plugs in by adding an evaluator class and an entry in ``EVALUATORS``:

    ev = build_evaluator(cfg, device)
    for batch in loader:              # dicts from the dataset, already on ``device``
        ev.update(model, batch, show_dir=None, tta=False)
    metrics = ev.compute()            # all-reduced across ranks; plain JSON-able dict
    print(ev.table(metrics))
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iceseg.inference import predict
from iceseg.metrics import BoundaryMetrics, ConfusionMatrix, exclude_from_means, format_table


def colourise(pred: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 RGB through ``palette`` ``(K, 3)``."""
    return palette[np.clip(pred, 0, len(palette) - 1)].astype(np.uint8)


def display_image(img: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float image -> ``(H, W, 3)`` uint8, each band min-max stretched (first 3 bands)."""
    x = img[:3] if img.shape[0] >= 3 else img[:1].expand(3, -1, -1)
    x = x.float()
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-6)
    return (x.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)  # (H, W, 3)


def default_palette(num_classes: int) -> np.ndarray:
    """A fixed, distinguishable ``(K, 3)`` uint8 palette for configs that define none."""
    return np.array([[(37 * c) % 256, (91 * c + 60) % 256, (173 * c + 120) % 256] for c in range(num_classes)])


class SegEvaluator:
    """Semantic segmentation: argmax of ``iceseg.inference.predict`` into a confusion matrix.

    With ``eval.boundary_metrics`` each image also adds its BFscore and Boundary IoU at the label's
    (original) resolution (``iceseg.metrics.BoundaryMetrics``: keys ``BFscore``, ``mBFscore``,
    ``BIoU``, ``mBIoU``). ``eval.exclude_classes`` are left out of every class mean (ISPRS clutter).

    Args:
        cfg: the full config (uses ``data.num_classes``, ``data.ignore_index`` and ``eval.*``).
        device: where the confusion matrix lives.
    """

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.E = cfg, cfg.eval
        self.cm = ConfusionMatrix(cfg.data.num_classes, cfg.data.ignore_index, device=device)
        self.bm = BoundaryMetrics(cfg.data.num_classes, cfg.data.ignore_index, self.E.bf_tolerance,
                                  self.E.biou_dilation, self.E.exclude_classes, device) if self.E.boundary_metrics else None
        self.names = self.E.class_names or [str(c) for c in range(cfg.data.num_classes)]
        self.palette = np.array(self.E.palette) if self.E.palette else default_palette(cfg.data.num_classes)

    def predict(self, model, img: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K, H, W)`` probabilities with the config's inference settings."""
        E = self.E
        scales, flips, base = (E.tta_scales, E.tta_flips, E.tta_scale_base) if tta else ([1.0], [], "resized")
        return predict(model, img, E.mode, E.crop_size, E.stride, E.size_divisor, E.resize, scales, flips, base)

    def update(self, model, batch: dict, show_dir: Path | None = None, tta: bool = False) -> None:
        """Predict ``batch["img"]`` ``(B, C, H, W)`` and count it against ``batch["label"]`` ``(B, H, W)``."""
        pred = self.predict(model, batch["img"], tta).argmax(1)  # (B, H, W)
        self.cm.update(pred, batch["label"])
        if self.bm is not None:
            self.bm.update(pred, batch["label"])
        if show_dir is not None:
            for b in range(pred.shape[0]):
                colour = colourise(pred[b].cpu().numpy(), self.palette)
                name = batch["name"][b]
                Image.fromarray(colour).save(Path(show_dir) / f"{name}_pred.png")
                overlay = (0.5 * display_image(batch["img"][b]) + 0.5 * colour).astype(np.uint8)
                Image.fromarray(overlay).save(Path(show_dir) / f"{name}_overlay.png")

    def compute(self) -> dict:
        """All-reduce over ranks and derive the metrics (``compute_metrics``, ``BoundaryMetrics``).

        ``eval.exclude_classes`` leave the confusion-matrix means here (:func:`exclude_from_means`) and
        the boundary means in ``BoundaryMetrics``, so ``mBFscore`` stays per image, then over images.
        """
        self.cm.all_reduce()
        out = self.cm.compute()
        if self.E.exclude_classes:
            out = exclude_from_means(out, self.E.exclude_classes)
        if self.bm is not None:
            self.bm.all_reduce()
            out.update(self.bm.compute())
        return out

    def table(self, metrics: dict) -> str:
        """Per-class table and summary line (plus the boundary metrics when computed)."""
        text = format_table(metrics, self.names)
        if "mBFscore" in metrics:
            per_class = "  ".join(f"{n}: {f:.2f}/{b:.2f}" for n, f, b in zip(self.names, metrics["BFscore"],
                                                                            metrics["BIoU"], strict=True))
            text += (f"\nmBFscore: {metrics['mBFscore']:.2f}  mBIoU: {metrics['mBIoU']:.2f}  "
                     f"(BF/BIoU per class: {per_class})")
        if self.E.exclude_classes:
            text += f"\nclass means exclude {[self.names[c] for c in self.E.exclude_classes]}"
        return text


EVALUATORS = {"seg": SegEvaluator}


def build_evaluator(cfg, device: torch.device):
    """The evaluator named by ``cfg.eval.evaluator``. Raises KeyError listing the valid names."""
    import iceseg.autoice.evaluate  # noqa: F401  (registers "autoice")

    if cfg.eval.evaluator not in EVALUATORS:
        raise KeyError(f"unknown evaluator {cfg.eval.evaluator!r}; valid: {', '.join(sorted(EVALUATORS))}")
    return EVALUATORS[cfg.eval.evaluator](cfg, device)


def to_device(batch, device: torch.device):
    """Move tensors in a (nested) batch dict/list to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
