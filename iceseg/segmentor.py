"""How a config becomes a model: segmentor wrappers and the ``MODELS`` builder registry.

A segmentor is an ``nn.Module`` whose ``forward(img, label=None)`` returns a dict of named
losses when ``label`` is given (training, so DDP sees one forward call) and logits
``(B, K', H, W)`` at the input size otherwise. Model files never import each other; they are
composed here.
"""

import inspect
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from iceseg.checkpoint import unwrap_state_dict
from iceseg.losses import build_distance_loss, build_loss, cross_entropy, edge_bce_loss, stage_cross_entropy


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

    def set_progress(self, it: int, max_iters: int) -> None:
        """train.py's progress hook, forwarded to the criterion (e.g. a distance-loss warm-up)."""
        if hasattr(self.criterion, "set_progress"):
            self.criterion.set_progress(it, max_iters)



class EncoderDecoder(nn.Module):
    """Backbone -> optional neck -> decode head (+ auxiliary head in training), with the mmseg losses.

    Semantics of mmseg 1.2.2 ``mmseg/models/segmentors/encoder_decoder.py`` (``whole`` mode; ``slide`` and TTA
    live in ``iceseg.inference``), composed from instances (house style §4.1.2); attribute names follow mmseg so
    state-dict keys read ``backbone.*``, ``neck.*``, ``decode_head.*``, ``auxiliary_head.*`` (spec
    icesegnet.md §9.4). Test time: the decode head's (last-stage) logits are resized bilinearly to the
    input size; ``iceseg.inference.predict`` then resizes them to the original image size (spec §1.6).

    Losses in training (``forward(img, label)``), all with mmseg averaging (``iceseg.losses.cross_entropy``):
        - ``decode.loss_ce.s{i}``: ``decode_loss_weight`` x CE on every decode output (one key
          ``decode.loss_ce`` for a single-output head); logits upsampled to the label size first.
        - ``aux.loss_ce``: ``aux_loss_weight`` x CE of the auxiliary head (when given).
        - ``decode.loss_edge`` (``edge_mode="paper"`` only): ``edge_loss_weight`` x
          ``iceseg.losses.edge_bce_loss`` on the decode head's edge logits. ``"published"`` builds the
          edge convs but trains nothing through them, as the authors' code (spec §8.1).
        - ``extra_loss(final_logits, label)`` entries, where ``final_logits`` are the last decode output
          upsampled to the label size (e.g. a distance loss).

    Args:
        backbone: ``(B, C, H, W)`` -> list of NCHW maps.
        decode_head: list of maps -> logits, or (training) a list of per-stage logits; with
            ``edge_mode="paper"`` its ``forward`` must accept ``return_edge=True``.
        neck: optional list -> list of maps.
        auxiliary_head: optional list of maps -> ``(B, K, h, w)`` logits, run in training only.
        decode_loss_weight, aux_loss_weight, edge_loss_weight: loss weights.
        edge_mode: ``"published"`` or ``"paper"``.
        ignore_index, class_weight, avg_non_ignore: see ``iceseg.losses.cross_entropy``.
        extra_loss: optional module ``(logits (B, K, H, W), label (B, H, W)) -> {name: scalar}``.

    Raises:
        ValueError: unknown ``edge_mode``, or ``"paper"`` with a decode head that has no edge output.
    """

    is_segmentor = True  # build_model returns it as is (it computes its own losses)

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, neck: nn.Module | None = None,
                 auxiliary_head: nn.Module | None = None, decode_loss_weight: float = 1.0,
                 aux_loss_weight: float = 0.4, edge_mode: str = "published", edge_loss_weight: float = 0.1,
                 ignore_index: int = 255, class_weight: list | None = None, avg_non_ignore: bool = False,
                 extra_loss: nn.Module | None = None):
        super().__init__()
        if edge_mode not in ("published", "paper"):
            raise ValueError(f"edge_mode must be 'published' or 'paper', not {edge_mode!r}")
        if edge_mode == "paper" and "return_edge" not in inspect.signature(decode_head.forward).parameters:
            raise ValueError(f"edge_mode='paper' needs a decode head with an edge output; "
                             f"{type(decode_head).__name__}.forward has no return_edge argument")
        self.backbone, self.neck, self.decode_head, self.auxiliary_head = backbone, neck, decode_head, auxiliary_head
        self.decode_loss_weight, self.aux_loss_weight = decode_loss_weight, aux_loss_weight
        self.edge_mode, self.edge_loss_weight = edge_mode, edge_loss_weight
        self.ignore_index, self.avg_non_ignore = ignore_index, avg_non_ignore
        self.register_buffer("class_weight", torch.tensor(class_weight, dtype=torch.float32) if class_weight else None,
                             persistent=False)
        self.extra_loss = extra_loss

    def extract_feat(self, img: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` -> backbone (and neck) maps, finest first."""
        feats = self.backbone(img)
        return self.neck(feats) if self.neck is not None else feats

    def logits(self, img: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float32 -> ``(B, K, H, W)`` logits of the last decode output."""
        out = self.decode_head(self.extract_feat(img))
        out = out[-1] if isinstance(out, (list, tuple)) else out
        return F.interpolate(out, size=img.shape[-2:], mode="bilinear", align_corners=False)

    def set_progress(self, it: int, max_iters: int) -> None:
        """Forward train.py's progress hook to ``extra_loss`` when it has one."""
        if hasattr(self.extra_loss, "set_progress"):
            self.extra_loss.set_progress(it, max_iters)

    def forward(self, img: torch.Tensor, label: torch.Tensor | None = None):
        """Losses dict when ``label`` ((B, H, W) int64, 255 = ignore) is given, else ``(B, K, H, W)`` logits."""
        if label is None:
            return self.logits(img)
        feats = self.extract_feat(img)
        ce = dict(ignore_index=self.ignore_index, class_weight=self.class_weight, avg_non_ignore=self.avg_non_ignore)
        if self.edge_mode == "paper":
            out, edge = self.decode_head(feats, return_edge=True)
        else:
            out, edge = self.decode_head(feats), None
        losses = stage_cross_entropy(out, label, self.decode_loss_weight, "decode.loss_ce", **ce)
        if self.auxiliary_head is not None:
            losses["aux.loss_ce"] = self.aux_loss_weight * cross_entropy(self.auxiliary_head(feats), label, **ce)
        if edge is not None:
            losses["decode.loss_edge"] = self.edge_loss_weight * edge_bce_loss(edge, label, self.ignore_index)
        if self.extra_loss is not None:
            final = out[-1] if isinstance(out, (list, tuple)) else out
            final = F.interpolate(final, size=label.shape[-2:], mode="bilinear", align_corners=False)
            losses.update(self.extra_loss(final, label))
        return losses

def _arch(cfg):
    """``cfg.model.arch``, checked to be the dataclass of ``cfg.model.name`` (configs.MODEL_ARCHS).

    Raises:
        ValueError: it belongs to another family (e.g. ``--model.name=knet`` on an IceSegNet config).
    """
    from configs import MODEL_ARCHS

    want = MODEL_ARCHS[cfg.model.name]
    if type(cfg.model.arch) is not want:
        raise ValueError(f"model.arch is a {type(cfg.model.arch).__name__} but model.name {cfg.model.name!r} needs a "
                         f"{want.__name__}: start from a config of that family (python train.py --list-configs)")
    return cfg.model.arch


def build_unetpp(cfg) -> nn.Module:
    """U-Net++ (ResNet34 encoder) from ``cfg.model.arch`` (configs.UNetPPConfig) and ``cfg.data``."""
    from iceseg.models.unetpp import UNetPlusPlus, load_pretrained

    a = _arch(cfg)
    net = UNetPlusPlus(in_channels=cfg.data.in_channels, num_classes=cfg.model.num_classes,
                       decoder_channels=tuple(a.decoder_channels), decoder_attention_type=a.decoder_attention_type or None,
                       decoder_interpolation=a.decoder_interpolation)
    if cfg.model.pretrained:
        load_pretrained(net, cfg.model.pretrained)
    return net


def _swin(cfg, backbone) -> nn.Module:
    """Swin backbone from a ``SwinConfig`` (lists become tuples), its ``in_chans`` checked against the data.

    Raises:
        ValueError: ``backbone.in_chans`` differs from ``data.in_channels``.
    """
    from dataclasses import fields, replace

    from iceseg.models import swin

    if backbone.in_chans != cfg.data.in_channels:
        raise ValueError(f"model.arch.backbone.in_chans={backbone.in_chans} but data.in_channels="
                         f"{cfg.data.in_channels}: set both to the band count of the images")
    tuples = {f.name: tuple(getattr(backbone, f.name)) for f in fields(backbone)
              if isinstance(getattr(backbone, f.name), list)}
    return swin.SwinTransformer(replace(backbone, **tuples))


def convert_mmseg_segmentor(state_dict: dict) -> dict:
    """Map an mmseg ``EncoderDecoder`` checkpoint (Swin backbone) to :class:`EncoderDecoder` keys.

    ``backbone.*`` goes through ``iceseg.models.swin.convert_mmseg_swin`` (renames, patch-merging reorder);
    ``neck.*``, ``decode_head.*`` and ``auxiliary_head.*`` already use mmseg's names (spec icesegnet.md
    §9.4) and pass unchanged; other keys are dropped. ``state_dict``/``model`` nesting and a shared
    ``module.`` prefix are removed.

    Args:
        state_dict: mmseg checkpoint dict or flat state dict.

    Returns:
        New flat dict (tensors shared).
    """
    from iceseg.models.swin import convert_mmseg_swin

    sd = unwrap_state_dict(state_dict)
    out = {f"backbone.{k}": v for k, v in convert_mmseg_swin(sd).items()}
    out.update({k: v for k, v in sd.items() if re.match(r"^(neck|decode_head|auxiliary_head)\.", k)})
    return out


def load_segmentor_checkpoint(model: EncoderDecoder, path: str) -> str:
    """Load ``cfg.model.pretrained`` into an :class:`EncoderDecoder` with a Swin backbone.

    A file with ``decode_head.*`` keys is a whole mmseg segmentor (converted by
    :func:`convert_mmseg_segmentor`, loaded strictly except the auxiliary head, which inference does
    not need); anything else is a Swin classification/backbone checkpoint (official, timm or mmseg
    layout, e.g. ``swin_large_patch4_window7_224_22k.pth``) loaded by ``iceseg.models.swin.load_pretrained``.

    Returns:
        ``"segmentor"`` or ``"backbone"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing / unexpected keys or shape mismatches, naming them.
    """
    from iceseg.models.swin import load_pretrained

    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.pretrained: checkpoint file not found: {path}")
    sd = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    if not any(k.startswith("decode_head.") for k in sd):
        load_pretrained(model.backbone, sd)
        return "backbone"
    sd, own = convert_mmseg_segmentor(sd), model.state_dict()
    bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    missing = [k for k in own if k not in sd and not k.startswith("auxiliary_head.")]
    unexpected = [k for k in sd if k not in own]
    if bad or missing or unexpected:
        raise ValueError(f"{path}: shape mismatches {bad[:5]}, missing keys {missing[:5]} ({len(missing)}), "
                         f"unexpected keys {unexpected[:5]} ({len(unexpected)})")
    model.load_state_dict(sd, strict=False)
    return "segmentor"


def _encoder_decoder(cfg, a, backbone: nn.Module, neck, decode_head, aux_levels: list[int]) -> EncoderDecoder:
    from iceseg.models.uper import FCNHead

    aux = FCNHead(aux_levels, 2, a.aux_channels, cfg.model.num_classes, concat_input=a.aux_concat_input,
                  dropout_ratio=a.dropout_ratio) if a.aux else None
    model = EncoderDecoder(backbone, decode_head, neck, aux, a.decode_loss_weight, a.aux_loss_weight,
                           getattr(a, "edge_mode", "published"), getattr(a, "edge_loss_weight", 0.1),
                           cfg.data.ignore_index, cfg.loss.class_weight or None, cfg.loss.avg_non_ignore,
                           extra_loss=build_distance_loss(cfg))
    if cfg.model.pretrained:
        load_segmentor_checkpoint(model, cfg.model.pretrained)
    return model


def build_icesegnet(cfg) -> EncoderDecoder:
    """IceSegNet (spec icesegnet.md §1): Swin -> SEFPN -> K-Net head on UPerSCA-MTL (+ FCN aux on neck level 2).

    Hyper-parameters: ``cfg.model.arch`` (configs.IceSegNetConfig; defaults: Swin-L, 246,778,380 parameters
    without the aux head for 4 classes, 250,909,200 with it).
    """
    from iceseg.models.knet import IterativeDecodeHead
    from iceseg.models.sefpn import SEFPN
    from iceseg.models.uper import UPerSCAMTLHead

    a = _arch(cfg)  # an unknown edge_mode is refused by EncoderDecoder
    backbone = _swin(cfg, a.backbone)
    neck = SEFPN(backbone.out_channels, a.neck_channels)
    levels = [a.neck_channels] * len(backbone.out_channels)
    generate = UPerSCAMTLHead(levels, a.channels, cfg.model.num_classes, dropout_ratio=a.dropout_ratio)
    # Convs that never receive a gradient are frozen, so DDP needs no find_unused_parameters (the authors' fix)
    # and the optimizer skips them exactly as it skips gradient-less parameters in mmseg.
    generate.multi_task_head.segmentation_head.requires_grad_(False)  # 19-channel left-over, never run
    if a.edge_mode == "published":
        generate.multi_task_head.edge_detection_head.requires_grad_(False)
    decode = IterativeDecodeHead(generate, len(a.feedforward_channels), a.feedforward_channels, a.num_heads)
    return _encoder_decoder(cfg, a, backbone, neck, decode, levels)


def build_knet(cfg) -> EncoderDecoder:
    """Stock K-Net baseline (mmseg ``knet-s3_swin-l_upernet``): Swin -> K-Net head on UPerHead, FCN aux on
    backbone level 2 (``concat_input=False``, weight 0.4). Hyper-parameters: ``cfg.model.arch``
    (configs.KNetConfig; defaults: 245,088,408 parameters without the aux head for 4 classes)."""
    from iceseg.models.knet import IterativeDecodeHead
    from iceseg.models.uper import UPerHead

    a = _arch(cfg)
    backbone = _swin(cfg, a.backbone)
    generate = UPerHead(backbone.out_channels, a.channels, cfg.model.num_classes, dropout_ratio=a.dropout_ratio)
    decode = IterativeDecodeHead(generate, len(a.feedforward_channels), a.feedforward_channels, a.num_heads)
    return _encoder_decoder(cfg, a, backbone, None, decode, backbone.out_channels)


def build_deeplab_multitask(cfg) -> nn.Module:
    """AutoICE multi-task DeepLab (iceseg/models/deeplab.py) with its :class:`iceseg.autoice.loss.MultiTaskLoss`.

    ``cfg.model.arch`` (configs.DeepLabConfig): ``tasks`` ({task: K}, default SIC 1 / SOD 7 / FLOE 8) and the
    ``MultiTaskDeepLab`` arguments (``layers``, ``atrous_rates``, ``aspp_channels``, ``pool``, ``dropout``);
    ``cfg.loss.task_weights`` weighs the heads; ``cfg.model.pretrained`` may be a torchvision ResNet, a seed
    checkpoint or an iceseg state dict (``deeplab.load_pretrained``).
    """
    from iceseg.autoice.loss import MultiTaskLoss
    from iceseg.models.deeplab import MultiTaskDeepLab, load_pretrained

    a = _arch(cfg)
    criterion = MultiTaskLoss(dict(a.tasks), cfg.loss.task_weights, cfg.data.ignore_index)
    model = MultiTaskDeepLab(cfg.data.in_channels, dict(a.tasks), tuple(a.layers), tuple(a.atrous_rates),
                             a.aspp_channels, a.pool, a.dropout, criterion=criterion)
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained)
    return model


MODELS = {"unetpp": build_unetpp, "icesegnet": build_icesegnet, "knet": build_knet,
          "deeplab_multitask": build_deeplab_multitask}


def build_model(cfg) -> nn.Module:
    """Build the segmentor named by ``cfg.model.name`` with the configured loss.

    A builder returns either a dense net (wrapped here in :class:`DenseSegmentor` with ``SegLoss``) or a
    complete segmentor marked ``is_segmentor = True`` (returned as is).

    Raises:
        KeyError: unknown model name (lists the valid ones).
        ValueError: model outputs inconsistent with the loss / number of classes.
    """
    if cfg.model.name not in MODELS:
        raise KeyError(f"unknown model {cfg.model.name!r}; valid: {', '.join(sorted(MODELS))}")
    k_out, k_data = cfg.model.num_classes, cfg.data.num_classes
    if cfg.loss.name != "multitask" and ((cfg.loss.name == "bce_dice") != (k_out == 1) or (k_out != 1 and k_out != k_data)
                                         or (k_out == 1 and k_data != 2)):
        raise ValueError(f"model.num_classes={k_out} does not fit loss {cfg.loss.name!r} with "
                         f"data.num_classes={k_data} (binary: 1 output, bce_dice, 2 data classes)")
    net = MODELS[cfg.model.name](cfg)
    if getattr(net, "is_segmentor", False):  # a complete segmentor with its own losses (e.g. EncoderDecoder)
        return net
    criterion = build_loss(cfg)  # SegLoss + the optional distance loss (cfg.loss.dist_*)
    return DenseSegmentor(net, criterion, size_divisor=cfg.eval.size_divisor)


# --------------------------------------------------------------------------- training set-up

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(model: nn.Module, optim_cfg) -> list[dict]:
    """Optimizer parameter groups: weight decay and lr multiplier per trainable parameter.

    A parameter gets no weight decay when its full name contains a substring of ``optim_cfg.no_decay``
    (mmseg ``paramwise_cfg.custom_keys`` semantics: the IceSegNet recipe's ``"norm"`` leaves BN layers
    named ``bn`` decayed, spec icesegnet.md §3) or, with ``optim_cfg.no_decay_norm``, when it belongs to
    a normalisation module by type (every BatchNorm / SyncBatchNorm, GroupNorm, LayerNorm, InstanceNorm
    weight and bias, whatever its name: smp's decoder BNs are ``...conv1.1``). Its lr multiplier is the
    first ``optim_cfg.lr_mult`` entry whose key is a substring of the name (else 1).

    Returns:
        ``[{"params": [...], "weight_decay": float, "lr_mult": float}]``, one group per distinct pair, in
        first-seen order.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = any(s in name for s in optim_cfg.no_decay) or (optim_cfg.no_decay_norm and id(p) in norm_params)
        mult = next((m for s, m in optim_cfg.lr_mult.items() if s in name), 1.0)
        groups.setdefault((0.0 if no_wd else optim_cfg.weight_decay, mult), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_mult": m} for (wd, m), ps in groups.items()]


def convert_sync_batchnorm(model: nn.Module, exclude=()) -> nn.Module:
    """Replace every ``BatchNorm*d`` by ``SyncBatchNorm`` except under the module-name prefixes ``exclude``.

    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` applied per BN module (weights, buffers and
    ``training`` carried over). IceSegNet's authors synchronised the heads' BN over their 2 GPUs and left
    SEFPN's BN per GPU (``exclude=["neck"]``, spec icesegnet.md §1.3, §3, §8.14).

    Args:
        model: modified in place.
        exclude: prefixes of ``named_modules`` names, e.g. ``["neck"]`` (matches ``neck`` and ``neck.*``).

    Returns:
        ``model``.
    """
    def kept(name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in exclude)

    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm) \
                    and not kept(full):
                setattr(parent, child_name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return model


def build_inference_model(cfg, state_dict: dict, device: torch.device, source: str = "checkpoint",
                          trained_with: dict | None = None, autocast: torch.dtype | None = None) -> nn.Module:
    """The model of ``cfg`` with ``state_dict`` loaded, in eval mode, as ``test.py`` and ``predict.py`` run it.

    ``iceseg.fast.optimize`` is applied when ``train.fast_paths`` is set (as in train.py's validation),
    BatchNorm is folded into the conv before it when ``eval.fuse_conv_bn`` is set (one conv per pair: less
    memory and time, the same outputs to ~1e-6), and the model is moved to ``device``, channels-last when
    ``train.channels_last`` is set. With ``autocast`` (the dtype the caller runs it under, e.g.
    ``iceseg.inference.eval_autocast``) and ``train.fast_paths``, linear and conv weights are stored in that dtype
    (``iceseg.fast.autocast_weights``: the same outputs under that autocast; the model then needs it).

    ``source`` (the file) and ``trained_with`` (its stored config) name the checkpoint in the message when
    its weights do not fit (``iceseg.checkpoint.load_model_state``).

    Raises:
        KeyError, ValueError: as :func:`build_model`; ValueError: missing, unexpected or reshaped keys.
    """
    from iceseg.checkpoint import load_model_state
    from iceseg.fast import autocast_weights, fuse_conv_bn, optimize

    model = build_model(cfg)
    load_model_state(model, state_dict, source, cfg.name, trained_with)
    model.eval()
    if cfg.train.fast_paths:
        optimize(model)
    if cfg.eval.fuse_conv_bn:
        fuse_conv_bn(model)
    if autocast is not None and cfg.train.fast_paths:
        autocast_weights(model, autocast)
    return model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
