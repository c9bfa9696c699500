"""UPerNet decode heads: UPerHead, IceSegNet's UPerSCA-MTL head, and the FCN auxiliary head.

Papers:
    "Unified Perceptual Parsing for Scene Understanding", Xiao et al., ECCV 2018,
    https://arxiv.org/abs/1807.10221 (UPerHead: PPM on the top level + FPN fusion).
    "IceSegNet" (fox-4869/IceSegNet README; paper on river-ice segmentation with Swin + K-Net):
    UPerSCA-MTL = UPerHead with depthwise-separable convs, a spatial cross-attention gate on the
    FPN levels 0-2, and a segmentation + edge multi-task head.
    "Fully Convolutional Networks for Semantic Segmentation", Long et al., CVPR 2015,
    https://arxiv.org/abs/1411.4038 (FCNHead, used as the auxiliary head).

Ported from (facts only, no code copied):
    open-mmlab/mmsegmentation v1.2.2 ``mmseg/models/decode_heads/{uper_head,psp_head,fcn_head,decode_head}.py``,
    open-mmlab/mmcv v2.1.0 ``mmcv/cnn/bricks/{conv_module,depthwise_separable_conv_module}.py``,
    fox-4869/IceSegNet ``mmseg/models/decode_heads/uper_att_plus_head.py`` @ 64aa2ae (spec icesegnet.md
    §1.4.1). Parameter names follow mmseg's state-dict layout (spec §9.4), e.g.
    ``psp_modules.{i}.1.conv.weight``, ``lateral_convs.{i}.depthwise_conv.bn.running_mean``,
    ``pea_layers.{i}.conv1.weight``, ``multi_task_head.edge_detection_head.weight``, ``conv_seg.*``.

Intentional deviations:
    - Norm layers are ``nn.BatchNorm2d`` (train.py converts them to SyncBatchNorm on CUDA with
      world size > 1); only ReLU activations; ``align_corners`` is always False.
    - The heads do not compute losses; ``IceSegNet``'s dead in-forward edge loss is not reproduced (the
      segmentor implements the spec §8.1 ``paper`` edge mode through :meth:`UPerHead.forward_edge`).
    - Inputs are always the full list of maps (mmseg ``multiple_select`` with ``in_index = 0..n-1``).
    - With one image per process and plain BN, the PPM's 1x1-pooled branch normalises with running
      statistics (see :class:`ConvModule`); mmseg raises there (it needs SyncBN or batch > 1).

Initialisation as mmseg effectively does (spec §1.7): convs inside :class:`ConvModule` are Kaiming-normal
(fan_out, ReLU gain) with zero bias, norms 1/0; ``conv_seg`` is N(0, 0.01) with zero bias; the SCA and
multi-task convs keep PyTorch defaults.

Dimension legend: ``B`` batch, ``C`` channels (``C_i`` of input level ``i``), ``H, W`` spatial
(``H_i, W_i`` of level ``i``; level 0 is the finest), ``K`` classes.
"""

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (mmseg ``resize``); no-op when the size matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


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


class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k ConvModule then pointwise 1x1 ConvModule, each with BN + ReLU (mmcv
    ``DepthwiseSeparableConvModule``; keys ``depthwise_conv.*``, ``pointwise_conv.*``).

    Args:
        in_channels: ``C_in`` (also the depthwise groups).
        out_channels: ``C_out``.
        kernel_size: depthwise kernel side (1 gives a per-channel scale + BN + ReLU).
        padding: depthwise padding.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, kernel_size, padding, groups=in_channels)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``."""
        return self.pointwise_conv(self.depthwise_conv(x))


class SpatialCrossAttention(nn.Module):
    """IceSegNet's "spatial cross-attention" gate (``PatchEnhancedAttention`` in its code, spec §1.4.1 f).

    out = x * sigmoid(W2 relu(W1 r + b1) + b2) * sigmoid(W2 relu(W1 c + b1) + b2), with the row
    descriptor ``r = mean_W(x)`` ``(B, C, H, 1)`` and column descriptor ``c = mean_H(x)`` ``(B, C, 1, W)``
    sharing the 1x1 convs ``conv1`` (C -> max(8, C // reduction)) and ``conv2`` (back to C). Unlike Hou et
    al.'s coordinate attention there is no BN, no h-swish and no residual.

    Args:
        channels: ``C``.
        reduction: channel reduction of ``conv1`` (16).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        mid = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mid, 1)
        self.conv2 = nn.Conv2d(mid, channels, 1)

    def gate(self, d: torch.Tensor) -> torch.Tensor:
        """Shared two-layer 1x1 gate: ``(B, C, h, w)`` descriptor -> sigmoid weights of the same shape."""
        return torch.sigmoid(self.conv2(F.relu(self.conv1(d))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)`` gated features."""
        a_h = self.gate(x.mean(dim=3, keepdim=True))  # (B, C, H, 1)
        a_w = self.gate(x.mean(dim=2, keepdim=True))  # (B, C, 1, W)
        return x * a_h * a_w


class MultiTaskHead(nn.Module):
    """IceSegNet's multi-task convs on the fused features: ``segmentation_head`` 1x1 (C -> seg_channels)
    and ``edge_detection_head`` 1x1 (C -> edge_channels), both with bias, PyTorch default init.

    In the published configuration they are built but never run (spec §1.4.1 h); the segmentor's
    ``paper`` edge mode uses ``edge_detection_head``. ``segmentation_head`` (19 channels, a left-over of
    the authors' code) is kept only so the parameter count and state dict match.
    """

    def __init__(self, channels: int, seg_channels: int = 19, edge_channels: int = 1):
        super().__init__()
        self.segmentation_head = nn.Conv2d(channels, seg_channels, 1)
        self.edge_detection_head = nn.Conv2d(channels, edge_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` -> (seg ``(B, seg_channels, H, W)``, edge ``(B, edge_channels, H, W)``) logits."""
        return self.segmentation_head(x), self.edge_detection_head(x)


class UPerHead(nn.Module):
    """UPerNet head: PPM on the top level, FPN top-down fusion, concat of all levels, 1x1 classifier.

    Steps (spec §1.4.1 a-e, g, i; ``P`` = ``len(in_channels)`` levels):
        1. PPM on level P-1: per scale s, AdaptiveAvgPool2d(s) -> ConvModule 1x1 -> bilinear back; concat
           with the input and apply ``bottleneck`` (3x3 ConvModule) -> top lateral.
        2. ``lateral_convs[i]`` on levels 0..P-2 (ConvModule 1x1, or DWS k=1 when ``separable``).
        3. Top-down: lateral[i-1] += bilinear(lateral[i]).
        4. ``fpn_convs[i]`` on levels 0..P-2 (3x3 ConvModule, or DWS k=3), then ``pea_layers[i]`` (SCA) when
           ``spatial_attention``; the top level is used as is.
        5. Resize all to level 0, concat (P*channels), ``fpn_bottleneck`` (3x3 ConvModule / DWS k=3) -> feats.
        6. ``cls_seg``: Dropout2d(dropout_ratio) then ``conv_seg`` 1x1 -> logits.

    Args:
        in_channels: channels of each input level, finest first, e.g. ``[768] * 4``.
        channels: width of the head (512).
        num_classes: ``K``.
        pool_scales: PPM output sizes.
        dropout_ratio: Dropout2d before ``conv_seg``.
        separable: depthwise-separable laterals, FPN convs and fusion (UPerSCA-MTL).
        spatial_attention: SCA gate after each non-top FPN conv (UPerSCA-MTL).
        multi_task: build :class:`MultiTaskHead` (UPerSCA-MTL).
        seg_channels, edge_channels: :class:`MultiTaskHead` widths (19 and 1 in IceSegNet).

    Raises:
        ValueError: fewer than two input levels or non-positive widths.
    """

    def __init__(self, in_channels: list[int], channels: int = 512, num_classes: int = 4,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6), dropout_ratio: float = 0.1, separable: bool = False,
                 spatial_attention: bool = False, multi_task: bool = False, seg_channels: int = 19,
                 edge_channels: int = 1):
        super().__init__()
        if len(in_channels) < 2 or min(in_channels) < 1 or channels < 1 or num_classes < 1:
            raise ValueError(f"UPerHead: need >= 2 input levels and positive widths, got in_channels={in_channels}, "
                             f"channels={channels}, num_classes={num_classes}")
        self.in_channels, self.channels, self.num_classes = list(in_channels), channels, num_classes
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(top, channels, 1)) for s in pool_scales)
        self.bottleneck = ConvModule(top + len(pool_scales) * channels, channels, 3, padding=1)
        if separable:
            self.lateral_convs = nn.ModuleList(DepthwiseSeparableConv(c, channels, 1) for c in in_channels[:-1])
            self.fpn_convs = nn.ModuleList(
                DepthwiseSeparableConv(channels, channels, 3, padding=1) for _ in in_channels[:-1])
            self.fpn_bottleneck = DepthwiseSeparableConv(len(in_channels) * channels, channels, 3, padding=1)
        else:
            self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
            self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in in_channels[:-1])
            self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)
        self.pea_layers = nn.ModuleList(
            SpatialCrossAttention(channels) for _ in in_channels[:-1]) if spatial_attention else None
        self.multi_task_head = MultiTaskHead(channels, seg_channels, edge_channels) if multi_task else None
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward_feature(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Fused features before the classifier (mmseg ``_forward_feature``).

        Args:
            inputs: ``P`` maps ``(B, C_i, H_i, W_i)``, finest first.

        Returns:
            ``(B, channels, H_0, W_0)``.

        Raises:
            ValueError: wrong number of maps or channels.
        """
        if len(inputs) != len(self.in_channels) or [x.shape[1] for x in inputs] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected maps with channels {self.in_channels}, "
                             f"got {[tuple(x.shape) for x in inputs]}")
        top = inputs[-1]
        ppm = [resize(m(top), top.shape[-2:]) for m in self.psp_modules]  # each (B, channels, H_top, W_top)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs[:-1], strict=True)]
        laterals.append(self.bottleneck(torch.cat([top, *ppm], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down, out of place
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1], strict=True)]
        if self.pea_layers is not None:
            outs = [sca(o) for sca, o in zip(self.pea_layers, outs, strict=True)]
        outs.append(laterals[-1])
        del laterals  # the finer laterals are spent
        return self.fuse_levels(outs, outs[0].shape[-2:])

    def fuse_levels(self, outs: list[torch.Tensor], size) -> torch.Tensor:
        """``fpn_bottleneck`` over the ``P`` level maps resized to ``size`` and concatenated (mmseg).

        Args:
            outs: ``P`` maps ``(B, channels, H_i, W_i)``, finest first; size: ``(H_0, W_0)``.

        Returns:
            ``(B, channels, H_0, W_0)``.
        """
        return self.fpn_bottleneck(torch.cat([resize(o, size) for o in outs], dim=1))  # (B, P*channels -> channels)

    def cls_seg(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, channels, H, W)`` -> ``(B, K, H, W)`` class logits (Dropout2d in training)."""
        return self.conv_seg(self.dropout(feats))

    def forward_edge(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, channels, H, W)`` -> ``(B, 1, H, W)`` edge logits (``multi_task_head.edge_detection_head``).

        Raises:
            RuntimeError: the head was built without ``multi_task``.
        """
        if self.multi_task_head is None:
            raise RuntimeError(f"{type(self).__name__} has no edge branch (built with multi_task=False)")
        return self.multi_task_head.edge_detection_head(feats)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """``P`` maps ``(B, C_i, H_i, W_i)`` -> ``(B, K, H_0, W_0)`` logits."""
        return self.cls_seg(self.forward_feature(inputs))


class UPerSCAMTLHead(UPerHead):
    """IceSegNet's UPerSCA-MTL kernel-generate head (``UPerATTPLUSHead``, spec §1.4.1): :class:`UPerHead`
    with depthwise-separable laterals / FPN convs / fusion, SCA gates on levels 0..P-2 and the
    multi-task convs. Same arguments as :class:`UPerHead` minus the three switches.
    """

    def __init__(self, in_channels: list[int], channels: int = 512, num_classes: int = 4,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6), dropout_ratio: float = 0.1, seg_channels: int = 19,
                 edge_channels: int = 1):
        super().__init__(in_channels, channels, num_classes, pool_scales, dropout_ratio, separable=True,
                         spatial_attention=True, multi_task=True, seg_channels=seg_channels,
                         edge_channels=edge_channels)


class FCNHead(nn.Module):
    """FCN auxiliary head on one input level (mmseg ``FCNHead``; keys ``convs.{j}``, ``conv_cat``, ``conv_seg``).

    ``num_convs`` 3x3 ConvModules on ``inputs[in_index]``; with ``concat_input`` the result is concatenated
    with the input and fused by ``conv_cat`` (3x3 ConvModule); then Dropout2d and ``conv_seg`` 1x1.
    IceSegNet: level 2, 256 channels, one conv, ``concat_input=True``; stock K-Net: ``concat_input=False``.

    Args:
        in_channels: channels of every input level (the head reads ``in_channels[in_index]``).
        in_index: level used.
        channels: hidden width.
        num_classes: ``K``.
        num_convs: >= 1 conv layers.
        kernel_size: conv kernel side (padding ``kernel_size // 2``).
        concat_input: concatenate input and conv output before ``conv_cat``.
        dropout_ratio: Dropout2d before ``conv_seg``.

    Raises:
        ValueError: ``in_index`` out of range or ``num_convs < 1``.
    """

    def __init__(self, in_channels: list[int], in_index: int = 2, channels: int = 256, num_classes: int = 4,
                 num_convs: int = 1, kernel_size: int = 3, concat_input: bool = True, dropout_ratio: float = 0.1):
        super().__init__()
        if not 0 <= in_index < len(in_channels) or num_convs < 1:
            raise ValueError(f"FCNHead: in_index {in_index} must index in_channels {in_channels} and "
                             f"num_convs {num_convs} must be >= 1")
        self.in_index, c_in, pad = in_index, in_channels[in_index], kernel_size // 2
        self.convs = nn.Sequential(*[ConvModule(c_in if j == 0 else channels, channels, kernel_size, pad)
                                     for j in range(num_convs)])
        self.conv_cat = ConvModule(c_in + channels, channels, kernel_size, pad) if concat_input else None
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """List of maps -> ``(B, K, H_i, W_i)`` logits at level ``in_index``."""
        x = inputs[self.in_index]
        feats = self.convs(x)
        if self.conv_cat is not None:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return self.conv_seg(self.dropout(feats))
