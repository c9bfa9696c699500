"""Evaluators: run inference on validation/test batches, accumulate metrics, optionally draw PNGs.

train.py and test.py use only this interface, so a task with other outputs (multi-task charts,
boundary metrics) plugs in by adding an evaluator class and an entry in ``EVALUATORS``:

    ev = build_evaluator(cfg, device)
    for batch in loader:              # dicts from the dataset, already on ``device``
        ev.update(model, batch, show_dir=None, tta=False)
    metrics = ev.compute()            # all-reduced across ranks; plain JSON-able dict
    print(ev.table(metrics))
"""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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


def with_legend(rgb: np.ndarray, names: list[str], palette, note: str = "", bar: bool = False) -> np.ndarray:
    """Add a white legend strip below a picture: a colour swatch and name per class, then ``note``.

    Args:
        rgb: ``(H, W, 3)`` uint8 picture.
        names: one label per palette row (class names; for ``bar``, the value of each step).
        palette: ``(K, 3)`` RGB, one row per name.
        note: a last line, e.g. which image bands make the overlay's RGB.
        bar: draw the rows as one continuous colour bar (ordered values such as SIC 0-100 %), labels under
            the first, middle and last step.

    Returns:
        ``(H + h, W', 3)`` uint8: the picture (padded with white on the right when narrower than the widest
        entry, so no name is cut) over the strip, whose entries wrap onto more rows.
    """
    font, line = ImageFont.load_default(), 14
    widest = max([16 + int(font.getlength(n)) + 10 for n in names] + [int(font.getlength(note)) + 8])
    W = max(rgb.shape[1], widest, 12 * len(names) + 8 if bar else 0)  # a narrow picture is padded on the right
    items, x, y = [], 4, 4
    if bar:
        step = max((W - 8) // max(len(names), 1), 2)
        for k, c in enumerate(palette):
            items.append(("box", (4 + k * step, y, 4 + (k + 1) * step - 1, y + 10), tuple(int(v) for v in c)))
        for k in sorted({0, len(names) // 2, len(names) - 1}):
            items.append(("text", (4 + k * step, y + 12), names[k]))
        y += 2 * line
    else:
        for name, c in zip(names, palette, strict=False):
            w = 16 + int(font.getlength(name)) + 10
            if x + w > W and x > 4:
                x, y = 4, y + line
            items += [("box", (x, y + 1, x + 11, y + 11), tuple(int(v) for v in c)), ("text", (x + 15, y), name)]
            x += w
        y += line
    if note:
        items.append(("text", (4, y), note))
        y += line
    strip = Image.new("RGB", (W, y + 2), "white")
    draw = ImageDraw.Draw(strip)
    for kind, where, what in items:
        if kind == "box":
            draw.rectangle(where, fill=what, outline=(0, 0, 0))
        else:
            draw.text(where, what, fill=(0, 0, 0), font=font)
    picture = np.full((rgb.shape[0], W, 3), 255, np.uint8)
    picture[:, :rgb.shape[1]] = rgb
    return np.concatenate([picture, np.asarray(strip)], axis=0)


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
            bands = "bands 0, 1, 2" if batch["img"].shape[1] >= 3 else "band 0"
            for b in range(pred.shape[0]):
                colour = colourise(pred[b].cpu().numpy(), self.palette)
                name = batch["name"][b]
                legend = (self.names, self.palette[:len(self.names)])
                Image.fromarray(with_legend(colour, *legend)).save(Path(show_dir) / f"{name}_pred.png")
                overlay = (0.5 * display_image(batch["img"][b]) + 0.5 * colour).astype(np.uint8)
                Image.fromarray(with_legend(overlay, *legend, note=f"image: {bands} as RGB, each stretched")).save(
                    Path(show_dir) / f"{name}_overlay.png")

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


def json_safe(obj):
    """``obj`` (nested dicts/lists of numbers and strings) with every NaN or infinity replaced by ``None``, so
    ``json.dumps(..., allow_nan=False)`` writes strict JSON (``null`` for an undefined score, e.g. the IoU of a
    class absent from both label and prediction)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_device(batch, device: torch.device):
    """Move tensors in a (nested) batch dict/list to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
