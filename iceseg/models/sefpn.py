"""SEFPN: IceSegNet's neck, a top-down FPN with BatchNorm + ReLU after every 3x3 output conv.

Papers:
    "Feature Pyramid Networks for Object Detection", Lin et al., CVPR 2017, https://arxiv.org/abs/1612.03144.
    IceSegNet (fox-4869/IceSegNet README): Swin-L + SEFPN + UPerSCA-MTL + stage-aware K-Net.

Ported from (facts only, no code copied): fox-4869/IceSegNet ``mmseg/models/neck/sefpn.py`` @ 64aa2ae as
configured in ``configs/icesegnet-config.py`` (spec icesegnet.md §1.3): ``norm_cfg=None``/``act_cfg=None``,
so laterals and 3x3 convs are plain convs with bias; the extra ``nn.BatchNorm2d`` + ReLU follow each 3x3
conv. Despite the name there is no squeeze-and-excitation. State-dict keys follow mmseg (spec §9.4):
``lateral_convs.{i}.conv.{weight,bias}``, ``fpn_convs.{i}.0.conv.{weight,bias}``, ``fpn_convs.{i}.1.*`` (BN).

Intentional deviations: no extra levels (``num_outs`` = number of inputs, ``start_level`` 0), which is
the only configuration IceSegNet uses.

Initialisation (spec §1.7): convs are mmcv ``ConvModule``s, so Kaiming-normal (fan_out, ReLU gain) weights
and zero biases; the BN keeps PyTorch defaults (weight 1, bias 0).

Dimension legend: ``B`` batch, ``C_i`` input channels of level ``i`` (0 = finest), ``C`` output channels,
``H_i, W_i`` spatial size of level ``i``.
"""

import torch
import torch.nn.functional as F
from torch import nn


# Copied from iceseg.models.uper.ConvModule
class ConvModule(nn.Module):
    """Conv2d, then optional BatchNorm2d, then optional ReLU (mmcv ``ConvModule`` layout: ``conv``, ``bn``).

    The conv has a bias only when there is no norm (mmcv ``bias='auto'``). Init: Kaiming-normal
    (fan_out, ReLU gain) conv weight, zero bias, BN weight 1 / bias 0 (mmcv ``ConvModule.init_weights``).
    Deviation: in training, a plain-BN input with one value per channel (``B = H = W = 1``) is normalised
    with the running statistics instead of raising.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``.
        kernel_size: square kernel side.
        padding: zero padding on each side.
        groups: conv groups (``C_in`` for a depthwise conv).
        norm: add ``bn`` (BatchNorm2d, eps 1e-5, momentum 0.1).
        act: add a ReLU (not in place).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0,
                 groups: int = 1, norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, groups=groups, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.act = nn.ReLU() if act else None
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H', W')``."""
        x = self.conv(x)
        if self.bn is not None and self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1 and not isinstance(
                self.bn, nn.SyncBatchNorm):
            # One value per channel (PPM's 1x1 pool at one image per process): batch statistics do not exist
            # (torch and mmseg raise), so normalise with the running statistics and leave them unchanged.
            bn = self.bn
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        elif self.bn is not None:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


class SEFPN(nn.Module):
    """FPN neck with BN + ReLU on each output (spec §1.3).

    out_i = ReLU(BN_i(Conv3x3_i(L_i))), where L_3 = Conv1x1_3(x_3) and, top-down,
    L_{i-1} = Conv1x1_{i-1}(x_{i-1}) + nearest_upsample(L_i, to the exact size of level i-1).

    Args:
        in_channels: channels of each input level, finest first (Swin-L: ``[192, 384, 768, 1536]``).
        out_channels: ``C`` of every output (768 in IceSegNet).

    Raises:
        ValueError: empty ``in_channels`` or non-positive widths.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 768):
        super().__init__()
        if not in_channels or min(in_channels) < 1 or out_channels < 1:
            raise ValueError(f"SEFPN: need non-empty positive in_channels and out_channels > 0, "
                             f"got {in_channels}, {out_channels}")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, norm=False, act=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Sequential(ConvModule(out_channels, out_channels, 3, padding=1, norm=False, act=False),
                          nn.BatchNorm2d(out_channels), nn.ReLU())
            for _ in in_channels)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Fuse a feature pyramid.

        Args:
            inputs: ``(B, C_i, H_i, W_i)`` per level, finest first.

        Returns:
            ``(B, C, H_i, W_i)`` per level.

        Raises:
            ValueError: wrong number of maps or channels.
        """
        if [x.shape[1] for x in inputs] != self.in_channels:
            raise ValueError(f"SEFPN: expected maps with channels {self.in_channels}, "
                             f"got {[tuple(x.shape) for x in inputs]}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down with nearest upsampling (not bilinear)
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=True)]
