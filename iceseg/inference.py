"""Inference: whole-image and sliding-window prediction, test-time resize and TTA.

``model(img)`` in eval mode must return logits ``(B, K', H', W')``; K' = 1 means one sigmoid
logit of a binary task, which is turned into two class probabilities ``[1 - p, p]`` so every
model yields ``(B, K, H, W)`` probabilities and ``argmax`` gives the class (p > 0.5 strictly ->
class 1, the glacier seed's rule). Semantics follow mmseg's ``EncoderDecoder.whole_inference`` /
``slide_inference`` and ``SegTTAModel`` (average of softmax probabilities over augmentations).
"""

import math

import torch
import torch.nn.functional as F

from iceseg.transforms import rescale_size


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K', H, W)`` logits -> ``(B, K, H, W)`` float32 probabilities (K = 2 when K' = 1)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)  # (B, 2, H, W)
    return logits.softmax(dim=1)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that ``train.amp`` / ``eval.amp`` means on ``device``.

    Softmax, sigmoid, losses and metrics run on fp32 logits whatever the autocast (:func:`logits_to_probs`).

    Args:
        amp: "none", "bf16" or "fp16".
        device: where the model runs; fp16 autocast needs CUDA, so on a CPU "fp16" means fp32.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None (no autocast).
    """
    if amp == "fp16" and device.type != "cuda":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def eval_autocast(cfg, device: torch.device) -> torch.dtype | None:
    """Inference autocast of validation, ``test.py`` and ``predict.py``: ``eval.amp``, or ``train.amp`` when
    ``eval.amp`` is "" (so ``test.py`` scores a checkpoint as the validation that saved it did)."""
    return autocast_dtype(cfg.eval.amp or cfg.train.amp, device)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Sorted window offsets along one axis of ``size`` pixels (mmseg ``slide_inference`` and its tile
    converters): every ``stride``, the last one moved back so the window ends at ``size`` (0 alone when
    ``crop >= size``)."""
    n = max(math.ceil((size - crop) / stride), 0) + 1
    return sorted({min(i * stride, max(size - crop, 0)) for i in range(n)})


def _forward_padded(model, img: torch.Tensor, size_divisor: int) -> torch.Tensor:
    """Run ``model`` on ``img`` padded (bottom/right, zeros) to a multiple of ``size_divisor``."""
    B, C, H, W = img.shape
    ph, pw = (-H) % size_divisor, (-W) % size_divisor
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph))
    logits = model(img)
    if logits.shape[-2:] != img.shape[-2:]:
        logits = F.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=False)
    return logits[..., :H, :W]


def slide_logits(model, img: torch.Tensor, crop_size: tuple, stride: tuple, size_divisor: int = 1) -> torch.Tensor:
    """Sliding-window logits averaged where windows overlap (mmseg ``slide_inference``).

    Args:
        img: ``(B, C, H, W)``.
        crop_size: window ``(h, w)``; windows are clipped to the image, so small images give one window.
        stride: step ``(h, w)``.

    Returns:
        ``(B, K', H, W)`` logits.
    """
    B, C, H, W = img.shape
    ch, cw = min(crop_size[0], H), min(crop_size[1], W)
    out, count = None, img.new_zeros(1, 1, H, W)
    for y1 in window_starts(H, ch, stride[0]):
        for x1 in window_starts(W, cw, stride[1]):
            logit = _forward_padded(model, img[:, :, y1:y1 + ch, x1:x1 + cw], size_divisor)
            if out is None:
                out = img.new_zeros(B, logit.shape[1], H, W)
            out[:, :, y1:y1 + ch, x1:x1 + cw] += logit
            count[:, :, y1:y1 + ch, x1:x1 + cw] += 1
    return out / count


@torch.no_grad()
def predict(model, img: torch.Tensor, mode: str = "whole", crop_size=(512, 512), stride=(341, 341),
            size_divisor: int = 1, resize: tuple = (), scales=(1.0,), flips=(),
            scale_base: str = "resized") -> torch.Tensor:
    """Class probabilities for a batch at its own size, with optional test-time resize and TTA.

    Args:
        model: eval-mode module, ``(B, C, H, W) -> (B, K', h, w)`` logits.
        img: ``(B, C, H, W)`` float32 normalised image.
        mode: "whole" or "slide".
        crop_size, stride: slide window and step ``(h, w)`` in pixels.
        size_divisor: pad every forward input to a multiple of this.
        resize: ``(long, short)`` edge scale for the mmseg keep-ratio test resize, () = none.
        scales: scale factors of the views (TTA: mmseg ``TestTimeAug`` ``Resize(scale_factor=s)``).
        scale_base: "resized": a view is ``s`` x the size after ``resize``; "original": ``s`` x the input
            size, ``resize`` unused, as mmseg's TTA pipeline (``SegTTAModel``; e.g. 0.5..1.75 x a 1600x640
            image gives 800x320 .. 2800x1120, spec icesegnet.md §3.3).
        flips: extra flipped views per scale, each "horizontal", "vertical" or "both" (the
            identity view is always included; the glacier seed's 4-way TTA is all three).

    Returns:
        ``(B, K, H, W)`` float32 probabilities averaged over all augmentations.

    Raises:
        ValueError: unknown mode, flip direction or scale base.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', not {mode!r}")
    dims = {"none": (), "horizontal": (-1,), "vertical": (-2,), "both": (-2, -1)}
    for f in flips:
        if f not in dims or f == "none":
            raise ValueError(f"TTA flip must be 'horizontal', 'vertical' or 'both', not {f!r}")
    if scale_base not in ("resized", "original"):
        raise ValueError(f"TTA scale base must be 'resized' or 'original', not {scale_base!r}")
    B, C, H, W = img.shape
    base_w, base_h = rescale_size((W, H), resize) if resize and scale_base == "resized" else (W, H)
    total, n = None, 0
    for s in scales:
        h, w = int(base_h * s + 0.5), int(base_w * s + 0.5)
        x = img if (h, w) == (H, W) else F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
        for f in ["none", *flips]:
            xi = x.flip(dims[f]) if dims[f] else x
            if mode == "whole":
                logits = _forward_padded(model, xi, size_divisor)
            else:
                logits = slide_logits(model, xi, crop_size, stride, size_divisor)
            if dims[f]:
                logits = logits.flip(dims[f])
            if logits.shape[-2:] != (H, W):
                logits = F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)
            probs = logits_to_probs(logits)
            total = probs if total is None else total + probs
            n += 1
    return total / n
