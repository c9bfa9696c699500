"""K-Net semantic head: kernel updator, kernel update stages and the iterative decode head.

Paper: "K-Net: Towards Unified Image Segmentation", Zhang et al., NeurIPS 2021,
https://arxiv.org/abs/2106.14855. IceSegNet (fox-4869/IceSegNet) uses the same head with stage-aware
widths: FFN 2048/1024/512 and 16/8/4 attention heads over the three stages (spec icesegnet.md §1.4).

Ported from (facts only, no code copied): open-mmlab/mmsegmentation v1.2.2
``mmseg/models/decode_heads/knet_head.py`` (``KernelUpdator``, ``KernelUpdateHead``,
``IterativeDecodeHead``) with the ``knet-s3_*`` config values, and mmcv v2.1.0 ``MultiheadAttention`` /
``FFN`` wrappers (residual inside). State-dict keys follow mmseg (spec §9.4), e.g.
``kernel_update_head.{k}.attention.attn.in_proj_weight``, ``kernel_update_conv.input_norm_in.weight``,
``feat_transform.conv.weight``, ``ffn.layers.0.0.weight``, ``mask_fcs.0.weight``, ``fc_mask.weight``.

Intentional deviations:
    - Only the semantic configuration: 1x1 dynamic kernels (``conv_kernel_size=1``), feature gather and
      mask transform strides 1, ``gate_sigmoid=True``, ``gate_norm_act=False``, ``activate_out=False``,
      ReLU activations, LayerNorm. Kernels travel between stages as ``(B, N, C)`` instead of mmseg's
      ``(B, N, C, 1, 1)``.
    - Attention is ``nn.MultiheadAttention`` called sequence-first with the default ``need_weights``, as
      mmcv does, so float32 results follow the same (non-fused) kernels.
    - ``num_classes`` of mmseg's ``KernelUpdateHead`` (never used) is dropped: the kernel count N comes from
      the generate head's ``conv_seg.weight``.
    - Initialisation keeps PyTorch defaults in the stages, as mmseg effectively does (its xavier
      ``init_weights`` is never called, spec §1.7 / §8.15); ``feat_transform`` is an mmcv ConvModule, so it
      gets Kaiming-normal (fan_out) with zero bias.

Dimension legend: ``B`` batch, ``C`` head channels (512), ``G`` groups of the kernel updator (C / 256),
``N`` dynamic kernels (= ``K`` classes), ``H, W`` feature size (1/4 of the image), ``F`` FFN width.
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


class KernelUpdator(nn.Module):
    """Gated kernel update of K-Net Eq. (4)-(5) (spec §1.4.3), applied per group of ``in_channels``.

    With f the assembled group feature and k the current kernel (both ``in_channels`` wide):
    ``[f_in, f_out] = dynamic_layer(f)``, ``[k_in, k_out] = input_layer(k)``, ``g = f_in * k_in``,
    ``G_k = sigmoid(input_norm_in(input_gate(g)))``, ``G_f = sigmoid(norm_in(update_gate(g)))``,
    ``out = relu(fc_norm(fc_layer(G_f * norm_out(f_out) + G_k * input_norm_out(k_out))))``.

    Args:
        in_channels: width of f and k (256 in the K-Net configs; equals ``feat_channels``).
        feat_channels: gate width (256).
        out_channels: output width (256).

    Raises:
        ValueError: ``in_channels != feat_channels`` (the gates map ``feat_channels`` inputs).
    """

    def __init__(self, in_channels: int = 256, feat_channels: int = 256, out_channels: int = 256):
        super().__init__()
        if in_channels != feat_channels:
            raise ValueError(f"KernelUpdator: in_channels ({in_channels}) must equal feat_channels ({feat_channels})")
        self.in_channels, self.feat_channels = in_channels, feat_channels
        self.dynamic_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_gate = nn.Linear(in_channels, feat_channels)
        self.update_gate = nn.Linear(in_channels, feat_channels)
        self.norm_in = nn.LayerNorm(feat_channels)
        self.norm_out = nn.LayerNorm(feat_channels)
        self.input_norm_in = nn.LayerNorm(feat_channels)
        self.input_norm_out = nn.LayerNorm(feat_channels)
        self.fc_layer = nn.Linear(feat_channels, out_channels)
        self.fc_norm = nn.LayerNorm(out_channels)

    def forward(self, update_feature: torch.Tensor, input_feature: torch.Tensor) -> torch.Tensor:
        """Update kernels from assembled features.

        Args:
            update_feature: ``(M, in_channels)`` assembled group features f (M = B*N*G).
            input_feature: ``(M, in_channels)`` current kernels k.

        Returns:
            ``(M, out_channels)`` updated kernels.
        """
        Fc = self.feat_channels
        params = self.dynamic_layer(update_feature)  # (M, 2*Fc)
        f_in, f_out = params[:, :Fc], params[:, -Fc:]
        inputs = self.input_layer(input_feature)  # (M, 2*Fc)
        k_in, k_out = inputs[:, :Fc], inputs[:, -Fc:]
        gate = k_in * f_in
        input_gate = torch.sigmoid(self.input_norm_in(self.input_gate(gate)))
        update_gate = torch.sigmoid(self.norm_in(self.update_gate(gate)))
        out = update_gate * self.norm_out(f_out) + input_gate * self.input_norm_out(k_out)
        return torch.relu(self.fc_norm(self.fc_layer(out)))


class KernelAttention(nn.Module):
    """Self-attention over the N kernels with a residual, ``x + MHA(x, x, x)`` (mmcv ``MultiheadAttention``
    wrapper; the torch module sits at ``attn`` so keys read ``attention.attn.in_proj_weight``).

    Args:
        channels: ``C``.
        num_heads: heads (``C`` divisible by it).
        dropout: attention dropout (0 in K-Net).
    """

    def __init__(self, channels: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, num_heads, dropout=dropout)  # sequence-first, as mmseg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N, C)``."""
        q = x.transpose(0, 1)  # (N, B, C): sequence-first keeps torch off its batch-first fast path (mmseg numerics)
        return x + self.attn(q, q, q)[0].transpose(0, 1)  # (B, N, C)


class FFN(nn.Module):
    """``x + Linear(F -> C)(ReLU(Linear(C -> F)(x)))`` with dropout (mmcv ``FFN``, keys ``layers.0.0``, ``layers.1``).

    Args:
        channels: ``C``.
        feedforward_channels: ``F``.
        dropout: dropout after each linear (0 in K-Net).
    """

    def __init__(self, channels: int, feedforward_channels: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(channels, feedforward_channels), nn.ReLU(), nn.Dropout(dropout)),
            nn.Linear(feedforward_channels, channels), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> ``(..., C)``."""
        return x + self.layers(x)


class KernelUpdateHead(nn.Module):
    """One K-Net stage: assemble group features, update kernels, let kernels attend, predict new logits.

    Steps (spec §1.4.2): x' = feat_transform(x); P = softmax_N(mask logits, resized to x if needed);
    F[b, n] = sum_hw P[b, n] x'[b] (a sum, not a mean); kernels <- KernelUpdator per group of
    ``updator_channels``; U = LN(U + MHA(U)); obj = LN(U + FFN(U)); new kernels w = fc_mask(relu(LN(
    Linear_nobias(obj)))); logits[b, n] = sum_c w[b, n, c] x'[b, c]. The next stage receives obj.

    Args:
        in_channels: ``C`` (512).
        num_heads: attention heads (8; IceSegNet 16/8/4 by stage).
        feedforward_channels: ``F`` (2048; IceSegNet 2048/1024/512 by stage).
        num_mask_fcs: Linear + LN + ReLU blocks before ``fc_mask`` (1).
        updator_channels: group width of the kernel updator (256, so G = C / 256 = 2).
        dropout: attention / FFN dropout (0).

    Raises:
        ValueError: ``in_channels`` not divisible by ``num_heads`` or ``updator_channels``.
    """

    def __init__(self, in_channels: int = 512, num_heads: int = 8, feedforward_channels: int = 2048,
                 num_mask_fcs: int = 1, updator_channels: int = 256, dropout: float = 0.0):
        super().__init__()
        if in_channels % num_heads or in_channels % updator_channels:
            raise ValueError(f"KernelUpdateHead: in_channels {in_channels} must be divisible by num_heads "
                             f"{num_heads} and updator_channels {updator_channels}")
        self.in_channels, self.updator_channels = in_channels, updator_channels
        self.attention = KernelAttention(in_channels, num_heads, dropout)
        self.attention_norm = nn.LayerNorm(in_channels)
        self.kernel_update_conv = KernelUpdator(updator_channels, updator_channels, updator_channels)
        self.feat_transform = ConvModule(in_channels, in_channels, 1, norm=False, act=False)
        self.ffn = FFN(in_channels, feedforward_channels, dropout)
        self.ffn_norm = nn.LayerNorm(in_channels)
        self.mask_fcs = nn.Sequential(*[m for _ in range(num_mask_fcs) for m in (
            nn.Linear(in_channels, in_channels, bias=False), nn.LayerNorm(in_channels), nn.ReLU())])
        self.fc_mask = nn.Linear(in_channels, in_channels)

    def forward(self, x: torch.Tensor, kernels: torch.Tensor,
                mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine kernels and logits once.

        Args:
            x: ``(B, C, H, W)`` features from the generate head (the same for every stage).
            kernels: ``(B, N, C)`` current kernels (stage 1: ``conv_seg.weight``).
            mask_logits: ``(B, N, h, w)`` previous stage's class logits.

        Returns:
            (``(B, N, H, W)`` new logits, ``(B, N, C)`` kernels for the next stage).
        """
        B, N, C = kernels.shape
        x = self.feat_transform(x)
        H, W = x.shape[-2:]
        if mask_logits.shape[-2:] != (H, W):
            mask_logits = F.interpolate(mask_logits, size=(H, W), mode="bilinear", align_corners=False)
        probs = mask_logits.softmax(dim=1)  # over the N classes (mmseg calls it sigmoid_masks)
        feat = torch.einsum("bnhw,bchw->bnc", probs, x)  # (B, N, C) group features, summed
        G = C // self.updator_channels
        obj = self.kernel_update_conv(feat.reshape(B * N * G, self.updator_channels),  # (B*N*G, C/G)
                                      kernels.reshape(B * N * G, self.updator_channels))  # (B*N*G, C/G)
        obj = obj.reshape(B, N, C)  # (B, N, C)
        obj = self.attention_norm(self.attention(obj))
        obj = self.ffn_norm(self.ffn(obj))
        mask_kernels = self.fc_mask(self.mask_fcs(obj))  # (B, N, C)
        # per-image 1x1 conv with the dynamic kernels, as mmseg (an einsum is equal in float64; in float32 its
        # other summation order moves logits of size ~30 by ~2e-5)
        logits = torch.cat([F.conv2d(x[b:b + 1], mask_kernels[b, :, :, None, None])  # (1, N, H, W)
                            for b in range(B)])  # (B, N, H, W)
        return logits, obj


class IterativeDecodeHead(nn.Module):
    """K-Net decode head: a kernel-generate head followed by ``num_stages`` kernel update stages.

    feats = generate.forward_feature(inputs); s0 = generate.cls_seg(feats); kernels = conv_seg.weight
    (no bias) expanded over the batch; (s_k, kernels) = stage_k(feats, kernels, s_{k-1}) for k = 1..S.

    Args:
        kernel_generate_head: a head with ``forward_feature(list) -> (B, C, H, W)``, ``cls_seg(feats)``,
            a 1x1 ``conv_seg`` (``N x C x 1 x 1`` weight) and ``channels`` = C, e.g. ``iceseg.models.uper.UPerHead``;
            ``forward_edge(feats)`` is needed only for ``return_edge``.
        num_stages: S (3).
        feedforward_channels: ``F`` per stage (baseline 2048 x3; IceSegNet 2048, 1024, 512).
        num_heads: attention heads per stage (baseline 8 x3; IceSegNet 16, 8, 4).
        updator_channels: kernel updator group width (default 256, or C when C < 256).
        dropout: attention / FFN dropout.

    Raises:
        ValueError: per-stage lists whose length is not ``num_stages``, or a generate head without the
            required members.
    """

    def __init__(self, kernel_generate_head: nn.Module, num_stages: int = 3,
                 feedforward_channels: list[int] = (2048, 2048, 2048), num_heads: list[int] = (8, 8, 8),
                 updator_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        if len(feedforward_channels) != num_stages or len(num_heads) != num_stages:
            raise ValueError(f"IterativeDecodeHead: need {num_stages} feedforward_channels and num_heads, got "
                             f"{list(feedforward_channels)} and {list(num_heads)}")
        missing = [a for a in ("forward_feature", "cls_seg", "conv_seg", "channels")
                   if not hasattr(kernel_generate_head, a)]
        if missing:
            raise ValueError(f"IterativeDecodeHead: kernel_generate_head lacks {missing}")
        C = kernel_generate_head.channels
        self.kernel_generate_head = kernel_generate_head
        self.num_classes = kernel_generate_head.conv_seg.out_channels
        self.kernel_update_head = nn.ModuleList(
            KernelUpdateHead(C, h, f, updator_channels=updator_channels or min(256, C), dropout=dropout)
            for f, h in zip(feedforward_channels, num_heads, strict=True))

    def forward(self, inputs: list[torch.Tensor], return_edge: bool = False):
        """Run the generate head and the kernel update stages.

        Args:
            inputs: feature maps for the generate head, ``(B, C_i, H_i, W_i)``, finest first.
            return_edge: also return ``kernel_generate_head.forward_edge(feats)``, ``(B, 1, H, W)`` logits.

        Returns:
            Training: ``[s0, s1, ..., sS]``, each ``(B, N, H, W)`` logits at the finest input level.
            Eval: ``sS`` only. With ``return_edge``: ``(that, edge_logits)``.
        """
        gen = self.kernel_generate_head
        feats = gen.forward_feature(inputs)  # (B, C, H, W)
        logits = gen.cls_seg(feats)  # (B, N, H, W)
        weight = gen.conv_seg.weight  # (N, C, 1, 1); the bias is not part of the kernels
        kernels = weight.flatten(1).unsqueeze(0).expand(feats.shape[0], -1, -1)  # (B, N, C)
        stages = [logits]
        for stage in self.kernel_update_head:
            logits, kernels = stage(feats, kernels, logits)
            stages.append(logits)
        out = stages if self.training else stages[-1]
        return (out, gen.forward_edge(feats)) if return_edge else out
