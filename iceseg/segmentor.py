"""How a config becomes a model: segmentor wrappers and the ``MODELS`` builder registry.

A segmentor is an ``nn.Module`` whose ``forward(img, label=None)`` returns a dict of named
losses when ``label`` is given (training, so DDP sees one forward call) and logits
``(B, K', H, W)`` at the input size otherwise. Model files never import each other; they are
composed here.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from iceseg.losses import SegLoss


class DenseSegmentor(nn.Module):
    """A dense predictor ``net: (B, C, H, W) -> (B, K', h, w)`` plus a loss.

    Args:
        net: the network; its output is upsampled (bilinear) to the input size when smaller.
        criterion: ``(logits, label) -> {"loss_*": scalar}``.
        size_divisor: inputs are zero-padded (bottom/right) to a multiple of this and the logits
            cropped back, so e.g. U-Net++ (which needs multiples of 32) accepts any size.
    """

    def __init__(self, net: nn.Module, criterion: nn.Module, size_divisor: int = 1):
        super().__init__()
        self.net, self.criterion, self.size_divisor = net, criterion, size_divisor

    def logits(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float32 -> ``(B, K', H, W)`` logits."""
        B, C, H, W = img.shape
        ph, pw = (-H) % self.size_divisor, (-W) % self.size_divisor
        x = F.pad(img, (0, pw, 0, ph)) if (ph or pw) else img
        out = self.net(x)
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out[..., :H, :W]

    def forward(self, img: torch.Tensor, label: torch.Tensor | None = None):
        """Losses dict when ``label`` ((B, H, W) int64, 255 = ignore) is given, else logits."""
        logits = self.logits(img)
        return logits if label is None else self.criterion(logits, label)


def build_unetpp(cfg) -> nn.Module:
    """U-Net++ (ResNet34 encoder) from ``cfg.model`` / ``cfg.data`` (see iceseg/unetpp.py)."""
    from iceseg.unetpp import UNetPlusPlus, load_pretrained

    kwargs = dict(cfg.model.kwargs)
    if "decoder_channels" in kwargs:
        kwargs["decoder_channels"] = tuple(kwargs["decoder_channels"])
    net = UNetPlusPlus(in_channels=cfg.data.in_channels, num_classes=cfg.model.num_classes, **kwargs)
    if cfg.model.pretrained:
        load_pretrained(net, cfg.model.pretrained)
    return net


MODELS = {"unetpp": build_unetpp}


def build_model(cfg) -> DenseSegmentor:
    """Build the segmentor named by ``cfg.model.name`` with the configured loss.

    Raises:
        KeyError: unknown model name (lists the valid ones).
        ValueError: model outputs inconsistent with the loss / number of classes.
    """
    if cfg.model.name not in MODELS:
        raise KeyError(f"unknown model {cfg.model.name!r}; valid: {', '.join(sorted(MODELS))}")
    k_out, k_data = cfg.model.num_classes, cfg.data.num_classes
    if (cfg.loss.name == "bce_dice") != (k_out == 1) or (k_out != 1 and k_out != k_data) or (k_out == 1 and k_data != 2):
        raise ValueError(f"model.num_classes={k_out} does not fit loss {cfg.loss.name!r} with "
                         f"data.num_classes={k_data} (binary: 1 output, bce_dice, 2 data classes)")
    criterion = SegLoss(cfg.loss.name, cfg.data.ignore_index, cfg.loss.class_weight, cfg.loss.avg_non_ignore,
                        cfg.loss.bce_weight)
    return DenseSegmentor(MODELS[cfg.model.name](cfg), criterion, size_divisor=cfg.eval.size_divisor)
