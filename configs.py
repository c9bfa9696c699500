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
import json
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class DataConfig:
    dataset: str = "NWPU_YRCC2"  # name in iceseg.data.DATASETS
    root: str = "data/NWPU_YRCC2"  # dataset folder (relative to the current directory)
    num_classes: int = 4  # classes scored by the metrics (binary models: 2)
    in_channels: int = 3  # image bands; a mismatching file is an error
    ignore_index: int = 255  # label value excluded from loss and metrics
    reduce_zero_label: bool = False  # raw 0 -> ignore, v -> v-1 (set by named datasets)
    label_map: dict = field(default_factory=dict)  # {raw value: class index}, after reduce_zero_label
    train_split: str = "train"
    val_split: str = "val"
    train_pipeline: list = field(default_factory=list)  # iceseg.transforms specs, e.g. {"type": "RandomFlip"}
    test_pipeline: list = field(default_factory=list)  # applied to validation/test images (no label resize)
    batch_size: int = 2  # per process
    num_workers: int = 2  # DataLoader workers per process
    split_seed: int = 42  # Glacier: seeded 80/20 split of the sorted file list
    val_fraction: float = 0.2  # Glacier: share of files used for validation
    group_split: bool = False  # Glacier: split by tile id (drops `_aug_<i>` suffixes) to avoid leakage
    synthetic: str = ""  # "river_ice" or "glacier": generate a synthetic dataset under root when absent


@dataclass
class ModelConfig:
    name: str = "unetpp"  # key of iceseg.segmentor.MODELS
    num_classes: int = 1  # output channels (1 = one sigmoid logit for a binary task)
    pretrained: str = ""  # local checkpoint path (torchvision/smp/official layouts), "" = random init
    kwargs: dict = field(default_factory=dict)  # extra constructor arguments of the model


@dataclass
class LossConfig:
    name: str = "ce"  # "ce" (softmax cross-entropy) or "bce_dice" (binary)
    bce_weight: float = 0.7  # bce_dice: alpha in alpha*BCE + (1-alpha)*(1-Dice)
    class_weight: list = field(default_factory=list)  # ce: per-class weights, [] = none
    avg_non_ignore: bool = False  # ce: mean over non-ignored pixels only (mmseg default False)


@dataclass
class OptimConfig:
    name: str = "adamw"  # "adamw", "adam" or "sgd"
    lr: float = 1e-4  # base learning rate
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    no_decay: list = field(default_factory=list)  # name substrings without weight decay (e.g. "norm", "bias")
    lr_mult: dict = field(default_factory=dict)  # {name substring: lr multiplier}, e.g. {"backbone": 0.1}
    clip_grad: float = 0.0  # max global grad norm, 0 = no clipping


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


@dataclass
class TrainConfig:
    work_dir: str = "work_dirs/run"  # checkpoints, config.json and log.jsonl go here
    seed: int = 0  # each rank uses seed + rank
    max_iters: int = 1000  # used when max_epochs == 0
    max_epochs: int = 0  # > 0: epoch-based run, val_interval/ckpt_interval count epochs
    val_interval: int = 500  # iterations (or epochs) between evaluations
    ckpt_interval: int = 500  # iterations (or epochs) between last.pt saves
    log_interval: int = 10  # iterations between progress lines
    accum_steps: int = 1  # gradient accumulation micro-steps per optimizer step
    amp: str = "none"  # "none", "bf16" or "fp16" (fp16 uses a GradScaler)
    best_metric: str = "mIoU"  # metric that selects best.pt and drives the plateau schedule
    best_mode: str = "max"  # "max" or "min"
    early_stop_patience: int = 0  # stop after this many evaluations without a new best, 0 = never
    resume: bool = True  # continue from work_dir/last.pt when it exists
    sync_bn: bool = True  # convert BatchNorm to SyncBatchNorm on CUDA with world size > 1
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # "auto", "cpu" or "cuda"


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
    class_names: list = field(default_factory=list)  # for tables and legends
    palette: list = field(default_factory=list)  # RGB per class for --show-dir


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
    """Apply ``--a.b=value`` overrides in place and return them as ``a.b=value`` strings.

    Dotted paths walk dataclass fields and existing dict keys (``--model.kwargs.depth=2``).

    Raises:
        ValueError: malformed argument.
        KeyError: unknown key (the message lists close matches and the valid keys).
        TypeError: the value's type does not match the current value's.
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
    return applied


def to_dict(cfg: Config) -> dict:
    """Plain-data (JSON- and ``weights_only``-safe) form of a config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict) -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict` output (tuples restored by field type)."""
    cfg = Config()
    for section in dataclasses.fields(Config):
        if section.name == "name":
            cfg.name = d.get("name", "")
            continue
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            if f.name in d.get(section.name, {}):
                v = d[section.name][f.name]
                setattr(sub, f.name, tuple(v) if isinstance(getattr(sub, f.name), tuple) else v)
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
                            ckpt_interval=1, log_interval=20, best_metric="MCC", best_mode="max")
    cfg.eval = EvalConfig(size_divisor=32, tta_flips=["horizontal", "vertical", "both"],  # seed's 4-way TTA
                          class_names=["background", "glacier"],
                          palette=[[0, 0, 0], [0, 200, 255]])
    return cfg


@register
def unetpp_glacier_debug() -> Config:
    """Tiny U-Net++ glacier run on generated 64x64 5-band rasters (seconds on a CPU)."""
    cfg = unetpp_glacier()
    cfg.data.root = "work_dirs/unetpp_glacier_debug/data"
    cfg.data.synthetic = "glacier"
    cfg.data.batch_size, cfg.data.num_workers = 2, 0
    cfg.model.kwargs = {"decoder_channels": [32, 16, 16, 8, 8]}
    cfg.train.work_dir = "work_dirs/unetpp_glacier_debug"
    cfg.train.max_epochs, cfg.train.log_interval = 3, 2
    return cfg


@register
def demo() -> Config:
    """Small multi-class U-Net++ on the synthetic river-ice scenes (NWPU_YRCC2 layout, 4 classes)."""
    cfg = Config()
    cfg.data = DataConfig(dataset="NWPU_YRCC2", root="work_dirs/demo/data", synthetic="river_ice",
                          num_classes=4, batch_size=4, num_workers=2, train_pipeline=[
                              {"type": "RandomCrop", "crop_size": (128, 128), "cat_max_ratio": 0.75},
                              {"type": "RandomFlip", "prob": 0.5, "direction": "horizontal"},
                              {"type": "PhotoMetricDistortion"},
                              {"type": "Normalize", "mean": [123.675, 116.28, 103.53],
                               "std": [58.395, 57.12, 57.375]}],
                          test_pipeline=[{"type": "Normalize", "mean": [123.675, 116.28, 103.53],
                                          "std": [58.395, 57.12, 57.375]}])
    cfg.model = ModelConfig(name="unetpp", num_classes=4,
                            kwargs={"decoder_channels": [64, 32, 32, 16, 16]})
    cfg.loss = LossConfig(name="ce")
    cfg.optim = OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01, no_decay=["bn", "bias"], clip_grad=1.0)
    cfg.schedule = ScheduleConfig(name="cosine", warmup_iters=20, min_lr=1e-5)
    cfg.train = TrainConfig(work_dir="work_dirs/demo", max_iters=300, val_interval=100,
                            ckpt_interval=100, log_interval=10, best_metric="mIoU")
    cfg.eval = EvalConfig(size_divisor=32, tta_scales=[0.75, 1.0, 1.25], tta_flips=["horizontal"],
                          class_names=["land", "water", "shore ice", "streaming"],
                          palette=[[0, 0, 0], [0, 255, 0], [0, 255, 255], [255, 0, 255]])
    return cfg
