"""U-Net++ with a ResNet-34 encoder, state-dict compatible with segmentation_models_pytorch.

The nested U-Net of the glacier seed (5 Landsat-8 bands in, 1 logit map out): a ResNet-34 encoder whose
five feature maps feed a grid of dense decoder nodes ``x_{d}_{j}``; the last full-resolution node feeds the
segmentation head.

Papers: "UNet++: A Nested U-Net Architecture for Medical Image Segmentation", Zhou et al., DLMIA 2018,
https://arxiv.org/abs/1807.10165; "Deep Residual Learning for Image Recognition", He et al.,
https://arxiv.org/abs/1512.03385. Structure of qubvel/segmentation_models.pytorch v0.6.0 ``UnetPlusPlus``
(``decoders/unetplusplus/{model,decoder}.py``, ``encoders/resnet.py``, ``encoders/_utils.py``), written from
the facts in spec ``unetpp_glacier_and_lossd.md`` (A4-A6), no code copied. State-dict keys are smp's (350 for
ResNet-34), so smp files load strictly, and the numerics match smp exactly (``tests/test_unetpp.py``).

Deviations from smp: the ResNet-34 encoder is written out (torchvision names, no ``fc``/``avgpool``; depth
5, output stride 32 only); decoder norm is always BatchNorm, no ``activation`` (logits) and no auxiliary
head; a size not divisible by 32 raises ``ValueError``; the first-conv adaptation for ``in_channels != 3``
is a tensor function applied by the converter (smp's rule; without weights ``conv1`` keeps PyTorch's init).

Dimensions: ``B`` batch, ``C`` channels, ``C_in`` input bands, ``H, W`` input size (multiples of 32),
``K`` classes (``num_classes``).
"""

import math
import os
import re
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- functions


def patch_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a pretrained first-conv weight to a different number of input channels.

    smp's rule (``encoders/_utils.py::patch_first_conv``, used since v0.2.0), with ``c`` the
    source channels (3 for ImageNet): ``n == 1`` sums the filters over the input channels;
    ``n >= 2`` copies channel ``i mod c`` into channel ``i`` and scales the whole tensor by ``c / n``
    (so a constant image gives the same response). For ``n = 5`` and an RGB source the new channels
    are R, G, B, R, G, each times 0.6. ``c != 3`` is an extension (smp only patches 3-channel convs).

    Args:
        weight: float tensor ``(C_out, c, kh, kw)``, e.g. ``(64, 3, 7, 7)`` for ResNet ``conv1``.
        in_channels: wanted number of input channels ``n >= 1``.

    Returns:
        New tensor ``(C_out, n, kh, kw)`` of the same dtype (``weight`` itself when ``n == c``).

    Raises:
        ValueError: if ``weight`` is not 4-D or ``in_channels < 1``.
    """
    if weight.dim() != 4:
        raise ValueError(f"patch_first_conv: weight must be 4-D (C_out, c, kh, kw), got {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"patch_first_conv: in_channels must be >= 1, got {in_channels}")
    src = weight.shape[1]
    if in_channels == src:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)  # (C_out, 1, kh, kw)
    idx = torch.arange(in_channels) % src  # source channel feeding each new channel
    return weight[:, idx] * (src / in_channels)  # (C_out, n, kh, kw)


# ----------------------------------------------------------------------------- leaf modules


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN pairs plus identity (or 1x1-conv) shortcut.

    Parameter names follow torchvision (``conv1``, ``bn1``, ``conv2``, ``bn2``,
    ``downsample.0`` conv, ``downsample.1`` BN).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv (and of the shortcut conv); 1 or 2.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H / stride, W / stride)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))  # shortcut computed last and added in place: one map fewer alive
        return self.relu(out.add_(x if self.downsample is None else self.downsample(x)))


class ResNetEncoder(nn.Module):
    """ResNet trunk returning the input plus five feature maps (strides 1, 2, 4, 8, 16, 32).

    Parameter names are exactly torchvision's ``resnet34`` names minus ``fc``; initialisation
    follows torchvision (convs kaiming-normal fan-out, BN weight 1 / bias 0), except that
    ``conv1`` keeps PyTorch's default init when ``in_channels != 3`` (smp re-creates it).

    Args:
        in_channels: number of input bands ``C_in``.
        layers: number of ``BasicBlock`` per stage; ``(3, 4, 6, 3)`` is ResNet-34.

    Raises:
        ValueError: if ``layers`` is not four positive integers.
    """

    def __init__(self, in_channels: int = 3, layers: tuple = (3, 4, 6, 3)):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"ResNetEncoder: layers must be 4 positive block counts, got {layers}")
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        prev = 64
        for i, (width, n_blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(prev, width, stride)] + [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            prev = width
        self.out_channels = [in_channels, 64, *widths]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if in_channels != 3:
            self.conv1.reset_parameters()

    def forward(self, x: torch.Tensor) -> list:
        """Return ``[x, stem, layer1, layer2, layer3, layer4]``.

        Shapes: ``(B, C_in, H, W)``, ``(B, 64, H/2, W/2)``, ``(B, 64, H/4, W/4)``,
        ``(B, 128, H/8, W/8)``, ``(B, 256, H/16, W/16)``, ``(B, 512, H/32, W/32)``.
        """
        stem = self.relu(self.bn1(self.conv1(x)))
        c1 = self.layer1(self.maxpool(stem))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [x, stem, c1, c2, c3, c4]


class Conv2dBNReLU(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU; indices 0/1/2 give smp's ``conv1.0``/``conv1.1`` keys."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze-and-excitation: ``x * cSE(x) + x * sSE(x)``.

    Roy, Navab, Wachinger, "Concurrent Spatial and Channel Squeeze & Excitation in Fully
    Convolutional Networks", MICCAI 2018, https://arxiv.org/abs/1803.02579. Sub-module indices give
    smp's keys (``cSE.1``, ``cSE.3``, ``sSE.0``).

    Args:
        channels: ``C``.
        reduction: channel reduction of the cSE bottleneck (``C // reduction`` hidden channels).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // reduction
        self.cSE = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.sSE = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``; gates in (0, 1) from ``(B, C, 1, 1)`` and ``(B, 1, H, W)``."""
        return x * self.cSE(x) + x * self.sSE(x)


class Attention(nn.Module):
    """Optional attention wrapper; the ``attention`` attribute reproduces smp's key prefix.

    Args:
        attention_type: ``None`` (identity, no parameters) or ``"scse"``.
        channels: channels ``C`` of the tensor it is applied to.
    """

    def __init__(self, attention_type, channels: int):
        super().__init__()
        self.attention = nn.Identity() if attention_type is None else SCSE(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return self.attention(x)


class DecoderBlock(nn.Module):
    """One U-Net++ node: upsample x2, concat ``[upsampled, skip]``, two conv-BN-ReLU.

    Args:
        in_channels: channels of the main (coarser) input.
        skip_channels: total channels of the concatenated skips (0 for the last node).
        out_channels: output channels.
        attention_type: ``None`` or ``"scse"`` (applied after the concat and after ``conv2``).
        interpolation: ``F.interpolate`` mode of the x2 upsampling (smp default ``"nearest"``).
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        attention_type=None,
        interpolation: str = "nearest",
    ):
        super().__init__()
        self.interpolation = interpolation
        self.conv1 = Conv2dBNReLU(in_channels + skip_channels, out_channels)
        self.attention1 = Attention(attention_type, in_channels + skip_channels)
        self.conv2 = Conv2dBNReLU(out_channels, out_channels)
        self.attention2 = Attention(attention_type, out_channels)

    def forward(self, x: torch.Tensor, skip=None) -> torch.Tensor:
        """``x (B, C_in, h, w)``, ``skip (B, C_skip, 2h, 2w)`` or ``None`` -> ``(B, C_out, 2h, 2w)``."""
        x = F.interpolate(x, scale_factor=2.0, mode=self.interpolation)
        if skip is not None:
            # upsampled input first, then the skips: the order fixes which conv1 weights see what
            x = self.attention1(torch.cat([x, skip], dim=1))  # (B, C_in + C_skip, 2h, 2w)
        return self.attention2(self.conv2(self.conv1(x)))


class UNetPlusPlusDecoder(nn.Module):
    """Nested dense decoder of U-Net++ over the encoder's feature pyramid.

    Nodes ``x_{d}_{j}``: column ``j`` works at stride ``16 / 2**j``, ``d`` counts the nested
    nodes in that column (``d = 0`` is the main decoder path). With ``f = [layer4, layer3, layer2,
    layer1, stem]`` (deepest first) and ``x_{d}_{d-1} := f[d]``, node ``x_{d}_{j}`` upsamples
    ``x_{d}_{j-1}`` and concatenates ``[x_{d+1}_j, ..., x_{j}_j, f[j+1]]``; the last node ``x_0_4``
    upsamples ``x_0_3`` to full resolution with no skip. The raw input is never a skip.

    Args:
        encoder_channels: channels of the encoder outputs, ``[C_in, 64, 64, 128, 256, 512]``.
        decoder_channels: output channels of the main-path nodes ``x_0_0 ... x_0_4``.
        attention_type: ``None`` or ``"scse"``.
        interpolation: upsampling mode (``"nearest"`` in smp).
    """

    def __init__(
        self, encoder_channels: list, decoder_channels: tuple, attention_type=None, interpolation: str = "nearest"
    ):
        super().__init__()
        feat = list(encoder_channels[1:])[::-1]  # [512, 256, 128, 64, 64], deepest first
        skip = feat[1:] + [0]  # channels of f[j+1], the encoder skip joining column j
        main = [feat[0]] + list(decoder_channels[:-1])  # main-path input channels per column
        self.depth = len(decoder_channels) - 1  # nested columns before the final node (4)
        blocks = {}
        for j in range(self.depth):  # ModuleDict order x_0_0, x_0_1, x_1_1, x_0_2, ... as in smp
            for d in range(j + 1):
                cin, cout = (main[j], decoder_channels[j]) if d == 0 else (skip[j - 1], skip[j])
                blocks[f"x_{d}_{j}"] = DecoderBlock(cin, skip[j] * (j - d + 1), cout, attention_type, interpolation)
        blocks[f"x_0_{self.depth}"] = DecoderBlock(main[-1], 0, decoder_channels[-1], attention_type, interpolation)
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, features: list) -> torch.Tensor:
        """Encoder features ``[x, stem, layer1, ..., layer4]`` -> ``(B, decoder_channels[-1], H, W)``."""
        feats = features[1:][::-1]  # [layer4, layer3, layer2, layer1, stem]
        nodes = {(d, d - 1): f for d, f in enumerate(feats)}  # encoder feature = column -1 of row d
        for lvl in range(self.depth):  # by diagonal j - d = lvl, so every input already exists
            for d in range(self.depth - lvl):
                j = d + lvl
                skips = [nodes[(k, j)] for k in range(d + 1, j + 1)] + [feats[j + 1]]
                nodes[(d, j)] = self.blocks[f"x_{d}_{j}"](nodes[(d, j - 1)], torch.cat(skips, dim=1))  # (B, C, h, w)
        return self.blocks[f"x_0_{self.depth}"](nodes[(0, self.depth - 1)])


# ----------------------------------------------------------------------------- model


class UNetPlusPlus(nn.Module):
    """U-Net++ with a ResNet-34 encoder returning per-pixel logits; state dict identical to smp's.

    Args:
        in_channels: input bands ``C_in`` (5 for the glacier tiles: B2, B3, B4, B6, B10).
        num_classes: output channels ``K`` (1 = binary logits).
        encoder_depth: must be 5 (the only depth implemented).
        decoder_channels: output channels of the 5 main-path nodes ``x_0_0 ... x_0_4``.
        decoder_attention_type: ``None`` or ``"scse"``.
        decoder_interpolation: upsampling mode in the decoder (``"nearest"`` as in smp).

    Raises:
        ValueError: on an unsupported ``encoder_depth``, ``decoder_channels`` length, attention type
            or interpolation mode, or non-positive channel counts.
    """

    def __init__(self, in_channels: int = 5, num_classes: int = 1, encoder_depth: int = 5,
                 decoder_channels: tuple = (256, 128, 64, 32, 16), decoder_attention_type=None,
                 decoder_interpolation: str = "nearest"):
        super().__init__()
        if encoder_depth != 5:
            raise ValueError(f"UNetPlusPlus: only encoder_depth=5 is implemented, got {encoder_depth}")
        if len(decoder_channels) != encoder_depth:
            raise ValueError(f"UNetPlusPlus: decoder_channels needs {encoder_depth} entries, got {decoder_channels}")
        if decoder_attention_type not in (None, "scse"):
            raise ValueError("UNetPlusPlus: decoder_attention_type must be None or 'scse', "
                             f"got {decoder_attention_type!r}")
        if decoder_interpolation not in ("nearest", "nearest-exact", "bilinear", "bicubic", "area"):
            raise ValueError(f"UNetPlusPlus: unknown decoder_interpolation {decoder_interpolation!r}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"UNetPlusPlus: in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        self.in_channels = in_channels
        self.stride = 2**encoder_depth
        self.encoder = ResNetEncoder(in_channels, layers=(3, 4, 6, 3))
        self.decoder = UNetPlusPlusDecoder(
            self.encoder.out_channels, tuple(decoder_channels), decoder_attention_type, decoder_interpolation
        )
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1))
        # smp base/initialization.py: decoder convs kaiming-uniform (fan_in, relu), biases 0, BN 1/0;
        # head conv xavier-uniform, bias 0. The encoder keeps its torchvision-style init.
        for m in self.decoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.segmentation_head[0].weight)
        nn.init.zeros_(self.segmentation_head[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch of tiles.

        Args:
            x: float tensor ``(B, C_in, H, W)``; the glacier pipeline feeds per-tile max-scaled
                bands in ``[0, 1]``. ``H`` and ``W`` must be multiples of 32.

        Returns:
            Logits ``(B, K, H, W)`` (apply sigmoid for ``K = 1``), same dtype as ``x``.

        Raises:
            ValueError: if ``x`` is not 4-D, has the wrong channel count, or ``H``/``W`` is not
                divisible by 32.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNetPlusPlus: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        B, C, H, W = x.shape
        if H % self.stride or W % self.stride:
            ph, pw = math.ceil(H / self.stride) * self.stride, math.ceil(W / self.stride) * self.stride
            raise ValueError(f"UNetPlusPlus: input size {H}x{W} is not divisible by {self.stride}; pad it to {ph}x{pw}")
        return self.segmentation_head(self.decoder(self.encoder(x)))  # (B, K, H, W)


# ----------------------------------------------------------------------------- presets


def unetpp_resnet34(in_channels: int = 5, num_classes: int = 1, **kw) -> UNetPlusPlus:
    """The seed's model: U-Net++ / ResNet-34, 5 glacier bands, 1 logit (26,084,881 parameters).

    ``kw`` is passed to :class:`UNetPlusPlus` (e.g. ``decoder_attention_type="scse"``).
    """
    return UNetPlusPlus(in_channels=in_channels, num_classes=num_classes, **kw)


# ----------------------------------------------------------------------------- converters

# torchvision ResNet names kept by the encoder (``fc.*`` is dropped, everything else is foreign).
_TV_RESNET_KEY = re.compile(
    r"^(conv1|bn1|layer[1-4]\.\d+\.(conv[12]|bn[12]|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
_TV_DROP = ("fc.weight", "fc.bias")
_SMP_PREFIXES = ("encoder.", "decoder.", "segmentation_head.")


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


def _check_shapes(state_dict: dict, expected_shapes) -> None:
    if expected_shapes is None:
        return
    bad = [
        f"{k}: got {tuple(v.shape)}, model has {tuple(expected_shapes[k])}"
        for k, v in state_dict.items()
        if k in expected_shapes and tuple(v.shape) != tuple(expected_shapes[k])
    ]
    if bad:
        raise ValueError("checkpoint shapes do not match the model:\n  " + "\n  ".join(bad))


def convert_torchvision_resnet(state_dict: Mapping, in_channels: int, expected_shapes=None) -> dict:
    """Map a torchvision ResNet-34 state dict (e.g. ``resnet34-b627a593.pth``) to a new dict of our keys.

    Known names get the ``encoder.`` prefix, ``fc.*`` is dropped and ``conv1`` is adapted to ``in_channels``
    with :func:`patch_first_conv`; unknown names pass unchanged, so the loader reports them. Nesting and
    ``module.``/``_orig_mod.`` prefixes are removed first; ``expected_shapes`` (optional ``{key: shape}`` of
    the target model) is checked. Raises ``ValueError`` on non-tensor entries, a missing ``conv1.weight``
    or a shape mismatch."""
    sd = unwrap_state_dict(state_dict)
    if "conv1.weight" not in sd:
        raise ValueError("convert_torchvision_resnet: no 'conv1.weight' key; not a torchvision ResNet state dict")
    out = {}
    for key, value in sd.items():
        if key in _TV_DROP:
            continue
        if _TV_RESNET_KEY.match(key):
            if key == "conv1.weight":
                value = patch_first_conv(value, in_channels)  # (64, C_in, 7, 7)
            key = "encoder." + key
        out[key] = value
    _check_shapes(out, expected_shapes)
    return out


def convert_smp_unetpp(state_dict: Mapping, expected_shapes=None) -> dict:
    """Normalise an smp ``UnetPlusPlus`` (ResNet-34) state dict (``encoder.*``, ``decoder.blocks.x_{d}_{j}.*``,
    ``segmentation_head.0.*``; its keys are already ours): nesting and ``module.``/``_orig_mod.`` prefixes
    removed, other keys kept for :func:`load_pretrained` to report. ``expected_shapes``: optional
    ``{key: shape}`` of the target model. Raises ``ValueError`` on non-tensor entries or shape mismatches."""
    sd = unwrap_state_dict(state_dict)
    _check_shapes(sd, expected_shapes)
    return sd


def load_pretrained(model: UNetPlusPlus, path_or_state_dict) -> dict:
    """Load an smp U-Net++ checkpoint or a torchvision ResNet-34 encoder file into ``model``.

    The layout is detected from the keys: names starting with ``encoder.``/``decoder.``/
    ``segmentation_head.`` mean a full smp (or iceseg) model (an iceseg ``train.py`` checkpoint's ``net.``
    prefix is stripped first); ``conv1.weight`` without those
    means a torchvision ImageNet encoder, for which ``decoder.*`` and ``segmentation_head.*`` may
    be missing (they keep their smp-style init). ``*.num_batches_tracked`` may always be missing
    (old torchvision files lack it; PyTorch then fills 0).

    Args:
        model: the target model (modified in place).
        path_or_state_dict: path to a ``.pth``/``.pt`` file (read with
            ``torch.load(map_location="cpu", weights_only=True)``) or an in-memory mapping.

    Returns:
        ``{"layout": "smp" | "torchvision", "missing": [...], "unexpected": [...]}`` (sorted keys).

    Raises:
        FileNotFoundError: if the path does not exist.
        ValueError: unknown layout, shape mismatch, missing keys outside the allow-list, or any
            unexpected key. The model is not modified when this is raised.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        if not os.path.isfile(path_or_state_dict):
            raise FileNotFoundError(f"load_pretrained: checkpoint not found: {path_or_state_dict}")
        source = str(path_or_state_dict)
        raw = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        source, raw = "<state dict>", path_or_state_dict
    sd = unwrap_state_dict(raw)
    if sd and all(k.startswith("net.") for k in sd):  # an iceseg train.py checkpoint: the net inside its segmentor
        sd = {k[len("net."):]: v for k, v in sd.items()}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    if any(k.startswith(_SMP_PREFIXES) for k in sd):
        layout, allowed = "smp", ()
        sd = convert_smp_unetpp(sd, expected_shapes=shapes)
    elif "conv1.weight" in sd:
        layout, allowed = "torchvision", ("decoder.", "segmentation_head.")
        sd = convert_torchvision_resnet(sd, model.encoder.conv1.in_channels, expected_shapes=shapes)
    else:
        raise ValueError(
            f"load_pretrained: {source} is neither an smp UnetPlusPlus nor a torchvision ResNet "
            f"state dict (first keys: {list(sd)[:3]})"
        )
    missing = sorted(set(shapes) - set(sd))
    unexpected = sorted(set(sd) - set(shapes))
    bad_missing = [k for k in missing if not k.startswith(allowed) and not k.endswith(".num_batches_tracked")]
    if unexpected or bad_missing:
        raise ValueError(
            f"load_pretrained: {source} ({layout} layout) does not fit the model; "
            f"unexpected keys: {unexpected[:10]}, missing keys: {bad_missing[:10]}"
        )
    model.load_state_dict(sd, strict=False)
    return {"layout": layout, "missing": missing, "unexpected": unexpected}
