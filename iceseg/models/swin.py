"""Swin Transformer backbone (T/S/B/L) returning NCHW multi-scale features, plus checkpoint converters.

Paper: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", Liu et al., ICCV 2021,
https://arxiv.org/abs/2103.14030. Numerics follow mmsegmentation v1.2.2 ``mmseg/models/backbones/swin.py``
(the IceSegNet backbone, spec ``icesegnet.md`` §1.2); parameter names and the patch-merging channel order
follow microsoft/Swin-Transformer ``models/swin_transformer.py`` (spec §9.1), so official ``.pth`` files load
with renames only. Written from those facts, no code copied; parity with mmseg and timm is pinned by
``tests/test_swin.py`` (assets from ``dev/make_golden_swin.py``).

mmseg's order, which matters when a stage size is not a multiple of the window: patch embed pads the image
bottom/right to a multiple of ``patch_size``; each block pads the map to a multiple of ``window_size``, then
rolls by ``-window_size // 2`` (odd blocks), then masks pairs from different shift regions with -100 (padded
tokens enter qkv as zeros and are not masked); patch merging pads odd sizes by one row/column; stage ``i``
output (before its merging) goes through LayerNorm ``norm{i}``.

Deviations: Microsoft/timm drop the shift in a stage that fits in one window, and timm shifts before
padding; mmseg and this file always pad first and shift (timm ``always_partition`` agrees). Patch merging
uses Microsoft's channel order (the mmseg converter permutes the weights, spec §9.2). No absolute position
embedding, classification head, ``qk_scale`` or ``frozen_stages``. Attention is
``F.scaled_dot_product_attention`` or the explicit softmax in mmseg's op order (``fused_attn``; None: SDPA
on CUDA only). Fast paths (oneDNN linears, in-place attention adds, recomputed MLP activations) are applied
to a built model by ``iceseg.fast.optimize``; this file holds the reference math.

Dimensions: ``B`` batch, ``C`` channels, ``H, W`` spatial, ``Hp, Wp`` padded to the window, ``ws`` window
size, ``N = ws*ws`` tokens per window, ``nW`` windows per image, ``nH`` heads, ``hd`` head dim.
"""

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# ----------------------------------------------------------------------------- functions


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """Cut a padded NHWC map ``(B, Hp, Wp, C)`` (``Hp``, ``Wp`` multiples of the window size ``ws``) into
    non-overlapping windows ``(B*nW, ws*ws, C)``, row-major: window index ``b*nW + r*(Wp//ws) + c``."""
    B, Hp, Wp, C = x.shape
    x = x.view(B, Hp // ws, ws, Wp // ws, ws, C)  # (B, Hp/ws, ws, Wp/ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws * ws, C)  # (B*nW, ws*ws, C)


def window_reverse(windows: torch.Tensor, ws: int, Hp: int, Wp: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B*nW, ws*ws, C)`` -> ``(B, Hp, Wp, C)``."""
    C = windows.shape[-1]
    x = windows.view(-1, Hp // ws, Wp // ws, ws, ws, C)  # (B, Hp/ws, Wp/ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, Hp, Wp, C)  # (B, Hp, Wp, C)


def relative_position_index(ws: int, device=None) -> torch.Tensor:
    """Index of each (query, key) pair of a window into the relative-position bias table: int64 ``(N, N)``
    in ``[0, (2*ws-1)**2)``. Microsoft's rule ``(dy + ws - 1) * (2*ws - 1) + (dx + ws - 1)``, ``(dy, dx)`` the
    query minus key offset; mmseg builds the same matrix another way."""
    ar = torch.arange(ws, device=device)
    coords = torch.stack(torch.meshgrid(ar, ar, indexing="ij")).flatten(1)  # (2, N): (row, col)
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, N, N), in [0, 2*ws-2]
    return rel[0] * (2 * ws - 1) + rel[1]  # (N, N)


def shift_window_mask(Hp: int, Wp: int, ws: int, shift: int, device=None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive ``(nW, N, N)`` mask of a cyclically shifted ``Hp x Wp`` map (Swin paper §3.2): 0 inside a
    region, -100 across. Each axis of length ``n`` has the regions ``[0, n-ws)``, ``[n-ws, n-shift)``,
    ``[n-shift, n)`` (3x3 in 2-D); ``Hp, Wp`` are the padded sizes (multiples of ``ws``, padded tokens not
    masked, as mmseg), ``0 < shift < ws``."""
    def region(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - ws).long() + (i >= n - shift).long()  # (n,), 0 / 1 / 2

    rows, cols = region(Hp).view(-1, ws), region(Wp).view(-1, ws)  # (Hp/ws, ws), (Wp/ws, ws)
    # region id of token (i, j) of window (r, c), in window_partition's order (r, c row-major, then i, j)
    ids = (rows[:, None, :, None] * 3 + cols[None, :, None, :]).view(-1, ws * ws)  # (nW, N)
    diff = ids[:, :, None] != ids[:, None, :]  # (nW, N, N)
    return torch.zeros(diff.shape, device=device, dtype=dtype).masked_fill_(diff, -100.0)


def resize_relative_position_bias_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """Resize a float ``(S*S, nH)`` bias table to window ``ws``: ``((2*ws-1)**2, nH)`` (mmseg ``init_weights``),
    viewed as an ``nH``-channel ``S x S`` image, bicubic, ``align_corners=False`` (window-12 files into
    window-7 models); ``table`` itself when it fits. Raises ValueError unless ``table`` is 2-D with S*S rows."""
    L, nH = table.shape if table.dim() == 2 else (0, 0)
    S1, S2 = math.isqrt(L), 2 * window_size - 1
    if L == 0 or S1 * S1 != L:
        raise ValueError(f"relative_position_bias_table must be (S*S, nH), got {tuple(table.shape)}")
    if S1 == S2:
        return table
    img = table.T.reshape(1, nH, S1, S1)  # (1, nH, S1, S1)
    img = F.interpolate(img, size=(S2, S2), mode="bicubic", align_corners=False)  # (1, nH, S2, S2)
    return img.reshape(nH, S2 * S2).T.contiguous()  # (S2*S2, nH)


# ----------------------------------------------------------------------------- leaf modules


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero whole samples with probability ``drop_prob``
    in ``[0, 1)`` and scale the kept ones by ``1 / (1 - drop_prob)``; identity in eval. Any ``(B, ...)``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
        return x * mask / keep


class Mlp(nn.Module):
    """Linear(dim -> hidden_dim), exact GELU, Linear(hidden_dim -> dim), dropout ``drop`` after each
    linear; ``(..., dim)`` in and out."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias (paper Eq. 4):
    ``softmax(q k^T / sqrt(hd) + bias + mask) v`` per head, then a projection.

    ``dim`` = ``C`` (divisible by ``num_heads``), ``window_size`` = ``ws``; qkv output rows are q | k | v, each
    split by head; ``attn_drop``/``proj_drop`` drop attention probabilities / projected outputs;
    ``fused_attn``: True ``F.scaled_dot_product_attention``, False the explicit softmax, None SDPA on CUDA only.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, fused_attn: bool | None = None):
        super().__init__()
        self.num_heads, self.head_dim, self.window_size = num_heads, dim // num_heads, window_size
        self.scale = self.head_dim ** -0.5
        self.fused_attn = fused_attn  # True: SDPA, False: explicit softmax, None: SDPA on CUDA only
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention_logits(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor,
                         mask: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B*nW, nH, N, N)`` = ``q k^T / sqrt(hd) + bias (+ mask)`` in mmseg/timm's order, for
        ``q, k`` ``(B*nW, nH, N, hd)``, ``bias`` ``(nH, N, N)``, ``mask`` ``(nW, N, N)`` or None."""
        B_, nH, N, _ = q.shape
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias[None]  # (B*nW, nH, N, N)
        if mask is None:
            return attn
        nW = mask.shape[0]
        return (attn.view(B_ // nW, nW, nH, N, N) + mask[None, :, None]).view(B_, nH, N, N)  # (B*nW, nH, N, N)

    def attend(self, qkv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of projected window tokens ``qkv`` ``(B*nW, N, 3C)`` (the output of ``self.qkv``), optional
        additive ``mask`` ``(nW, N, N)`` shared by all images -> per-head outputs concatenated ``(B*nW, N, C)``,
        before ``self.proj``."""
        B_, N, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        nH, hd = self.num_heads, self.head_dim
        qkv = qkv.view(B_, N, 3, nH, hd).permute(2, 0, 3, 1, 4)  # (3, B*nW, nH, N, hd)
        q, k, v = qkv.unbind(0)  # each (B*nW, nH, N, hd)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, nH)
        bias = bias.view(N, N, nH).permute(2, 0, 1)  # (nH, N, N)
        nW = 1 if mask is None else mask.shape[0]
        if self.fused_attn or (self.fused_attn is None and q.is_cuda):
            bias = bias[None] if mask is None else bias + mask[:, None]  # (nW, nH, N, N)
            # CPU SDPA runs slower with a batch-broadcast mask than with one expanded to the batch.
            bias = bias.to(q.dtype).expand(B_ // nW, nW, nH, N, N).reshape(B_, nH, N, N)  # (B*nW, nH, N, N)
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B*nW, nH, N, hd)
        else:
            attn = self.attention_logits(q, k, bias, mask)  # (B*nW, nH, N, N)
            out = self.attn_drop(attn.softmax(dim=-1)) @ v  # (B*nW, nH, N, hd)
        return out.transpose(1, 2).reshape(B_, N, C)  # (B*nW, N, C)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B*nW, N, C)`` window tokens (as :func:`window_partition` orders them), optional additive
        ``mask`` ``(nW, N, N)`` shared by all images -> ``(B*nW, N, C)``."""
        return self.proj_drop(self.proj(self.attend(self.qkv(x), mask)))


class SwinTransformerBlock(nn.Module):
    """Pre-norm block: ``x + DropPath((S)W-MSA(LN(x)))``, then ``x + DropPath(MLP(LN(x)))`` (paper Eq. 3).

    ``shift_size``: 0 (W-MSA) or ``window_size // 2`` (SW-MSA); ``mlp_ratio``: MLP hidden / ``dim``; the rest
    as :class:`WindowAttention`. Raises ValueError if ``shift_size`` is not in ``[0, window_size)``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, fused_attn: bool | None = None):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, drop, fused_attn)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x ``(B, H, W, C)``; attn_mask ``(nW, N, N)`` from :func:`shift_window_mask` (shifted
        blocks only). Returns ``(B, H, W, C)``."""
        B, H, W, C = x.shape
        ws, s = self.window_size, self.shift_size
        shortcut = x
        Hp, Wp = (H + ws - 1) // ws * ws, (W + ws - 1) // ws * ws  # padded to whole windows
        x = F.pad(self.norm1(x), (0, 0, 0, Wp - W, 0, Hp - H))  # (B, Hp, Wp, C): pad, then shift (mmseg)
        # one name for each stage, so the padded and rolled copies are freed before attention
        x = window_partition(torch.roll(x, shifts=(-s, -s), dims=(1, 2)) if s else x, ws)  # (B*nW, N, C)
        x = window_reverse(self.attn(x, attn_mask if s else None), ws, Hp, Wp)  # (B, Hp, Wp, C)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = shortcut + self.drop_path(x[:, :H, :W])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> 4C channels -> LayerNorm -> Linear(4C -> 2C, no bias): halves H and W.
    Channel blocks in Microsoft/timm order, sub-grid (row, col) = (0,0), (1,0), (0,1), (1,1); odd sizes are
    zero-padded by one row/column at the bottom/right first (mmseg/timm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 2C)``."""
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # (B, 2h, 2w, C)
        h, w = x.shape[1] // 2, x.shape[2] // 2
        x = x.view(B, h, 2, w, 2, C).permute(0, 1, 3, 4, 2, 5)  # (B, h, w, col, row, C)
        return self.reduction(self.norm(x.reshape(B, h, w, 4 * C)))  # (B, h, w, 2C)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv (kernel = stride) from ``in_chans`` to ``embed_dim`` + LayerNorm;
    pads the image bottom/right to a multiple of ``patch_size``."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` NCHW -> ``(B, ceil(H/p), ceil(W/p), C)`` NHWC."""
        B, C, H, W = x.shape
        p = self.patch_size
        x = self.proj(F.pad(x, (0, (-W) % p, 0, (-H) % p)))  # (B, C, H/p, W/p)
        return self.norm(x.permute(0, 2, 3, 1))  # (B, H/p, W/p, C): NCHW -> NHWC


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks (odd ones shifted by ``window_size // 2``; ``drop_path`` one rate per block),
    then :class:`PatchMerging` if ``downsample`` (end of stage, Microsoft layout); ``with_cp`` checkpoints each
    block while gradients are needed. Other arguments as :class:`SwinTransformerBlock`."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: list[float], downsample: bool,
                 with_cp: bool = False, fused_attn: bool | None = None):
        super().__init__()
        self.window_size, self.with_cp = window_size, with_cp
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else window_size // 2, mlp_ratio,
                                 qkv_bias, drop, attn_drop, drop_path[j], fused_attn)
            for j in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, W, C)`` -> (stage output ``(B, H, W, C)``, next-stage input ``(B, H', W', C')``)."""
        B, H, W, C = x.shape
        ws = self.window_size
        mask = None
        if len(self.blocks) > 1:  # one mask per stage, on the padded size
            mask = shift_window_mask((H + ws - 1) // ws * ws, (W + ws - 1) // ws * ws, ws, ws // 2, x.device, x.dtype)
        for blk in self.blocks:
            if self.with_cp and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


# ----------------------------------------------------------------------------- model


class SwinTransformer(nn.Module):
    """Swin backbone: image -> LayerNorm-ed feature maps at strides 4, 8, 16, 32 (those in ``out_indices``).

    ``config``: :class:`SwinConfig` (default Swin-T; see the ``swin_*`` presets); ValueError if inconsistent.
    Parameters: ``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*`` (end of stage
    ``i < 3``), ``norm{i}`` for ``i`` in ``out_indices``; buffers are non-persistent.
    """

    def __init__(self, config: "SwinConfig | None" = None):
        super().__init__()
        cfg = config if config is not None else SwinConfig()
        cfg.validate()
        self.config = cfg
        n = len(cfg.depths)
        self.out_indices = tuple(cfg.out_indices)
        self.num_features = [cfg.embed_dim * 2 ** i for i in range(n)]
        self.out_channels = [self.num_features[i] for i in self.out_indices]  # channels of each output
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()  # rises linearly
        self.layers = nn.ModuleList([
            BasicLayer(self.num_features[i], cfg.depths[i], cfg.num_heads[i], cfg.window_size, cfg.mlp_ratio,
                       cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop_rate,
                       dpr[sum(cfg.depths[:i]):sum(cfg.depths[:i + 1])], i < n - 1, cfg.with_cp, cfg.fused_attn)
            for i in range(n)])
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # mmseg / Microsoft init: trunc-normal(0.02) linears and bias tables, LayerNorm 1/0, conv default.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, WindowAttention):
            nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised float image ``(B, in_chans, H, W)``, any ``H, W >= 1`` -> one ``(B, C_i, H_i, W_i)`` map
        per ``out_indices`` entry: ``C_i = embed_dim * 2**i``, ``H_0 = ceil(H / patch_size)``,
        ``H_{i+1} = ceil(H_i / 2)`` (likewise ``W``). Raises ValueError unless ``x`` is 4-D with ``in_chans``."""
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"SwinTransformer: x must be (B, {self.config.in_chans}, H, W), "
                             f"got {tuple(x.shape)}")
        x = self.pos_drop(self.patch_embed(x))  # (B, H/4, W/4, C) NHWC
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x)  # out: (B, H_i, W_i, C_i) before merging
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.permute(0, 3, 1, 2).contiguous())  # (B, C_i, H_i, W_i): NHWC -> NCHW
        return outs


@dataclass
class SwinConfig:
    """Hyper-parameters of :class:`SwinTransformer` (official names; defaults = Swin-T, mmseg dpr 0.3)."""

    embed_dim: int = 96  # channels of stage 0; stage i has embed_dim * 2**i
    depths: tuple[int, ...] = (2, 2, 6, 2)  # blocks per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # heads per stage
    window_size: int = 7  # window side in tokens
    mlp_ratio: float = 4.0  # MLP hidden / C
    qkv_bias: bool = True
    patch_size: int = 4  # pixels per patch side (stride of stage 0)
    in_chans: int = 3  # input image channels
    drop_rate: float = 0.0  # dropout after patch embed, projections and MLP linears
    attn_drop_rate: float = 0.0  # dropout on attention probabilities
    drop_path_rate: float = 0.3  # stochastic depth of the last block; rises linearly from 0
    out_indices: tuple[int, ...] = (0, 1, 2, 3)  # stages whose (normalised) output is returned
    with_cp: bool = False  # gradient checkpointing per block (saves memory, costs a re-forward)
    fused_attn: bool | None = None  # F.scaled_dot_product_attention: True / False / None = on CUDA only

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        n = len(self.depths)
        if n == 0 or len(self.num_heads) != n:
            raise ValueError(f"SwinConfig: depths {self.depths} and num_heads {self.num_heads} need equal length >= 1")
        for i, h in enumerate(self.num_heads):
            if h < 1 or (self.embed_dim * 2 ** i) % h:
                raise ValueError(f"SwinConfig: stage {i} width {self.embed_dim * 2 ** i} "
                                 f"not divisible by num_heads {h}")
        if min(self.window_size, self.patch_size) < 1 or not self.out_indices or any(
                not 0 <= i < n for i in self.out_indices):
            raise ValueError(f"SwinConfig: need window_size, patch_size >= 1 and non-empty out_indices in [0, {n}); "
                             f"got {self.window_size}, {self.patch_size}, out_indices {self.out_indices}")


def swin_tiny(**overrides) -> SwinConfig:
    """Swin-T: C=96, depths 2-2-6-2, heads 3-6-12-24, window 7 (27.5 M params with norm0..3)."""
    return replace(SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24)), **overrides)


def swin_small(**overrides) -> SwinConfig:
    """Swin-S: C=96, depths 2-2-18-2, heads 3-6-12-24, window 7."""
    return replace(SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24)), **overrides)


def swin_base(**overrides) -> SwinConfig:
    """Swin-B: C=128, depths 2-2-18-2, heads 4-8-16-32, window 7 (``window_size=12`` for the 384 files)."""
    return replace(SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32)), **overrides)


def swin_large(**overrides) -> SwinConfig:
    """Swin-L: C=192, depths 2-2-18-2, heads 6-12-24-48, window 7 (194,998,164 params with norm0..3)."""
    return replace(SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48)), **overrides)


def swin_base_w12(**overrides) -> SwinConfig:
    """Swin-B with window 12 (``swin_base_patch4_window12_384*``)."""
    return swin_base(**{"window_size": 12, **overrides})


def swin_large_w12(**overrides) -> SwinConfig:
    """Swin-L with window 12 (``swin_large_patch4_window12_384_22k``)."""
    return swin_large(**{"window_size": 12, **overrides})


# ----------------------------------------------------------------------------- checkpoint converters

# (pattern, replacement) applied to the first matching rule; replacement None drops the key, a callable
# gets the match. Unmatched keys pass unchanged, so the loader reports them as unexpected.
_BLOCK = r"^layers\.(\d+)\.blocks\.(\d+)\."
_DROP_BUFFERS = [(r"\.relative_position_index$", None), (r"\.attn_mask$", None)]
_OFFICIAL_RULES = _DROP_BUFFERS
_TIMM_RULES = _DROP_BUFFERS + [
    (r"^head\.fc\.", "head."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample."),  # start -> end of stage
]
_MMSEG_RULES = _DROP_BUFFERS + [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.", r"layers.\1.blocks.\2.attn."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\.", r"layers.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d+)\.", r"layers.\1."),  # norm1/norm2 and downsample.{norm,reduction}
]
_MERGE_KEY = re.compile(r"^layers\.\d+\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$")


def unwrap_state_dict(ckpt: Mapping) -> dict:
    """The tensor state dict inside ``model``/``state_dict``/``model_state_dict`` nesting (iceseg, mmengine,
    the AutoICE seed), ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) key prefixes stripped.
    Raises ``ValueError`` if ``ckpt`` is not a mapping or an entry is not a tensor (naming it)."""
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"expected a state dict (mapping), got {type(ckpt).__name__}")
    while (inner := next((ckpt[k] for k in ("model", "state_dict", "model_state_dict")
                          if isinstance(ckpt.get(k), Mapping)), None)) is not None:
        ckpt = inner
    out = {}
    for key, value in ckpt.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        while key.startswith(("module.", "_orig_mod.")):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _rename(state_dict: dict, rules: list) -> dict:
    out = {}
    for key, value in state_dict.items():
        rule = next(((p, r) for p, r in rules if re.search(p, key)), None)
        if rule is None:
            out[key] = value  # unknown: kept, so the loader reports it
        elif rule[1] is not None:  # None: dropped
            out[re.sub(rule[0], rule[1], key, count=1)] = value
    return out


def _unfold_to_official(t: torch.Tensor) -> torch.Tensor:
    """Reorder the last dim (4C) from mmseg ``nn.Unfold`` order ``c*4 + (2*row + col)`` to Microsoft's
    blocks of C for sub-grids (0,0), (1,0), (0,1), (1,1) (spec §9.2)."""
    C4 = t.shape[-1]
    t = t.reshape(*t.shape[:-1], C4 // 4, 4).transpose(-1, -2)  # (..., 4, C): (0,0),(0,1),(1,0),(1,1)
    return t[..., [0, 2, 1, 3], :].reshape(*t.shape[:-2], C4)  # (..., 4C): Microsoft block order


def convert_official_swin(state_dict: dict) -> dict:
    """A Microsoft Swin checkpoint (spec §9.1, ``{'model': ...}`` or flat; also ours) as a new flat dict of this
    file's keys (same names; recomputable ``relative_position_index``/``attn_mask`` dropped; ``norm.*`` and
    ``head.*`` kept for :func:`load_pretrained` to report as allowed extras)."""
    return _rename(unwrap_state_dict(state_dict), _OFFICIAL_RULES)


def convert_timm_swin(state_dict: dict) -> dict:
    """A timm >= 0.9 Swin state dict (spec §9.3) in this file's keys: ``layers.{i}.downsample`` (start of stage
    i) becomes ``layers.{i-1}.downsample``, ``head.fc.*`` becomes ``head.*``. Raises ValueError if
    ``layers.0.downsample`` exists (timm < 0.9, the official layout: use :func:`convert_official_swin`)."""
    sd = unwrap_state_dict(state_dict)
    if any(k.startswith("layers.0.downsample.") for k in sd):
        raise ValueError("convert_timm_swin: layers.0.downsample present, so this is the official layout "
                         "(timm < 0.9); use convert_official_swin")
    return _rename(sd, _TIMM_RULES)


def convert_mmseg_swin(state_dict: dict) -> dict:
    """An mmseg ``SwinTransformer`` state dict (spec §9.2) as a new flat dict in this file's layout: only the
    ``backbone.*`` keys of a segmentor checkpoint (prefix stripped); ``w_msa``/``ffn.layers``/``projection``
    renamed; patch-merging ``reduction.weight`` and ``norm.*`` reordered from ``nn.Unfold`` to Microsoft
    order (:func:`_unfold_to_official`); ``norm0..3`` kept."""
    sd = unwrap_state_dict(state_dict)
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    sd = _rename(sd, _MMSEG_RULES)
    return {k: _unfold_to_official(v) if _MERGE_KEY.match(k) else v for k, v in sd.items()}


def convert_to_official_swin(state_dict: dict, img_size: int | None = 224) -> dict:
    """Our state dict as a new flat dict in the Microsoft layout (spec §9.1; inverse of
    :func:`convert_official_swin`): ``relative_position_index`` in every block and, for ``img_size`` (the
    official training resolution, 224 or 384; None: none), ``attn_mask`` in odd blocks whose stage map
    ``img_size / patch / 2**i`` exceeds the window; ``norm{i}`` left out, ``norm.*``/``head.*`` passed."""
    out = {k: v for k, v in unwrap_state_dict(state_dict).items() if not re.match(r"^norm\d+\.", k)}
    patch = out["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in out else 4
    for key in [k for k in out if k.endswith(".attn.relative_position_bias_table")]:
        i, j = (int(g) for g in re.match(_BLOCK, key).groups())
        ws = (math.isqrt(out[key].shape[0]) + 1) // 2
        out[key.replace("bias_table", "index")] = relative_position_index(ws)
        res = img_size // patch // 2 ** i if img_size else 0
        if j % 2 == 1 and res > ws:
            out[f"layers.{i}.blocks.{j}.attn_mask"] = shift_window_mask(res, res, ws, ws // 2)
    return out


def _detect_layout(sd: dict) -> str:
    keys = list(sd)
    if any(k.startswith(("backbone.", "stages.", "patch_embed.projection.")) for k in keys):
        return "mmseg"
    has0 = any(k.startswith("layers.0.downsample.") for k in keys)
    if any(k.startswith("head.fc.") for k in keys) or (not has0 and any(".downsample." in k for k in keys)):
        return "timm"
    return "official"


_CONVERTERS = {"official": convert_official_swin, "timm": convert_timm_swin, "mmseg": convert_mmseg_swin}
_ALLOW_MISSING = (r"^norm\d+\.",)  # output norms are not in classification checkpoints
_ALLOW_UNEXPECTED = (r"^norm\.", r"^head\.")  # classification head and its final LayerNorm


def load_pretrained(model: SwinTransformer, path_or_state_dict, layout: str = "auto",
                    allow_missing: tuple[str, ...] = _ALLOW_MISSING,
                    allow_unexpected: tuple[str, ...] = _ALLOW_UNEXPECTED) -> dict:
    """Load an official / timm / mmseg Swin checkpoint into ``model`` (in place), resizing bias tables whose
    window differs (:func:`resize_relative_position_bias_table`, e.g. window-12 files into window 7).

    Args:
        path_or_state_dict: ``.pth`` path (``torch.load(map_location="cpu", weights_only=True)``) or mapping; an
            iceseg ``train.py`` checkpoint (keys ``backbone.layers.*``) gives its backbone.
        layout: ``"official"``, ``"timm"``, ``"mmseg"`` or ``"auto"`` (detected from the key names).
        allow_missing / allow_unexpected: regexes of model / checkpoint keys that may be absent / extra.

    Returns:
        ``{"layout": str, "missing": [...], "unexpected": [...], "resized": [...]}`` (sorted keys).

    Raises:
        FileNotFoundError: the path does not exist. ValueError: unknown layout, shape mismatch, or a missing /
            unexpected key outside the allow-lists (the model is then not modified).
    """
    ckpt = path_or_state_dict
    if isinstance(ckpt, (str, os.PathLike)):
        if not os.path.isfile(ckpt):
            raise FileNotFoundError(f"load_pretrained: checkpoint file not found: {os.fspath(ckpt)}")
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = unwrap_state_dict(ckpt)
    if any(k.startswith("backbone.layers.") for k in sd):  # an iceseg segmentor (train.py): this file's keys
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    if layout == "auto":
        layout = _detect_layout(sd)
    if layout not in _CONVERTERS:
        raise ValueError(f"load_pretrained: layout must be one of {sorted(_CONVERTERS)} or 'auto', "
                         f"got {layout!r}")
    sd = _CONVERTERS[layout](sd)
    own = model.state_dict()
    resized = []
    for key, value in list(sd.items()):
        if key.endswith("relative_position_bias_table") and key in own and value.shape != own[key].shape:
            ws = (math.isqrt(own[key].shape[0]) + 1) // 2
            sd[key] = resize_relative_position_bias_table(value.float(), ws).to(value.dtype)
            resized.append(key)
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_missing = [k for k in missing if not any(re.search(p, k) for p in allow_missing)]
    bad_unexpected = [k for k in unexpected if not any(re.search(p, k) for p in allow_unexpected)]
    if bad or bad_missing or bad_unexpected:
        raise ValueError(f"load_pretrained ({layout} layout): shape mismatches {bad[:5]}, missing keys "
                         f"{bad_missing[:5]} ({len(bad_missing)}), unexpected keys {bad_unexpected[:5]} "
                         f"({len(bad_unexpected)})")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return {"layout": layout, "missing": missing, "unexpected": unexpected, "resized": sorted(resized)}
