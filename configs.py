"""Configs: dataclasses, a registry of named configs, and strict dotted CLI overrides.

    python train.py --list-configs
    python train.py --config unetpp_glacier --optim.lr=2e-4 --train.max_epochs=10

A named config is a function decorated with ``@register`` that returns a :class:`Config`.
Variants call their base and change fields. Overrides are parsed with ``ast.literal_eval``
(falling back to a plain string), checked against the type of the current value (only int ->
float promotion), and an unknown key fails with the closest valid names.
"""

import ast
import dataclasses
import difflib
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from iceseg.models.swin import SwinConfig, swin_large, swin_tiny


@dataclass
class DataConfig:
    dataset: str = "NWPU_YRCC2"  # name in iceseg.data.DATASETS
    root: str = "data/NWPU_YRCC2"  # dataset folder (relative to the current directory)
    num_classes: int = 4  # classes scored by the metrics (binary models: 2)
    in_channels: int = 3  # image bands; a mismatching file is an error
    ignore_index: int = 255  # label value excluded from loss and metrics
    reduce_zero_label: bool = False  # raw 0 -> ignore, v -> v-1 (set by named datasets)
    label_map: dict = field(default_factory=dict)  # {raw value: class index}, after reduce_zero_label
    label_encoding: str = "auto"  # NWPU/Folder labels: "auto", "one_based" (1..C, 0 ignore), "zero_based", "colour"
    image_mode: str = ""  # Pillow images: "" as stored, "RGB"/"L" to convert (.tif/.npy are never converted)
    train_split: str = "train"
    val_split: str = "val"
    train_pipeline: list = field(default_factory=list)  # iceseg.transforms specs, e.g. {"type": "RandomFlip"}
    test_pipeline: list = field(default_factory=list)  # applied to validation/test images (no label resize)
    batch_size: int = 2  # per process
    num_workers: int = 2  # DataLoader workers per process
    timeout_s: float = 600.0  # a worker that delivers no batch for this long is an error naming its file (0: wait)
    split_seed: int = 42  # Glacier: seeded 80/20 split of the sorted file list
    val_fraction: float = 0.2  # Glacier: share of files used for validation
    group_split: bool = False  # Glacier: split by tile id (drops `_aug_<i>` suffixes) to avoid leakage
    synthetic: str = ""  # "river_ice", "glacier" or "autoice": generate a synthetic dataset under root when absent
    kwargs: dict = field(default_factory=dict)  # dataset-specific options (AutoICE: patch_size px, downsample, ...)
    check: str = "headers"  # start-up scan of every file: "headers" (sizes, bands, truncation), "full" (decode all), "none"


# --------------------------------------------------------------------------- model families (model.arch)

@dataclass
class UNetPPConfig:
    """U-Net++ with a ResNet34 encoder (iceseg/models/unetpp.py; smp ``UnetPlusPlus`` arguments)."""
    decoder_channels: tuple = (256, 128, 64, 32, 16)  # decoder width per depth, deepest first
    decoder_attention_type: str = ""  # "" (none) or "scse"
    decoder_interpolation: str = "nearest"  # upsampling in the decoder


@dataclass
class KNetConfig:
    """K-Net: Swin -> (neck) -> kernel-generate head -> iterative kernel-update stages, FCN auxiliary head
    (mmseg ``knet-s3_swin-l_upernet``; spec icesegnet.md §1). ``backbone.in_chans`` must equal data.in_channels."""
    backbone: SwinConfig = field(default_factory=lambda: swin_large(drop_path_rate=0.3))
    channels: int = 512  # decode head width C (kernel dimension)
    feedforward_channels: list = field(default_factory=lambda: [2048, 2048, 2048])  # FFN width per update stage
    num_heads: list = field(default_factory=lambda: [8, 8, 8])  # kernel attention heads per update stage
    dropout_ratio: float = 0.1  # Dropout2d before conv_seg and the aux classifier
    aux: bool = True  # FCN auxiliary head (training only)
    aux_channels: int = 256
    aux_concat_input: bool = False
    decode_loss_weight: float = 1.0  # CE weight of every decode stage
    aux_loss_weight: float = 0.4


@dataclass
class IceSegNetConfig(KNetConfig):
    """IceSegNet: Swin -> SEFPN -> UPerSCA-MTL kernels -> stage-aware K-Net (FFN 2048/1024/512, heads 16/8/4)."""
    neck_channels: int = 768  # SEFPN width
    feedforward_channels: list = field(default_factory=lambda: [2048, 1024, 512])
    num_heads: list = field(default_factory=lambda: [16, 8, 4])
    aux_concat_input: bool = True
    decode_loss_weight: float = 0.9
    aux_loss_weight: float = 0.5
    edge_mode: str = "published"  # "published" (edge convs built, no loss: the authors' code) or "paper" (edge BCE)
    edge_loss_weight: float = 0.1


@dataclass
class DeepLabConfig:
    """Multi-task DeepLab for AutoICE (iceseg/models/deeplab.py; spec autoice.md §1)."""
    tasks: dict = field(default_factory=lambda: {"SIC": 1, "SOD": 7, "FLOE": 8})  # {chart: outputs}, SIC regression
    layers: tuple = (3, 8, 36)  # ResNet-152 blocks of layer1..layer3 (cut after layer3)
    atrous_rates: tuple = (12, 24, 36)  # ASPP dilations
    aspp_channels: int = 32  # ASPP width
    pool: str = "avg2"  # ASPP pooling branch: "avg2" (2x2 average pool, the seed) or "global"
    dropout: float = 0.5  # ASPP projection dropout


MODEL_ARCHS = {"unetpp": UNetPPConfig, "icesegnet": IceSegNetConfig, "knet": KNetConfig,
               "deeplab_multitask": DeepLabConfig}


@dataclass
class ModelConfig:
    name: str = "unetpp"  # key of iceseg.segmentor.MODELS and MODEL_ARCHS
    num_classes: int = 1  # output channels (1 = one sigmoid logit for a binary task)
    pretrained: str = ""  # local checkpoint path (torchvision/smp/official layouts), "" = random init
    arch: Any = field(default_factory=UNetPPConfig)  # the family's hyper-parameters: MODEL_ARCHS[name]


@dataclass
class LossConfig:
    name: str = "ce"  # "ce" (softmax cross-entropy), "bce_dice" (binary) or "multitask" (per-task heads)
    bce_weight: float = 0.7  # bce_dice: alpha in alpha*BCE + (1-alpha)*(1-Dice)
    class_weight: list = field(default_factory=list)  # ce: per-class weights, [] = none
    avg_non_ignore: bool = False  # ce: mean over non-ignored pixels only (mmseg default False)
    task_weights: dict = field(default_factory=dict)  # multitask: {task: weight} of each head's loss, {} = 1 each
    dist_mode: str = ""  # distance loss added to the base loss: "" off, "lossd" (spec B2) or "boundary" (B4)
    dist_weight: float = 1.0  # lambda of the distance loss
    dist_warmup: float = 0.0  # fraction of training over which lambda ramps linearly from 0
    dist_max: int = 50  # K: distance cap in pixels (Lossd max_iter)
    dist_metric: str = "manhattan"  # "manhattan" (Lossd) or "euclidean"
    dist_alpha: float = 1.0  # weight of over-segmentation (pixels predicted c outside class c)
    dist_beta: float = 1.0  # weight of under-segmentation (class-c pixels missed)
    dist_class_weight: list = field(default_factory=list)  # per-class weights w_c, [] = 1 each


@dataclass
class OptimConfig:
    name: str = "adamw"  # "adamw", "adam" or "sgd"
    lr: float = 1e-4  # base learning rate
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    no_decay: list = field(default_factory=list)  # parameter-name substrings without weight decay (e.g. "bias")
    no_decay_norm: bool = False  # no weight decay on any BatchNorm/SyncBatchNorm/GroupNorm/LayerNorm (by module type)
    lr_mult: dict = field(default_factory=dict)  # {name substring: lr multiplier}, e.g. {"backbone": 0.1}
    clip_grad: float = 0.0  # max global grad norm, 0 = no clipping
    fused: bool = True  # one fused kernel per AdamW/Adam/SGD step (CPU and CUDA); False: torch's default loop


@dataclass
class ScheduleConfig:
    name: str = "constant"  # "constant", "cosine", "poly" (per iteration) or "plateau" (per evaluation)
    warmup_iters: int = 0  # linear warm-up length in iterations
    warmup_ratio: float = 1e-3  # warm-up starts at lr * warmup_ratio
    min_lr: float = 0.0  # eta_min of cosine / poly
    t_max: int = 0  # cosine period in iterations after warm-up; 0 = until the last iteration
    power: float = 0.9  # poly exponent
    plateau_factor: float = 0.5  # plateau: lr *= factor
    plateau_patience: int = 5  # plateau: evaluations without improvement before a cut
    plateau_threshold: float = 1e-4  # plateau: relative improvement that counts
    plateau_metric: str = ""  # plateau: validation metric to watch, "" = train.best_metric
    plateau_mode: str = ""  # plateau: "max" or "min", "" = train.best_mode
    plateau_min_lr: float = 0.0  # plateau: lr is never cut below this (torch ReduceLROnPlateau min_lr)
    plateau_cooldown: int = 0  # plateau: evaluations after a cut during which no new cut is counted


@dataclass
class TrainConfig:
    work_dir: str = "work_dirs/run"  # checkpoints, config.json and log.jsonl go here
    seed: int = 0  # each rank uses seed + rank
    max_iters: int = 1000  # used when max_epochs == 0
    max_epochs: int = 0  # > 0: epoch-based run, val_interval/ckpt_interval count epochs
    val_interval: int = 500  # iterations (or epochs) between evaluations
    ckpt_interval: int = 500  # iterations (or epochs) between last.pt saves
    keep_last: int = 0  # also keep the last k saves as iter_<n>.pt (hard links; oldest removed after the new one)
    log_interval: int = 10  # iterations between progress lines
    accum_steps: int = 1  # gradient accumulation micro-steps per optimizer step
    amp: str = "none"  # "none", "bf16" or "fp16" (fp16 uses a GradScaler)
    best_metric: str = "mIoU"  # metric that selects best.pt and drives the plateau schedule
    best_mode: str = "max"  # "max" or "min"
    early_stop_patience: int = 0  # stop after this many evaluations without improvement, 0 = never
    early_stop_metric: str = ""  # validation metric watched by early stopping, "" = best_metric
    early_stop_mode: str = ""  # "max" or "min", "" = best_mode
    early_stop_min_delta: float = 0.0  # an improvement must exceed this (absolute) to reset the patience
    resume: bool = True  # continue from work_dir/last.pt when it exists
    sync_bn: bool = True  # convert BatchNorm to SyncBatchNorm on CUDA with world size > 1
    sync_bn_exclude: list = field(default_factory=list)  # module-name prefixes whose BatchNorm stays per process
    fast_paths: bool = True  # iceseg.fast.optimize: CPU/GPU fast paths (same results; False = the reference math)
    compile: bool = False  # torch.compile the model for training, evaluate() and test.py
    channels_last: bool = False  # NHWC weights and activations (train.py and test.py): faster convs on CPU and CUDA
    malloc: str = "keep"  # "keep": glibc keeps freed memory for the next step (iceseg.fast.keep_freed_memory); "default"
    device: str = "auto"  # "auto", "cpu" or "cuda"
    deterministic: bool = False  # deterministic kernels (warn where none exist): resume == uninterrupted run
    nonfinite_patience: int = 5  # stop (last.pt saved) after this many consecutive non-finite steps
    dist_timeout_min: float = 30.0  # collective timeout in minutes: a stalled rank ends the job, no hang
    debug_nan_iters: list = field(default_factory=list)  # test hook: 1-based iterations whose loss is NaN


@dataclass
class EvalConfig:
    evaluator: str = "seg"  # name in iceseg.evaluation.EVALUATORS
    mode: str = "whole"  # "whole" or "slide"
    crop_size: tuple = (512, 512)  # slide window (h, w)
    stride: tuple = (341, 341)  # slide stride (h, w)
    resize: tuple = ()  # test-time resize scale (w, h) with kept ratio, () = none
    size_divisor: int = 1  # pad inputs to a multiple of this before the model (U-Net++: 32)
    tta_scales: list = field(default_factory=lambda: [1.0])  # TTA image scales (used with --tta)
    tta_flips: list = field(default_factory=list)  # TTA flip views: "horizontal", "vertical", "both" (with --tta)
    tta_scale_base: str = "original"  # TTA scales multiply the "original" image size (mmseg) or the "resized" one
    class_names: list = field(default_factory=list)  # for tables and legends
    palette: list = field(default_factory=list)  # RGB per class for --show-dir
    submission: str = ""  # autoice: write the challenge submission NetCDF here ("" = none)
    boundary_metrics: bool = True  # seg: also BFscore and Boundary IoU per image at original resolution
    bf_tolerance: float = 0.0075  # BFscore match distance, fraction of the image diagonal
    biou_dilation: float = 0.02  # Boundary IoU band width, fraction of the image diagonal
    exclude_classes: list = field(default_factory=list)  # class indices left out of class means (ISPRS clutter)
    fuse_conv_bn: bool = True  # test.py and validation: fold BatchNorm into the conv before it (iceseg.fast)
    amp: str = ""  # inference autocast of validation, test.py, predict.py: "none", "bf16", "fp16"; "" = train.amp
    blend: str = "hann"  # predict.py: overlapping windows weighted by a "hann" window, or the "mean" (mmseg slide)
    ice_classes: list = field(default_factory=list)  # predict.py coverage: classes summed as ice ([] = no ice total)
    river_classes: list = field(default_factory=list)  # predict.py coverage: the river (water + ice) for the ice share


@dataclass
class Config:
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[[], Config]] = {}


def register(fn: Callable[[], Config]) -> Callable[[], Config]:
    """Register a named config under the function's name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_configs() -> list[str]:
    """Sorted names of all registered configs."""
    return sorted(_REGISTRY)


def describe(name: str) -> str:
    """First paragraph of the named config's docstring on one line (``--list-configs``); KeyError if unknown."""
    return " ".join((_REGISTRY[name].__doc__ or "").strip().split("\n\n")[0].split())


def _field_comments(cls: type) -> dict[str, str]:
    """``{field: trailing comment}`` of a dataclass, read from its source (the comment is the field's doc)."""
    comments = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment overrides its base's
        if dataclasses.is_dataclass(klass):
            for line in inspect.getsource(klass).splitlines():
                if m := re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line):
                    comments[m.group(1)] = m.group(2)
    return comments


def format_config(cfg: Config) -> str:
    """Every field of ``cfg`` as ``section.key = value  # comment`` lines, in declaration order
    (``train.py --print-config NAME``); the dotted names are the override keys."""
    lines = []

    def walk(obj, prefix: str) -> None:
        comments = _field_comments(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"[{prefix}{f.name}]" + (f"  {type(value).__name__}" if prefix else ""))
                walk(value, f"{prefix}{f.name}.")
            else:
                note = f"  # {comments[f.name]}" if f.name in comments else ""
                lines.append(f"{prefix}{f.name} = {value!r}{note}")

    walk(cfg, "")
    return "\n".join(lines)


def usage(prog: str) -> str:
    """``--help`` text of ``train.py``/``test.py``-style scripts: the options and every section's keys."""
    lines = [f"usage: {prog} --config NAME [--section.key=value ...]",
             f"       {prog} --list-configs | --print-config NAME [--section.key=value ...]", "",
             "Overrides are Python literals, type-checked against the config (--optim.lr=2e-4,",
             "--eval.crop_size=[512,512]); --print-config shows every key with its value and meaning.", "",
             "sections and their keys:"]
    for f in dataclasses.fields(Config):
        if f.name != "name":
            keys = [k.name for k in dataclasses.fields(f.default_factory())]
            lines.append(f"  --{f.name}.KEY".ljust(18) + " ".join(keys + (["arch.*"] if f.name == "model" else [])))
    return "\n".join(lines)


def from_argv(argv: list[str], prog: str) -> tuple[Config, list[str]]:
    """The config a script's command line names: ``--config NAME`` plus ``--section.key=value`` overrides.

    ``-h``/``--help``, ``--list-configs`` (one line per config) and ``--print-config NAME`` print and exit 0;
    a bad name, key, type or range exits 2 with one ``error:`` line.

    Returns:
        ``(config, applied overrides as "key=value" strings)``.
    """
    if not argv or {"-h", "--help"} & set(argv):
        print(usage(prog))
        sys.exit(0 if argv else 2)
    if "--list-configs" in argv:
        width = max(map(len, list_configs()))
        print("\n".join(f"{n.ljust(width)}  {describe(n)}" for n in list_configs()))
        sys.exit(0)
    flag = "--print-config" if "--print-config" in argv else "--config"
    i = argv.index(flag) if flag in argv else -1
    if i < 0 or i + 1 >= len(argv):
        print(f"error: {prog} needs --config NAME (see --list-configs, --help)", file=sys.stderr)
        sys.exit(2)
    try:
        cfg = get_config(argv[i + 1])
        applied = apply_overrides(cfg, argv[:i] + argv[i + 2:])
    except (KeyError, TypeError, ValueError) as e:
        if os.environ.get("RANK", "0") == "0":  # once under torchrun
            print(f"error: {e.args[0]}", file=sys.stderr)
        sys.exit(2)
    if flag == "--print-config":
        print(format_config(cfg))
        sys.exit(0)
    return cfg, applied


def _check(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"--{key}={value!r}: {rule}")


CHOICES = {"train.amp": ("none", "bf16", "fp16"), "train.best_mode": ("max", "min"),
           "train.early_stop_mode": ("", "max", "min"), "eval.tta_scale_base": ("original", "resized"),
           "optim.name": ("adamw", "adam", "sgd"), "schedule.name": ("constant", "cosine", "poly", "plateau"),
           "schedule.plateau_mode": ("", "max", "min"), "train.device": ("auto", "cpu", "cuda"),
           "data.check": ("headers", "full", "none"), "eval.mode": ("whole", "slide"), "eval.blend": ("hann", "mean"),
           "eval.amp": ("", "none", "bf16", "fp16"), "train.malloc": ("keep", "default")}


def validate(cfg: Config) -> None:
    """Range checks across sections, one line naming the key (:func:`apply_overrides` runs them).

    Raises:
        ValueError: ``--section.key=value: rule`` for the first value outside its range.
    """
    D, O, S, T, E = cfg.data, cfg.optim, cfg.schedule, cfg.train, cfg.eval
    for key, valid in CHOICES.items():  # string options outside a registry: a typo must not pass silently
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        _check(value in valid, key, value, f"must be one of {', '.join(map(repr, valid))}")
    for key, v in (("data.batch_size", D.batch_size), ("data.num_classes", D.num_classes),
                   ("data.in_channels", D.in_channels), ("model.num_classes", cfg.model.num_classes),
                   ("train.val_interval", T.val_interval), ("train.ckpt_interval", T.ckpt_interval),
                   ("train.log_interval", T.log_interval), ("train.accum_steps", T.accum_steps),
                   ("train.nonfinite_patience", T.nonfinite_patience), ("eval.size_divisor", E.size_divisor)):
        _check(v >= 1, key, v, "must be a positive integer")
    for key, v in (("data.num_workers", D.num_workers), ("optim.lr", O.lr), ("optim.weight_decay", O.weight_decay),
                   ("optim.clip_grad", O.clip_grad), ("schedule.warmup_iters", S.warmup_iters),
                   ("schedule.min_lr", S.min_lr), ("schedule.t_max", S.t_max), ("train.max_epochs", T.max_epochs),
                   ("train.keep_last", T.keep_last), ("data.timeout_s", D.timeout_s),
                   ("schedule.plateau_patience", S.plateau_patience), ("train.early_stop_patience",
                                                                       T.early_stop_patience)):
        _check(v >= 0, key, v, "must be >= 0")
    _check(T.max_epochs > 0 or T.max_iters >= 1, "train.max_iters", T.max_iters,
           "must be >= 1 (or set train.max_epochs)")
    _check(T.dist_timeout_min > 0, "train.dist_timeout_min", T.dist_timeout_min, "must be > 0")
    _check(O.eps > 0 and len(O.betas) == 2 and all(0 <= b < 1 for b in O.betas), "optim.betas", O.betas,
           "betas must be two numbers in [0, 1) and optim.eps > 0")
    _check(0 < S.plateau_factor < 1, "schedule.plateau_factor", S.plateau_factor, "must be in (0, 1)")
    _check(0 <= D.val_fraction < 1, "data.val_fraction", D.val_fraction, "must be in [0, 1)")
    for key, v in (("eval.crop_size", E.crop_size), ("eval.stride", E.stride)):
        _check(len(v) == 2 and all(isinstance(n, int) and n >= 1 for n in v), key, v, "must be two positive integers")
    _check(E.mode != "slide" or all(s <= c for s, c in zip(E.stride, E.crop_size, strict=True)), "eval.stride",
           E.stride,
           f"is larger than eval.crop_size {tuple(E.crop_size)}: pixels between windows would get no prediction")
    _check(bool(E.tta_scales) and all(s > 0 for s in E.tta_scales), "eval.tta_scales", E.tta_scales,
           "must be positive numbers")


def get_config(name: str) -> Config:
    """Build the named config. Raises KeyError listing the valid names and close matches."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_configs(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown config {name!r}.{hint} Valid configs: {', '.join(list_configs())}")
    cfg = _REGISTRY[name]()
    cfg.name = name
    return cfg


def _parse_value(text: str, current: Any, key: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # plain strings need no quotes
    if isinstance(current, str):
        return text if not isinstance(value, str) else value
    if isinstance(current, bool) or current is None:
        if current is not None and not isinstance(value, bool):
            raise TypeError(f"--{key}: expected True or False, got {text!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(current)(value)
    if type(value) is not type(current):
        raise TypeError(f"--{key}: expected {type(current).__name__} (current value {current!r}), "
                        f"got {type(value).__name__} {text!r}")
    return value


def apply_overrides(cfg: Config, args: list[str]) -> list[str]:
    """Apply ``--a.b=value`` overrides in place, run :func:`validate`, and return them as ``a.b=value`` strings.

    Dotted paths walk dataclass fields and existing dict keys (``--model.arch.num_heads=[8,8,8]``,
    ``--data.kwargs.patch_size=512``).

    Raises:
        ValueError: malformed argument.
        KeyError: unknown key (the message lists close matches and the valid keys).
        TypeError: the value's type does not match the current value's.
        ValueError: a value out of range (:func:`validate`), naming the key.
    """
    applied = []
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"override {arg!r} must look like --section.key=value")
        path, text = arg[2:].split("=", 1)
        *parents, last = path.split(".")
        obj = cfg
        for i, part in enumerate(parents + [last]):
            keys = list(obj) if isinstance(obj, dict) else [f.name for f in dataclasses.fields(obj)]
            if part not in keys:
                where = ".".join(parents[:i]) or "config"
                close = difflib.get_close_matches(part, keys, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise KeyError(f"unknown config key {path!r}: {where} has no {part!r}.{hint} "
                               f"Valid keys: {', '.join(keys)}")
            if i < len(parents):
                obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        if dataclasses.is_dataclass(obj) and dataclasses.is_dataclass(getattr(obj, last)):
            raise KeyError(f"{path!r} is a section; override one of its keys")
        current = obj[last] if isinstance(obj, dict) else getattr(obj, last)
        value = _parse_value(text, current, path)
        if isinstance(obj, dict):
            obj[last] = value
        else:
            setattr(obj, last, value)
        applied.append(f"{path}={value!r}")
    validate(cfg)
    return applied


def to_dict(cfg: Config) -> dict:
    """Plain-data (JSON- and ``weights_only``-safe) form of a config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _fill(obj, d: dict):
    """Set ``obj``'s fields from plain data ``d`` (nested dataclasses recursively, tuples by field type)."""
    for f in dataclasses.fields(obj):
        if f.name not in d:
            continue
        current, v = getattr(obj, f.name), d[f.name]
        if dataclasses.is_dataclass(current) and isinstance(v, dict):
            _fill(current, v)
        else:
            setattr(obj, f.name, tuple(v) if isinstance(current, tuple) else v)
    return obj


def _legacy_arch(name: str, kwargs: dict):
    """The typed ``model.arch`` of a config stored before it existed (``model.kwargs`` over the builder defaults;
    a Swin backbone was ``{"preset": name, **SwinConfig overrides}``)."""
    import iceseg.models.swin as swin

    kwargs = dict(kwargs)
    arch = MODEL_ARCHS[name]()
    if "backbone" in kwargs:
        spec = dict(kwargs.pop("backbone"))
        arch.backbone = _fill(getattr(swin, spec.pop("preset", "swin_large"))(), spec)
    return _fill(arch, {k: ("" if v is None else v) for k, v in kwargs.items()})


def from_dict(d: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (a ``config.json`` or a checkpoint's ``config``).

    Tuples are restored by field type; ``model.arch`` becomes ``MODEL_ARCHS[model.name]``. A config stored
    before the typed families (free-form ``model.kwargs``) is converted to its ``model.arch``.
    """
    cfg = Config()
    cfg.name = d.get("name", "")
    model = dict(d.get("model", {}))
    name = model.get("name", cfg.model.name)
    legacy = model.pop("kwargs", None)
    cfg.model.arch = MODEL_ARCHS[name]() if name in MODEL_ARCHS else None
    for section in dataclasses.fields(Config):
        if section.name != "name":
            _fill(getattr(cfg, section.name), model if section.name == "model" else d.get(section.name, {}))
    if legacy is not None and name in MODEL_ARCHS:
        cfg.model.arch = _legacy_arch(name, legacy)
    return cfg


# --------------------------------------------------------------------------- named configs

GLACIER_TRAIN = [  # the seed's online albumentations pipeline (spec A2), in order
    {"type": "RandomFlip", "prob": 0.5, "direction": "horizontal"},
    {"type": "RandomFlip", "prob": 0.5, "direction": "vertical"},
    {"type": "RandomRotate90", "prob": 0.5},
    {"type": "RandomAffine", "prob": 0.5, "scale": (0.9, 1.1), "rotate": (-15, 15), "shear": (-10, 10)},
    {"type": "RandomBrightnessContrast", "prob": 0.5, "brightness_limit": 0.2, "contrast_limit": 0.2},
]


@register
def unetpp_glacier() -> Config:
    """U-Net++ (ResNet34, 5 bands) on GlacierHack-style rasters: the seed recipe (spec A1-A3)."""
    cfg = Config()
    cfg.data = DataConfig(dataset="Glacier", root="data/glacier", num_classes=2, in_channels=5,
                          train_pipeline=list(GLACIER_TRAIN), batch_size=4, num_workers=2)
    cfg.model = ModelConfig(name="unetpp", num_classes=1)
    cfg.loss = LossConfig(name="bce_dice", bce_weight=0.7)
    cfg.optim = OptimConfig(name="adamw", lr=1e-4, weight_decay=0.01)
    cfg.schedule = ScheduleConfig(name="plateau", plateau_factor=0.5, plateau_patience=5)
    cfg.train = TrainConfig(work_dir="work_dirs/unetpp_glacier", max_epochs=150, val_interval=1,
                            ckpt_interval=1, log_interval=20, best_metric="MCC", best_mode="max", channels_last=True)
    cfg.eval = EvalConfig(size_divisor=32, tta_flips=["horizontal", "vertical", "both"],  # seed's 4-way TTA
                          class_names=["background", "glacier"],
                          palette=[[0, 0, 0], [0, 200, 255]])
    return cfg


@register
def unetpp_glacier_debug() -> Config:
    """Tiny U-Net++ glacier run on synthetic 64x64 5-band rasters generated on first use (seconds on a CPU)."""
    cfg = unetpp_glacier()
    cfg.data.root = "work_dirs/unetpp_glacier_debug/data"
    cfg.data.synthetic = "glacier"
    cfg.data.batch_size, cfg.data.num_workers = 2, 0
    cfg.model.arch.decoder_channels = (32, 16, 16, 8, 8)
    cfg.train.work_dir = "work_dirs/unetpp_glacier_debug"
    cfg.train.max_epochs, cfg.train.log_interval = 3, 2
    return cfg


@register
def demo() -> Config:
    """Small IceSegNet (tiny Swin, 64-wide heads, random init) on synthetic river-ice scenes (NWPU_YRCC2
    layout, 4 classes): the whole pipeline without the NWPU datasets, a few minutes on a CPU."""
    cfg = icesegnet_yrcc2()
    cfg.data.root, cfg.data.synthetic = "work_dirs/demo/data", "river_ice"
    cfg.data.batch_size, cfg.data.num_workers = 4, 2
    cfg.data.train_pipeline = [{"type": "RandomCrop", "crop_size": (128, 128), "cat_max_ratio": 0.75},
                               {"type": "RandomFlip", "prob": 0.5, "direction": "horizontal"},
                               {"type": "PhotoMetricDistortion"}, dict(NWPU_NORMALIZE)]
    cfg.model.arch = dataclasses.replace(
        cfg.model.arch, backbone=swin_tiny(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.1),
        neck_channels=64, channels=64, feedforward_channels=[256, 128, 64], num_heads=[8, 4, 2], aux_channels=32)
    cfg.optim.lr, cfg.optim.weight_decay = 1e-3, 0.01  # from scratch: higher lr than the fine-tuning recipe
    cfg.schedule = ScheduleConfig(name="cosine", warmup_iters=20, min_lr=1e-5)
    cfg.train = TrainConfig(work_dir="work_dirs/demo", max_iters=300, val_interval=100, ckpt_interval=100,
                            log_interval=10, best_metric="mIoU", sync_bn_exclude=cfg.train.sync_bn_exclude,
                            channels_last=cfg.train.channels_last)
    cfg.eval.resize, cfg.eval.tta_scales = (), [0.75, 1.0, 1.25]
    return cfg


# IceSegNet / K-Net on the NWPU river-ice datasets (spec icesegnet.md §3: the authors' icesegnet-config.py)
NWPU_NORMALIZE = {"type": "Normalize", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
NWPU_YRCC2_NAMES, NWPU_YRCC2_PALETTE = ["land", "water", "shore ice", "streaming"], [
    [0, 0, 0], [0, 255, 0], [0, 255, 255], [255, 0, 255]]


def nwpu_train_pipeline(scale: tuple, crop: tuple) -> list:
    """Spec §3.1: RandomResize(scale, 0.5-2) -> RandomCrop(cat_max 0.75) -> flip -> photometric -> normalise -> pad."""
    return [{"type": "RandomResize", "scale": scale, "ratio_range": (0.5, 2.0)},
            {"type": "RandomCrop", "crop_size": crop, "cat_max_ratio": 0.75},
            {"type": "RandomFlip", "prob": 0.5, "direction": "horizontal"}, {"type": "PhotoMetricDistortion"},
            dict(NWPU_NORMALIZE), {"type": "Pad", "size": crop, "pad_val": 0, "seg_pad_val": 255}]


@register
def icesegnet_yrcc2() -> Config:
    """IceSegNet (Swin-L + SEFPN + UPerSCA-MTL + stage-aware K-Net, 247 M) on NWPU_YRCC2 with the authors' recipe.

    Total batch 8 = 2 processes x 4 (one GPU: ``--data.batch_size=8`` or ``--train.accum_steps=2``).
    Set ``--model.pretrained=<swin_large_patch4_window7_224_22k*.pth>`` (official or mmseg layout) to
    start from ImageNet-22K as the authors did; ``--model.arch.edge_mode=paper`` trains the edge branch.
    """
    cfg = Config()
    cfg.data = DataConfig(dataset="NWPU_YRCC2", root="data/NWPU_YRCC2", num_classes=4, batch_size=4, num_workers=4,
                          train_pipeline=nwpu_train_pipeline((2048, 1024), (512, 512)),
                          test_pipeline=[dict(NWPU_NORMALIZE)])
    cfg.model = ModelConfig(name="icesegnet", num_classes=4, arch=IceSegNetConfig())  # Swin-L, dpr 0.3
    cfg.loss = LossConfig(name="ce", avg_non_ignore=False)  # heads: CE x0.9 on s0..s3, aux x0.5 (model defaults)
    cfg.optim = OptimConfig(name="adamw", lr=6e-5, weight_decay=5e-4, clip_grad=1.0,
                            no_decay=["absolute_pos_embed", "relative_position_bias_table", "norm"])  # mmseg
    # custom_keys match names: BN named `bn` and SEFPN's BNs keep their decay (spec §3); by type: no_decay_norm
    cfg.schedule = ScheduleConfig(name="cosine", warmup_iters=500, warmup_ratio=1e-3, min_lr=1e-6,
                                  t_max=79_500)  # written for 80k, stopped at 60k (final lr ~9.7e-6, spec §8.5)
    cfg.train = TrainConfig(work_dir="work_dirs/icesegnet_yrcc2", seed=42, max_iters=60_000, val_interval=250,
                            ckpt_interval=250, log_interval=50, best_metric="mIoU",
                            sync_bn_exclude=["neck"],  # SEFPN's BN is per GPU in the authors' runs (spec §1.3)
                            channels_last=True)  # the 512-wide heads' convs (README: Performance)
    cfg.eval = EvalConfig(mode="whole", resize=(2048, 1024),  # 1600x640 -> 2048x819, logits back to 1600x640
                          tta_scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75],  # x the original size (spec §3.3)
                          tta_flips=["horizontal"], class_names=list(NWPU_YRCC2_NAMES), palette=NWPU_YRCC2_PALETTE,
                          ice_classes=[2, 3], river_classes=[1, 2, 3])  # ice = shore ice + streaming ice
    return cfg


@register
def icesegnet_yrcc_ex() -> Config:
    """IceSegNet on NWPU_YRCC_EX (3 classes: others, water, ice), recipe of :func:`icesegnet_yrcc2` (spec §8.10)."""
    cfg = icesegnet_yrcc2()
    cfg.data.dataset, cfg.data.root, cfg.data.num_classes = "NWPU_YRCC_EX", "data/NWPU_YRCC_EX", 3
    cfg.model.num_classes = 3
    cfg.train.work_dir = "work_dirs/icesegnet_yrcc_ex"
    cfg.eval.class_names, cfg.eval.palette = ["others", "water", "ice"], [[0, 255, 255], [0, 255, 0], [255, 0, 255]]
    cfg.eval.ice_classes, cfg.eval.river_classes = [2], [1, 2]
    return cfg


@register
def knet_yrcc2() -> Config:
    """K-Net baseline (mmseg knet-s3 Swin-L UPerNet, 245 M; aux x0.4 on Swin level 2) with IceSegNet's recipe."""
    cfg = icesegnet_yrcc2()
    cfg.model.name, cfg.model.arch = "knet", KNetConfig()
    cfg.train.work_dir = "work_dirs/knet_yrcc2"
    return cfg


def _nwpu_debug(cfg: Config, name: str, heads: dict) -> Config:
    """Tiny variant on generated river-ice scenes (96 px crops, 4 iterations: seconds on a CPU)."""
    cfg.data.root, cfg.data.synthetic = f"work_dirs/{name}/data", "river_ice"
    cfg.data.batch_size, cfg.data.num_workers = 2, 0
    cfg.data.train_pipeline = nwpu_train_pipeline((400, 160), (96, 96))
    cfg.model.arch = dataclasses.replace(
        cfg.model.arch, backbone=swin_tiny(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.1),
        channels=32, aux_channels=16, **heads)
    cfg.schedule.warmup_iters, cfg.schedule.t_max = 1, 0
    cfg.train = TrainConfig(work_dir=f"work_dirs/{name}", seed=42, max_iters=4, val_interval=4, ckpt_interval=4,
                            log_interval=1, sync_bn_exclude=cfg.train.sync_bn_exclude,
                            channels_last=cfg.train.channels_last)
    cfg.eval.resize, cfg.eval.tta_scales = (320, 128), [0.75, 1.0]  # 160x400 scenes -> 128x320
    return cfg


@register
def icesegnet_yrcc2_debug() -> Config:
    """Tiny IceSegNet (same graph, widths /16) on synthetic NWPU_YRCC2 scenes."""
    return _nwpu_debug(icesegnet_yrcc2(), "icesegnet_yrcc2_debug",
                       dict(neck_channels=32, feedforward_channels=[64, 32, 16], num_heads=[4, 2, 1]))


@register
def icesegnet_yrcc_ex_debug() -> Config:
    """Tiny IceSegNet on synthetic scenes with the NWPU_YRCC_EX classes (drift ice merged into ice)."""
    cfg = _nwpu_debug(icesegnet_yrcc_ex(), "icesegnet_yrcc_ex_debug",
                      dict(neck_channels=32, feedforward_channels=[64, 32, 16], num_heads=[4, 2, 1]))
    cfg.data.label_map = {3: 2}  # synthetic raw 4 (streaming) -> class 2 (ice)
    return cfg


@register
def knet_yrcc2_debug() -> Config:
    """Tiny K-Net baseline on synthetic NWPU_YRCC2 scenes."""
    return _nwpu_debug(knet_yrcc2(), "knet_yrcc2_debug", dict(feedforward_channels=[64] * 3, num_heads=[2] * 3))


# AutoICE sea-ice charting: the geohai seed recipe (spec autoice.md §2; config_main.ini, main.py)
@register
def deeplab_autoice() -> Config:
    """Multi-task DeepLab (ResNet-152 to layer3, 2x2-pool ASPP heads: SIC regression, SOD 7, FLOE 8), 18 bands.

    RTT scenes in ``data/ai4arctic`` with ``train.json``/``val.json`` lists (the seed's datalists work as is).
    The seed starts from ImageNet: ``--model.pretrained=<torchvision resnet152-394f9c45.pth>`` (stem replaced).
    Batch 16 is per process (the seed used one GPU); 608 x 16 patches of 768 px per epoch.
    """
    cfg = Config()
    cfg.data = DataConfig(dataset="AutoICE", root="data/ai4arctic", num_classes=11, in_channels=18, batch_size=16,
                          num_workers=8, kwargs={"patch_size": 768, "patches_per_epoch": 608 * 16, "min_valid": 0.3,
                                                 "downsample": 1})
    cfg.model = ModelConfig(name="deeplab_multitask", num_classes=11, arch=DeepLabConfig())  # SIC 1, SOD 7, FLOE 8
    cfg.loss = LossConfig(name="multitask", task_weights={"SIC": 1.0, "SOD": 1.0, "FLOE": 1.0})
    cfg.optim = OptimConfig(name="adam", lr=1e-5, weight_decay=0.0)
    cfg.schedule = ScheduleConfig(name="plateau", plateau_factor=0.5, plateau_patience=4, plateau_metric="loss",
                                  plateau_mode="min", plateau_min_lr=1e-8)
    cfg.train = TrainConfig(work_dir="work_dirs/deeplab_autoice", seed=1, max_epochs=120, val_interval=1,
                            ckpt_interval=1, log_interval=50, amp="fp16", best_metric="combined", best_mode="max",
                            early_stop_patience=80, early_stop_metric="loss", early_stop_mode="min",
                            early_stop_min_delta=1e-8, channels_last=True)
    cfg.eval = EvalConfig(evaluator="autoice", mode="slide", crop_size=(2048, 2048), stride=(1536, 1536))
    return cfg


@register
def deeplab_autoice_debug() -> Config:
    """Tiny AutoICE run (ResNet layers 1/1/1, 8-channel ASPP) on synthetic RTT ``.nc`` scenes (seconds on a CPU)."""
    cfg = deeplab_autoice()
    cfg.data.root, cfg.data.synthetic = "work_dirs/deeplab_autoice_debug/data", "autoice"
    cfg.data.batch_size, cfg.data.num_workers = 2, 0
    cfg.data.kwargs.update(patch_size=64, patches_per_epoch=8)
    cfg.model.arch.layers, cfg.model.arch.aspp_channels = (1, 1, 1), 8
    cfg.optim.lr = 1e-3
    cfg.train.work_dir, cfg.train.max_epochs, cfg.train.log_interval = "work_dirs/deeplab_autoice_debug", 2, 1
    cfg.eval.crop_size, cfg.eval.stride = (96, 96), (64, 64)
    return cfg


# Aerial land cover and the Lossd distance loss (spec unetpp_glacier_and_lossd.md Part B)
LOSSD = {"dist_mode": "lossd", "dist_weight": 1.0, "dist_warmup": 0.1, "dist_max": 50}  # lambda unknown: ramped in
IMAGENET_NORMALIZE = {"type": "Normalize", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


def _unetpp_aerial(dataset: str, root: str, names: list, name: str) -> Config:
    """U-Net++ (ResNet34) on 1024 px tiles, GeoSeg-style: scale 0.75-1.5, 512 crops, flips, AdamW 6e-4, cosine."""
    cfg = Config()
    cfg.data = DataConfig(dataset=dataset, root=root, num_classes=len(names), batch_size=8, num_workers=4,
                          train_pipeline=[{"type": "RandomResize", "scale": (1024, 1024), "ratio_range": (0.75, 1.5)},
                                          {"type": "RandomCrop", "crop_size": (512, 512), "cat_max_ratio": 0.75},
                                          {"type": "RandomFlip", "prob": 0.5, "direction": "horizontal"},
                                          {"type": "RandomFlip", "prob": 0.5, "direction": "vertical"},
                                          dict(IMAGENET_NORMALIZE)], test_pipeline=[dict(IMAGENET_NORMALIZE)])
    cfg.model = ModelConfig(name="unetpp", num_classes=len(names))
    cfg.optim = OptimConfig(name="adamw", lr=6e-4, weight_decay=0.01, no_decay=["bias"], no_decay_norm=True,
                            clip_grad=1.0)
    cfg.schedule = ScheduleConfig(name="cosine", warmup_iters=500, min_lr=1e-6)
    cfg.train = TrainConfig(work_dir=f"work_dirs/{name}", max_iters=40_000, val_interval=4000, ckpt_interval=2000,
                            log_interval=50, channels_last=True)
    cfg.eval = EvalConfig(size_divisor=32, class_names=list(names))
    return cfg


def _with_lossd(cfg: Config, name: str) -> Config:
    cfg.loss = dataclasses.replace(cfg.loss, **LOSSD)
    cfg.train.work_dir = f"work_dirs/{name}"
    return cfg


@register
def unetpp_loveda() -> Config:
    """U-Net++ on LoveDA (7 classes; ``data/LoveDA/{Train,Val}/{Urban,Rural}``), mIoU on Val."""
    return _unetpp_aerial("LoveDA", "data/LoveDA", ["background", "building", "road", "water", "barren", "forest",
                                                    "agriculture"], "unetpp_loveda")


@register
def unetpp_loveda_lossd() -> Config:
    """:func:`unetpp_loveda` + lambda * Lossd (K = 50, L1, lambda ramped in over 10 % of training)."""
    return _with_lossd(unetpp_loveda(), "unetpp_loveda_lossd")


@register
def unetpp_potsdam() -> Config:
    """U-Net++ on ISPRS Potsdam RGB tiled to 1024 px (``iceseg.data.tile_dataset``); mF1/mIoU without clutter."""
    cfg = _unetpp_aerial("Potsdam", "data/potsdam_1024", ["impervious surface", "building", "low vegetation", "tree",
                                                          "car", "clutter"], "unetpp_potsdam")
    cfg.eval.exclude_classes, cfg.train.best_metric = [5], "mFscore"
    return cfg


@register
def unetpp_potsdam_lossd() -> Config:
    """:func:`unetpp_potsdam` + Lossd."""
    return _with_lossd(unetpp_potsdam(), "unetpp_potsdam_lossd")


@register
def unetpp_glacier_lossd() -> Config:
    """:func:`unetpp_glacier` (0.7 BCE + 0.3 Dice) + Lossd on the glacier class (sigmoid, hard = p > 0.5)."""
    return _with_lossd(unetpp_glacier(), "unetpp_glacier_lossd")


@register
def icesegnet_yrcc2_lossd() -> Config:
    """:func:`icesegnet_yrcc2` + Lossd on the final decode logits (``EncoderDecoder.extra_loss``)."""
    return _with_lossd(icesegnet_yrcc2(), "icesegnet_yrcc2_lossd")


@register
def unetpp_loveda_debug() -> Config:
    """Tiny U-Net++ on the three real LoveDA tiles in ../shared/data, shrunk to 64 px: trains and validates on
    the same 3 tiles (a smoke test of the pipeline, not a score; seconds on a CPU)."""
    cfg = unetpp_loveda()
    cfg.data.root, cfg.data.batch_size, cfg.data.num_workers = "../shared/data/loveda_samples", 2, 0
    cfg.data.train_pipeline = [{"type": "Resize", "scale": (64, 64)}, *cfg.data.train_pipeline[2:]]
    cfg.model.arch.decoder_channels = (32, 16, 16, 8, 8)
    cfg.optim.lr, cfg.schedule.warmup_iters = 1e-3, 0
    cfg.train = TrainConfig(work_dir="work_dirs/unetpp_loveda_debug", max_iters=12, val_interval=12, ckpt_interval=12,
                            log_interval=1, channels_last=True)
    cfg.eval.resize = (64, 64)  # predict at 64 px, score at 1024 px
    return cfg


@register
def unetpp_loveda_lossd_debug() -> Config:
    """:func:`unetpp_loveda_debug` + Lossd (no warm-up, so the loss is comparable from the first step)."""
    cfg = _with_lossd(unetpp_loveda_debug(), "unetpp_loveda_lossd_debug")
    cfg.loss.dist_warmup = 0.0
    return cfg
