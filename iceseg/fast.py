"""Fast paths applied to a built model from one place; the model files keep the reference math.

    model = iceseg.fast.optimize(build_model(cfg))   # what train.py and test.py do (train.fast_paths)
    model = iceseg.fast.fuse_conv_bn(model.eval())   # test.py and validation (eval.fuse_conv_bn)

Each fast path changes how a result is computed, not what: the optimized model has the same parameters,
buffers and state-dict keys, and ``tests/test_fast.py`` checks its outputs and gradients against the plain
model for every model family. A path is applied by swapping a module's class for a subclass whose
``forward`` (or one method of it) differs, so ``optimize`` works on any model built from ``iceseg.models``
and can be left out (``optimize(model, linear=False, ...)`` or not calling it at all).

- ``linear``: in inference (no gradient recorded), CPU fp32 ``nn.Linear`` layers of the Swin backbone run on
  oneDNN as a 1x1 convolution over a channels-last view when there are at least 256 tokens (the same
  products, summed in another order, ~1e-6 relative): oneDNN's fp32 forward outruns the sgemm behind
  ``F.linear`` on the CPUs measured, and fewer tokens do not pay for its per-call weight reorder. With
  gradients the conv's backward did not win on every CPU measured, so training keeps ``F.linear``; so do
  CUDA, other dtypes and ``torch.backends.mkldnn.enabled = False``. The conv is the custom op
  ``iceseg::onednn_linear``, which torch.compile calls as it is (Inductor's own product for it was slower), with
  ``F.linear``'s FLOPs registered for ``torch.utils.flop_counter``.
- ``attention``: Swin window attention adds the relative-position bias and the shift mask to the logits
  in place (mmseg's order), so no second ``(B*nW, nH, N, N)`` buffer exists. Under autocast the logits are
  first promoted to the bias's fp32, as the reference's out-of-place sum promotes them, so the softmax runs
  in fp32 there too.
- ``gather_windows``: Swin blocks run ``qkv`` and ``proj`` on the ``H*W`` tokens of the map instead of the
  ``Hp*Wp`` tokens padded to whole windows, and pad, shift and partition into windows with one gather (and
  reverse with one): a padded token is zero after the reference's padding, so its ``qkv`` row is the layer's
  bias, which the gather reads from one extra zero token's row; ``proj`` is per token, so projecting only the
  tokens kept after cropping gives the same map. Same products per kept token; fewer tokens through the two
  linears wherever a stage's size is not a multiple of the window (Swin-L at 512x512: 1225 -> 1024 tokens in
  stage 3, 441 -> 256 in stage 4). Not applied in training with ``proj_drop > 0`` (the dropout mask would be
  drawn over other tokens than the reference's).
- ``recompute_act``: in training, the GELU (and dropout, same RNG) of Swin MLPs at least ``recompute_min_dim``
  wide is recomputed in backward instead of being kept for fc2's weight gradient (torch selective activation
  checkpointing that keeps the matrix products); bit-identical gradients, one GELU more per such block. The
  wide stages hold most of the GELU outputs (Swin-L: 18 of 24 blocks at 768 channels) while their GELU is
  the cheapest next to their products. Not applied to a backbone with ``with_cp`` (whole blocks are
  recomputed there).
- ``fpn_bottleneck``: UPerHead's 3x3 conv over the concatenated levels runs as the sum of its per-level
  weight slices (a conv is linear in its input channels), so the ``(B, P*C, H, W)`` concat never exists.
- :func:`fuse_conv_bn` (inference): BatchNorm folded into the conv before it.
- :func:`autocast_weights` (inference under autocast): linear and conv weights stored once in the autocast
  dtype, which autocast would otherwise cast from fp32 on every call.
- :func:`keep_freed_memory` (process-wide, ``train.malloc="keep"``): glibc's malloc serves every block from its
  heap and keeps freed blocks for the next train step instead of unmapping them (no model change).

Measured effects are in README (Performance) and ``dev/benchmark.py``'s output, not here.
"""

import ctypes
import itertools
import math
import platform

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
from torch.utils.flop_counter import register_flop_formula

from iceseg.models.swin import Mlp, SwinTransformer, SwinTransformerBlock, WindowAttention
from iceseg.models.uper import ConvModule, UPerHead, resize

_MKLDNN_BUILT = torch.backends.mkldnn.is_available()  # a property of the build; read once (dynamo cannot trace it)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` ``(..., C_in)`` -> ``(..., C_out)``; without autograd, on CPU fp32 with >= 256 tokens, a
    oneDNN 1x1 conv.

    The conv runs over a channels-last ``(1, C_in, L, 1)`` view of the ``L`` tokens; the result equals
    ``F.linear`` to fp32 summation order. Any other case (gradients recorded included) is ``F.linear`` itself.
    """
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if grad or not (x.is_cpu and x.dtype == torch.float32 and x.numel() >= 256 * x.shape[-1] > 0
                    and torch.backends.mkldnn.enabled and _MKLDNN_BUILT):
        return F.linear(x, weight, bias)
    return _onednn_linear_op(x, weight, bias)


@torch.library.custom_op("iceseg::onednn_linear", mutates_args=())
def _onednn_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The oneDNN 1x1 conv of :func:`onednn_linear`, an opaque op for torch.compile (Inductor calls it as is
    instead of generating its own product, which ran slower than oneDNN's on the CPUs measured)."""
    lead = x.shape[:-1]
    x = x.reshape(1, -1, 1, x.shape[-1]).permute(0, 3, 1, 2)  # (1, C_in, L, 1): channels-last view
    x = F.conv2d(x, weight[:, :, None, None], bias)  # (1, C_out, L, 1) channels-last
    return x.permute(0, 2, 3, 1).reshape(*lead, weight.shape[0])  # (..., C_out)


@_onednn_linear_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])  # (..., C_out)


@register_flop_formula(torch.ops.iceseg.onednn_linear)
def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the op for ``torch.utils.flop_counter`` (which cannot see inside it): those of ``F.linear``."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters) computed by :func:`onednn_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias)


class InPlaceWindowAttention(WindowAttention):
    """:class:`iceseg.models.swin.WindowAttention` whose bias and mask are added to the logits in place."""

    def attention_logits(self, q, k, bias, mask):
        B_, nH, N, _ = q.shape
        nW = 1 if mask is None else mask.shape[0]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW, nH, N, N)
        if attn.dtype != bias.dtype:  # autocast: bf16/fp16 products, fp32 logits (the reference's type promotion)
            attn = attn.to(torch.promote_types(attn.dtype, bias.dtype))
        attn.view(-1, nW, nH, N, N).add_(bias)  # (B, nW, nH, N, N) view
        if mask is not None:
            attn.view(-1, nW, nH, N, N).add_(mask[:, None])  # (B, nW, nH, N, N) view
        return attn


_WINDOW_INDEX: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def window_token_index(H: int, W: int, ws: int, shift: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token gathers equal to :class:`iceseg.models.swin.SwinTransformerBlock`'s pad, cyclic shift and window
    partition of an ``H x W`` map, and their inverse. Cached per arguments.

    Returns:
        ``(idx, inv)``, int64: ``idx`` ``(Hp*Wp,)`` in window order (:func:`iceseg.models.swin.window_partition`'s)
        holds, for each windowed position, the row-major index ``r*W + c`` of the map token it reads after
        ``roll(pad(x), -shift)``, or ``H*W`` for a padded position; ``inv`` ``(H*W,)`` the windowed position of
        each map token (``idx[inv] == arange(H*W)``).
    """
    key = (H, W, ws, shift, str(device))
    if key not in _WINDOW_INDEX:
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        r = (torch.arange(Hp) + shift) % Hp  # padded-map row that the shifted map's row shows
        c = (torch.arange(Wp) + shift) % Wp
        grid = torch.where((r[:, None] < H) & (c[None, :] < W), r[:, None] * W + c[None, :], H * W)  # (Hp, Wp)
        idx = grid.view(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3).reshape(-1)  # (Hp*Wp,) window order
        inv = torch.empty(H * W, dtype=torch.long)
        kept = idx < H * W
        inv[idx[kept]] = torch.arange(idx.numel())[kept]
        _WINDOW_INDEX[key] = idx.to(device), inv.to(device)
    return _WINDOW_INDEX[key]


class GatheredWindowBlock(SwinTransformerBlock):
    """:class:`iceseg.models.swin.SwinTransformerBlock` with ``qkv``/``proj`` on the unpadded tokens and the
    pad, shift and window partition (and reverse) as gathers (:func:`window_token_index`)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and self.attn.proj_drop.p > 0:
            return super().forward(x, attn_mask)
        x = x + self.drop_path(self.window_attention(x, attn_mask if self.shift_size else None))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def window_attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, H, W, C)`` -> the (shifted-)window attention branch ``(B, H, W, C)`` (before drop path)."""
        B, H, W, C = x.shape
        ws, attn = self.window_size, self.attn
        idx, inv = window_token_index(H, W, ws, self.shift_size, x.device)
        # one name for all steps, so the padded tokens, the unpadded qkv and the windowed qkv are freed in turn
        x = attn.qkv(F.pad(self.norm1(x).reshape(B, H * W, C), (0, 0, 0, 1)))  # (B, H*W+1, 3C): last token 0
        x = x.index_select(1, idx).view(-1, ws * ws, 3 * C)  # (B*nW, N, 3C); padded rows = the qkv bias
        x = attn.attend(x, mask).view(B, -1, C).index_select(1, inv)  # (B, H*W, C) map order
        return attn.proj_drop(attn.proj(x)).view(B, H, W, C)


def _save_only_products(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """Selective-checkpoint policy: keep matrix-product outputs, recompute the rest (GELU, dropout, views)."""
    products = (torch.ops.aten.convolution.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.default)
    return CheckpointPolicy.MUST_SAVE if func in products else CheckpointPolicy.PREFER_RECOMPUTE


def _recompute_all_but_products():
    """``context_fn`` of ``torch.utils.checkpoint`` (a module-level function: torch.compile traces no lambda)."""
    return create_selective_checkpoint_contexts(_save_only_products)


class RecomputeMlp(Mlp):
    """:class:`iceseg.models.swin.Mlp` that, in training, recomputes its GELU/dropout in backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(super().forward, x, use_reentrant=False,
                                                     context_fn=_recompute_all_but_products)
        return super().forward(x)


class _SlicedBottleneck:
    """Mixin for :class:`iceseg.models.uper.UPerHead` and subclasses: the level fusion conv as a sum of slices."""

    def fuse_levels(self, outs: list, size) -> torch.Tensor:
        fb = self.fpn_bottleneck
        if not isinstance(fb, ConvModule) or size[0] * size[1] <= 1:
            return super().fuse_levels(outs, size)
        acc = None
        for w, o in zip(fb.conv.weight.split(self.channels, dim=1), outs, strict=True):
            b = fb.conv.bias if acc is None else None  # a bias exists once BN is folded in (fuse_conv_bn)
            y = F.conv2d(resize(o, size), w, b, padding=fb.conv.padding)  # (B, channels, H_0, W_0)
            acc = y if acc is None else acc.add_(y)
        return fb.act(fb.bn(acc))


_SUBCLASSES: dict[type, type] = {}


def _sliced(cls: type) -> type:
    """The :class:`_SlicedBottleneck` subclass of a UPerHead class (one per class, cached)."""
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Sliced{cls.__name__}", (_SlicedBottleneck, cls), {})
    return _SUBCLASSES[cls]


def optimize(model: nn.Module, linear: bool = True, attention: bool = True, gather_windows: bool = True,
             recompute_act: bool = True, fpn_bottleneck: bool = True, recompute_min_dim: int = 768) -> nn.Module:
    """Apply the fast paths of this module to ``model`` in place (class swaps; parameters untouched).

    Args:
        model: any module built from ``iceseg.models`` (or containing such modules).
        linear, attention, gather_windows, recompute_act, fpn_bottleneck: which paths to apply (module
            docstring).
        recompute_min_dim: ``recompute_act`` applies to MLPs whose input has at least this many channels
            (0: every MLP).

    Returns:
        ``model``; a second call changes nothing.
    """
    for swin in [m for m in model.modules() if isinstance(m, SwinTransformer)]:
        for m in swin.modules():
            if linear and type(m) is nn.Linear:
                m.__class__ = OneDNNLinear
            elif attention and type(m) is WindowAttention:
                m.__class__ = InPlaceWindowAttention
            elif gather_windows and type(m) is SwinTransformerBlock:
                m.__class__ = GatheredWindowBlock
            elif (recompute_act and type(m) is Mlp and not swin.config.with_cp
                  and m.fc1.in_features >= recompute_min_dim):
                m.__class__ = RecomputeMlp
    if fpn_bottleneck:
        for m in model.modules():
            if isinstance(m, UPerHead) and not isinstance(m, _SlicedBottleneck):
                m.__class__ = _sliced(type(m))
    return model


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold each eval-mode ``BatchNorm2d`` into the ``Conv2d`` registered right before it (inference only).

    ``BN(conv(x)) = gamma * (W*x + b - mean) / sqrt(var + eps) + beta`` is one conv with weight ``W * s`` and bias
    ``(b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)`` per output channel
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``); the BN becomes ``nn.Identity``. Outputs agree to fp32
    rounding (~1e-6 relative); each pair then writes one ``(B, C, H, W)`` map instead of two.

    A pair is a ``Conv2d`` followed, in its parent's registration order, by a ``BatchNorm2d`` of as many channels:
    the torchvision / mmcv / smp layout in which that BN normalises that conv's output (ResNet blocks and stems,
    ``ConvModule``, smp's ``Conv2dReLU``, ASPP branches). Every model of this package follows it;
    ``tests/test_losses_inference.py`` checks fused against unfused outputs for each model family. The state
    dict loses the ``bn`` keys, so fuse after loading a checkpoint and do not train or save the result.

    Args:
        model: a module in eval mode, modified in place.

    Returns:
        ``model``.

    Raises:
        ValueError: if ``model`` or any submodule is in training mode (batch statistics cannot be folded).
    """
    if any(m.training for m in model.modules()):
        raise ValueError("fuse_conv_bn: call model.eval() first; BatchNorm in training mode uses batch statistics")
    for parent in list(model.modules()):
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = parent._modules[a], parent._modules[b]
            if (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    return model


def autocast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store the weights and biases of ``nn.Linear`` and ``nn.Conv2d`` layers in ``dtype`` (inference only).

    Under ``torch.autocast(device, dtype)`` a linear or conv casts its fp32 weight and bias to ``dtype`` on every
    call (``torch.autocast``'s lower-precision op list); casting them once gives the same products with none of
    those per-call copies, and half the weight memory. Outputs are bit-identical to the fp32-weight model under
    the same autocast (``tests/test_fast.py``), but the model then runs only under that autocast: without it the
    layers meet fp32 inputs and raise. Not applied: subclasses (``nn.MultiheadAttention``'s ``out_proj``), norm
    layers and other parameters (autocast keeps them fp32). K-Net's ``conv_seg`` weight, also its initial kernels,
    meets only linear layers there, which autocast casts anyway.

    Args:
        model: an inference model (eval mode), modified in place.
        dtype: the autocast dtype it will run under, ``torch.bfloat16`` or ``torch.float16``.

    Returns:
        ``model``.

    Raises:
        ValueError: if ``dtype`` is not a 16-bit float type or the model is in training mode.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_weights: dtype must be torch.bfloat16 or torch.float16, got {dtype}")
    if model.training:
        raise ValueError("autocast_weights: inference only; call model.eval() first")
    for m in model.modules():
        if type(m) in (nn.Linear, OneDNNLinear, nn.Conv2d):
            for p in (m.weight, m.bias):
                if p is not None and p.is_floating_point():
                    p.data = p.data.to(dtype)
    return model


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap and never hand freed heap memory back (process-wide).

    By default glibc maps each block above its mmap threshold (which it raises, up to a cap, as such blocks are
    freed) on its own and unmaps it when freed, and trims the heap's free top, so each train step's large
    activations and gradients arrive in fresh pages that the kernel must map and zero page by page (minor page
    faults) on first touch, every step.
    ``mallopt(M_MMAP_MAX, 0)`` serves every block from the heap and ``mallopt(M_TRIM_THRESHOLD, -1)`` keeps the
    heap's free memory (``man 3 mallopt``), so a step reuses the pages the previous step freed. The same as the
    environment ``MALLOC_MMAP_MAX_=0`` plus an unbounded ``MALLOC_TRIM_THRESHOLD_``. Tensors and results are
    unchanged; the resident memory stays at the process's peak between steps instead of falling back.
    ``malloc_trim(0)`` still returns free heap pages on request. Call it once, early (``train.py`` does, with
    ``train.malloc="keep"``); blocks mapped before the call are unmapped when freed, as before.

    Returns:
        True if both settings were applied; False (nothing changed) where the C library is not glibc
        (macOS, Windows, musl) or ``mallopt`` refused.
    """
    if platform.libc_ver()[0] != "glibc":  # ("", "") on macOS and Windows
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc <malloc.h>
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, -1) == 1
