"""Multi-task DeepLabV3 for AutoICE sea-ice charting: truncated ResNet, ASPP, one head per chart.

The AutoICE seed model (geohai/autoice-challenge-geospatial-encoding ``models.py::ResNetASPP``,
spec ``autoice.md`` §2): a torchvision ResNet-152 with a fresh 18-band stem, cut after ``layer3``
(1024 channels, output stride 16, no dilation), feeding one DeepLabV3 head per ice chart (SIC,
SOD, FLOE). Each head is torchvision's ``ASPP(1024, [12, 24, 36], 32)`` whose global pooling
branch is replaced by a local ``AvgPool2d(2, stride=2)``, then Conv3x3 + BN + ReLU and a 1x1
conv to the task's outputs, bilinearly upsampled to the input size.

Papers: "Rethinking Atrous Convolution for Semantic Image Segmentation" (DeepLabV3), Chen et al.,
https://arxiv.org/abs/1706.05587; "Deep Residual Learning for Image Recognition", He et al.,
https://arxiv.org/abs/1512.03385; the seed's paper: RSASE 2025, doi 10.1016/j.rsase.2025.101538.

Structure follows torchvision 0.13-0.28 ``models/resnet.py`` (``Bottleneck``, "v1.5": stride on
the 3x3 conv) and ``models/segmentation/deeplabv3.py`` (``ASPP``, ``ASPPConv``, ``ASPPPooling``),
and the seed's ``models.py @ dcb9af0``. Written from those facts (BSD-3 torchvision, seed without
a licence file); no code was copied. Parameter names are torchvision's, so:

- a torchvision ``resnet152`` state dict (``resnet152-394f9c45.pth``) loads into ``encoder`` via
  :func:`convert_torchvision_resnet` (``layer4``/``fc`` dropped, the stem dropped when its band
  count differs: the seed replaces it by a freshly initialised conv);
- a torchvision ``ASPP`` state dict loads into :class:`ASPP` unchanged (golden test:
  ``tests/test_deeplab.py``);
- a seed checkpoint (``encoder.*``, ``{sic,sod,floe}_decoder.*``) loads through
  :func:`convert_seed_checkpoint` (head prefixes renamed to ``heads.{SIC,SOD,FLOE}.*``).

Intentional deviations from the seed:
    - tasks and their output counts come from the constructor (seed: fixed SIC 1 / SOD 7 / FLOE 8);
      ``pool="global"`` restores torchvision's ``AdaptiveAvgPool2d(1)``; each head owns its pooling
      module (the seed shares one parameter-free ``AvgPool2d`` instance between the three heads);
    - the SIC regression map is returned as ``(B, 1, H, W)``, not squeezed to ``(B, H, W)``;
    - losses are computed by an injected ``criterion`` module (``forward(img, label)``), so the
      model is also a segmentor in iceseg's train.py sense (see iceseg/segmentor.py);
    - the ResNet is written out here instead of importing torchvision, and ``layers`` can shrink
      it (debug configs); random init follows torchvision's ResNet (Kaiming fan-out) except the
      stem, which keeps PyTorch's default ``Conv2d`` init like the seed's replacement conv.

Output-size rule: the trunk gives ``h = ceil(H / 16)``; the 2x2 pooling branch gives
``floor(h / 2)`` and is upsampled back to ``h``, so with even ``h`` (inputs a multiple of 32) the
pooling branch is shift-equivariant under even feature shifts, and an input crop's interior
matches the full input's away from the receptive field of its border (tested).

Dimension legend: ``B`` batch, ``C`` channels, ``C_in`` input bands, ``H, W`` input size,
``h, w`` feature size (``ceil(H / 16)``), ``K`` outputs of one task, ``T`` tasks.
"""

import os
import re
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- backbone


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, residual add.

    Args:
        in_channels: input channels.
        channels: bottleneck width; the block outputs ``4 * channels``.
        stride: stride of the 3x3 conv (and of the projection shortcut).
        downsample: projection ``Sequential(Conv1x1, BN)`` when shape changes, else None.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, 4 * channels, ceil(H / stride), ceil(W / stride))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))  # shortcut computed last and added in place: one map fewer alive
        return self.relu(out.add_(x if self.downsample is None else self.downsample(x)))


class ResNetTrunk(nn.Module):
    """A torchvision-named ResNet (bottleneck blocks) truncated after ``layer3``.

    Keeps ``conv1, bn1, relu, maxpool, layer1..layer3`` (torchvision ``IntermediateLayerGetter``
    with ``return_layers={"layer3": "out"}``); ``layer4``, ``avgpool`` and ``fc`` do not exist.

    Args:
        in_channels: input bands ``C_in`` of the stem conv (18 for AutoICE).
        layers: bottleneck blocks in layer1..3; ResNet-152 ``(3, 8, 36)``, ResNet-50/101 ``(3, 4, 6)``
            / ``(3, 4, 23)``.
    """

    out_channels = 1024

    def __init__(self, in_channels: int = 3, layers=(3, 8, 36)):
        super().__init__()
        if len(layers) != 3 or min(layers) < 1:
            raise ValueError(f"ResNetTrunk: layers must be 3 positive block counts, got {layers}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._in = 64
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        for m in self.modules():  # torchvision ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.conv1.reset_parameters()  # the seed's stem is a fresh nn.Conv2d (PyTorch default init)

    def _make_layer(self, channels: int, blocks: int, stride: int) -> nn.Sequential:
        out = channels * Bottleneck.expansion
        down = None
        if stride != 1 or self._in != out:
            down = nn.Sequential(nn.Conv2d(self._in, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        mods = [Bottleneck(self._in, channels, stride, down)]
        self._in = out
        mods += [Bottleneck(out, channels) for _ in range(blocks - 1)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, 1024, ceil(H / 16), ceil(W / 16))`` layer3 features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


# ----------------------------------------------------------------------------- ASPP and heads


class ASPPPooling(nn.Sequential):
    """ASPP image-pooling branch: pool -> Conv1x1 -> BN -> ReLU -> bilinear upsample to the input.

    Args:
        in_channels, out_channels: conv channels.
        pool: ``"global"`` (``AdaptiveAvgPool2d(1)``, torchvision) or ``"avg2"``
            (``AvgPool2d(2, stride=2)``, the AutoICE seed: a local average, so the branch does not
            depend on the input extent).
    """

    def __init__(self, in_channels: int, out_channels: int, pool: str = "global"):
        if pool not in ("global", "avg2"):
            raise ValueError(f"ASPP pool must be 'global' or 'avg2', not {pool!r}")
        pooling = nn.AdaptiveAvgPool2d(1) if pool == "global" else nn.AvgPool2d(2, stride=2)
        super().__init__(pooling, nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, out_channels, h, w)``.

        Raises:
            ValueError: ``avg2`` pooling on a feature map smaller than 2x2 (input under 17 px).
        """
        B, C, h, w = x.shape
        if self.pool == "avg2" and (h < 2 or w < 2):
            raise ValueError(f"ASPP avg2 pooling needs a feature map of at least 2x2, got {h}x{w} "
                             f"(inputs must be at least 17 px at output stride 16)")
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with torchvision's parameter names (``convs.*``, ``project.*``).

    Five parallel branches of ``out_channels`` each: Conv1x1, three dilated Conv3x3 (rates
    ``atrous_rates``, padding = dilation), and :class:`ASPPPooling`; each with BN + ReLU. They are
    concatenated and projected by Conv1x1 -> BN -> ReLU -> Dropout(``dropout``).

    Args:
        in_channels: input channels (1024 for the AutoICE trunk).
        atrous_rates: dilation rates of the 3x3 branches (torchvision / seed ``(12, 24, 36)``).
        out_channels: channels of every branch and of the output (seed 32, torchvision 256).
        pool: pooling branch, see :class:`ASPPPooling`.
        dropout: dropout probability after the projection (0.5).
    """

    def __init__(self, in_channels: int, atrous_rates=(12, 24, 36), out_channels: int = 256,
                 pool: str = "global", dropout: float = 0.5):
        super().__init__()
        branches = [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU())]
        for r in atrous_rates:
            branches.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU()))
        branches.append(ASPPPooling(in_channels, out_channels, pool))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, h, w)`` -> ``(B, out_channels, h, w)``."""
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))  # concat: (B, 5*C, h, w)


class ChartHead(nn.Sequential):
    """One chart's decoder: ``ASPP -> Conv3x3 -> BN -> ReLU -> Conv1x1(K, bias)`` (seed ``*_decoder``).

    Indices match torchvision's ``DeepLabHead`` and the seed's ``nn.Sequential`` (``0`` ASPP, ``1``
    conv, ``2`` BN, ``4`` classifier), so the keys are ``0.convs.*``, ``1.weight``, ``2.*``, ``4.*``.

    Args:
        in_channels: trunk channels (1024).
        num_outputs: ``K`` (1 = regression, e.g. SIC in the seed; else class logits).
        atrous_rates, aspp_channels, pool, dropout: see :class:`ASPP` (``aspp_channels`` = its
            ``out_channels``, seed 32).
    """

    def __init__(self, in_channels: int, num_outputs: int, atrous_rates=(12, 24, 36), aspp_channels: int = 32,
                 pool: str = "avg2", dropout: float = 0.5):
        super().__init__(ASPP(in_channels, atrous_rates, aspp_channels, pool, dropout),
                         nn.Conv2d(aspp_channels, aspp_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(aspp_channels), nn.ReLU(), nn.Conv2d(aspp_channels, num_outputs, 1))


# ----------------------------------------------------------------------------- main model


class MultiTaskDeepLab(nn.Module):
    """Shared truncated-ResNet encoder with one :class:`ChartHead` per task (the AutoICE seed).

    Also a segmentor in iceseg's sense (``is_segmentor``: build_model returns it unwrapped):
    ``forward(img, label)`` returns the ``criterion``'s losses.

    Args:
        in_channels: input bands ``C_in`` (18 for the seed's AutoICE channels).
        tasks: ``{task: K}`` output channels per head, in output order; seed
            ``{"SIC": 1, "SOD": 7, "FLOE": 8}`` (SIC as regression; ``"SIC": 11`` for classes).
        layers: trunk blocks (ResNet-152 ``(3, 8, 36)``).
        atrous_rates, aspp_channels, pool, dropout: head settings (seed ``(12, 24, 36)``, 32,
            ``"avg2"``, 0.5).
        criterion: module ``(logits: {task: (B, K, H, W)}, label: {task: (B, H, W)}) -> {name: loss}``
            used when a label is passed to :meth:`forward`; None for inference-only models.
    """

    is_segmentor = True

    def __init__(self, in_channels: int = 18, tasks: Mapping | None = None, layers=(3, 8, 36),
                 atrous_rates=(12, 24, 36), aspp_channels: int = 32, pool: str = "avg2", dropout: float = 0.5,
                 criterion: nn.Module | None = None):
        super().__init__()
        tasks = dict(tasks or {"SIC": 1, "SOD": 7, "FLOE": 8})
        if not tasks or any(int(k) < 1 for k in tasks.values()):
            raise ValueError(f"MultiTaskDeepLab: tasks must map names to output counts >= 1, got {tasks}")
        self.tasks = {t: int(k) for t, k in tasks.items()}
        self.encoder = ResNetTrunk(in_channels, tuple(layers))
        self.heads = nn.ModuleDict({t: ChartHead(ResNetTrunk.out_channels, k, tuple(atrous_rates), aspp_channels,
                                                 pool, dropout) for t, k in self.tasks.items()})
        self.criterion = criterion

    def logits(self, img: torch.Tensor) -> dict:
        """``(B, C_in, H, W)`` float -> ``{task: (B, K, H, W)}`` logits / regression values.

        Raises:
            ValueError: wrong band count, or an input under 17 px with ``avg2`` pooling.
        """
        B, C, H, W = img.shape
        if C != self.encoder.conv1.in_channels:
            raise ValueError(f"MultiTaskDeepLab expects {self.encoder.conv1.in_channels} input bands, got {C}")
        feats = self.encoder(img)  # (B, 1024, h, w)
        return {t: F.interpolate(head(feats), size=(H, W), mode="bilinear", align_corners=False)
                for t, head in self.heads.items()}

    def forward(self, img: torch.Tensor, label: Mapping | None = None) -> dict:
        """Logits ``{task: (B, K, H, W)}`` without a label; the criterion's loss dict with one.

        Args:
            img: ``(B, C_in, H, W)`` float32.
            label: ``{task: (B, H, W)}`` (int64 classes / SIC values, 255 = ignore) or None.

        Raises:
            ValueError: a label is given but the model has no criterion.
        """
        out = self.logits(img)
        if label is None:
            return out
        if self.criterion is None:
            raise ValueError("MultiTaskDeepLab.forward got a label but was built without a criterion")
        return self.criterion(out, label)


def autoice_deeplab(in_channels: int = 18, tasks: Mapping | None = None, **kwargs) -> MultiTaskDeepLab:
    """The seed configuration: ResNet-152 trunk, ASPP 1024 -> 32 at rates 12/24/36, avg2 pooling."""
    return MultiTaskDeepLab(in_channels, tasks or {"SIC": 1, "SOD": 7, "FLOE": 8}, **kwargs)


# ----------------------------------------------------------------------------- converters

_TV_KEY = re.compile(r"^(conv1|bn1|layer[1-4])\.")
_SEED_HEAD = re.compile(r"^(sic|sod|floe)_decoder\.")


# Copied from iceseg.models.swin.unwrap_state_dict
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


def convert_torchvision_resnet(state_dict: Mapping, in_channels: int) -> dict:
    """Map a torchvision ResNet state dict to :class:`MultiTaskDeepLab` ``encoder.*`` keys.

    Key table: ``conv1/bn1/layer1..3.*`` -> ``encoder.*``; ``layer4.*``, ``fc.*`` -> dropped (the
    trunk ends at layer3); ``conv1.weight`` -> dropped when its band count is not ``in_channels``
    (the seed replaces the stem by a fresh conv). Other keys pass through, so the loader reports
    them as unexpected.

    Args:
        state_dict: torchvision layout (``resnet152-394f9c45.pth``), nesting/prefixes allowed.
        in_channels: input bands of the target model.

    Returns:
        ``{key: tensor}`` with ``encoder.`` keys.
    """
    out = {}
    for k, v in unwrap_state_dict(state_dict).items():
        if k.startswith(("layer4.", "fc.")) or (k == "conv1.weight" and v.shape[1] != in_channels):
            continue
        out["encoder." + k if _TV_KEY.match(k) else k] = v
    return out


def convert_seed_checkpoint(state_dict: Mapping) -> dict:
    """Map a seed ``ResNetASPP`` checkpoint (``best_score_model.ckpt``) to our keys.

    ``encoder.*`` is unchanged; ``sic_decoder.`` / ``sod_decoder.`` / ``floe_decoder.`` become
    ``heads.SIC.`` / ``heads.SOD.`` / ``heads.FLOE.`` (``model_state_dict`` nesting is removed).
    """
    return {_SEED_HEAD.sub(lambda m: f"heads.{m.group(1).upper()}.", k): v for k, v in unwrap_state_dict(state_dict).items()}


def load_pretrained(model: MultiTaskDeepLab, path_or_state_dict) -> dict:
    """Load torchvision ResNet weights, a seed checkpoint or an iceseg state dict into ``model``.

    Layout from the keys: ``*_decoder.*`` -> seed; ``heads.*`` -> iceseg (strict); ``conv1``/
    ``layer*`` without ``encoder.`` -> torchvision ResNet, for which ``heads.*`` and
    ``encoder.conv1.weight`` (replaced stem) may be missing. ``*.num_batches_tracked`` may always
    be missing (old torchvision files lack it).

    Args:
        model: target (modified in place only when the checks pass).
        path_or_state_dict: file path (``torch.load(weights_only=True)``) or a mapping.

    Returns:
        ``{"layout": str, "missing": [...], "unexpected": []}``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unknown layout, shape mismatch, unexpected keys or non-allowed missing keys
            (the message lists them).
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        if not os.path.isfile(path_or_state_dict):
            raise FileNotFoundError(f"load_pretrained: checkpoint not found: {path_or_state_dict}")
        source, raw = str(path_or_state_dict), torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        source, raw = "<state dict>", path_or_state_dict
    sd = unwrap_state_dict(raw)
    if any(_SEED_HEAD.match(k) for k in sd):
        layout, allowed, sd = "seed", (), convert_seed_checkpoint(sd)
    elif any(k.startswith(("heads.", "encoder.")) for k in sd):
        layout, allowed = "iceseg", ()
    elif any(_TV_KEY.match(k) for k in sd):
        layout, allowed = "torchvision", ("heads.", "encoder.conv1.weight")
        sd = convert_torchvision_resnet(sd, model.encoder.conv1.in_channels)
    else:
        raise ValueError(f"load_pretrained: {source} is not a torchvision ResNet, seed or iceseg state dict "
                         f"(first keys: {list(sd)[:3]})")
    own = model.state_dict()
    own = {k: v for k, v in own.items() if not k.startswith("criterion.")}
    bad_shape = [f"{k}: {tuple(v.shape)} vs ours {tuple(own[k].shape)}" for k, v in sd.items()
                 if k in own and v.shape != own[k].shape]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_missing = [k for k in missing if not k.startswith(allowed) and not k.endswith(".num_batches_tracked")]
    if bad_shape or unexpected or bad_missing:
        raise ValueError(f"load_pretrained: {source} ({layout} layout) does not fit: shape mismatches "
                         f"{bad_shape[:5]}, unexpected keys {unexpected[:8]} ({len(unexpected)}), missing keys "
                         f"{bad_missing[:8]} ({len(bad_missing)})")
    model.load_state_dict(sd, strict=False)
    return {"layout": layout, "missing": missing, "unexpected": unexpected}
