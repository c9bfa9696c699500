"""Benchmark every iceseg model against its reference implementation in the same run.

    python dev/benchmark.py [--cases all|a,b,...] [--repeats 3] [--warmup 0] [--mem-passes 1] [--mem-procs 3] [--device cpu] [--threads 2]
                        [--json bench.json] [--quick] [--no-ref] [--plain] [--amp none|bf16|fp16] [--vs-fp32]
                        [--compile] [--malloc as-run|glibc|no-mmap]

Dev tool (not part of the library). Each implementation of each case runs in two fresh subprocesses
(``--worker CASE --impl NAME --what time|memory``) that build our model and, when the reference library imports,
the reference model with the SAME weights (the reference's own initialisation loaded into ours through our
converters: ``convert_timm_swin``, ``convert_mmseg_segmentor``, ``convert_smp_unetpp``,
``convert_seed_checkpoint``), then drop the other one. Ours runs the way its config runs it (``optim.fused``
AdamW, ``train.channels_last`` for U-Net++ and DeepLab); a reference runs as its library ships (torch's default
AdamW, NCHW). The time process runs one pass under ``torch.utils.flop_counter.FlopCounterMode`` (also the first
warm-up), ``--warmup`` more, then ``--repeats`` timed passes: median latency (s), images/s (batch / median),
FLOPs of one pass, achieved GFLOP/s and its share of the machine's fp32 matmul throughput (case ``matmul``:
``torch.matmul`` of two 4096 x 4096 matrices, MKL sgemm on this CPU build; case ``matmul_onednn``: the same
product as a 1x1 convolution on oneDNN). The memory process runs one warm-up pass, then ``--mem-passes`` passes,
each measured on its own, and reports the largest. On CPU that is the peak-RSS increase over the pass: before it,
``malloc_trim(0)`` hands free heap pages back to the kernel, the kernel's high-water mark ``VmHWM`` is reset
through ``/proc/self/clear_refs`` and ``VmRSS`` is read; after it, ``VmHWM - VmRSS_before``. The memory process
starts with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``, whatever ``--malloc`` says), so
every block of 1 MiB or more, from the first, is mapped when allocated and unmapped when freed, and RSS follows
the live tensors plus library scratch (oneDNN's) rather than which free heap pages a block happened to land on
(ours' train steps too: ``train.malloc``, below, applies to the time processes only).
With glibc's sliding threshold (or one pinned only after the model was built), large blocks reused heap chunks
freed earlier, a pass's RSS counted every page it touched, and the same pass of the same model varied by up to
2x between processes (DeepLab 768^2: 157-216 MiB); with the fixed threshold it repeats to ~1 MiB and matches the
live-tensor peak of ``dev/tensor_peak.py`` (Swin-L inference: 148.8 vs 147.3 MiB). ``--mem-procs`` (3) such
processes still run and the median is reported (all are in the JSON). On CUDA: ``torch.cuda.max_memory_allocated``
over the pass minus the memory allocated before it.

A train step is forward + loss + backward + ``AdamW.step`` + ``zero_grad``, batch 1 unless the case says.
``--malloc as-run`` (default): ours' train steps run with the config's ``train.malloc`` as ``train.py`` sets it
(``keep``: :func:`iceseg.fast.keep_freed_memory`, applied in the time process once the models are built; recorded
as each implementation's ``malloc``), the references and our inference with glibc's defaults, as ``test.py`` and
their libraries run; ``glibc``: glibc's defaults for every process; ``no-mmap``: ``MALLOC_MMAP_MAX_=0`` and no
trimming for every time process. Since the memory processes measure live tensors, the time process also reports
``process_rss_mib`` (CPU): how far its resident memory rose over all its passes (``VmHWM`` after them minus
``VmRSS`` before them, after ``malloc_trim(0)``), under its own allocator setting: what a user's process holds,
free heap pages included.
``--amp bf16|fp16`` runs every pass, ours and each reference, under ``torch.autocast`` of that dtype (weights
fp32; recorded as ``machine.amp`` in the JSON), so a bf16 and an fp32 run compare case by case; the ``matmul``
rate cases then measure the autocast product too. ``--vs-fp32`` (with ``--amp``) adds ours without autocast as the
``fp32`` rows of the same run (ratios: ours under autocast / ours fp32; the speed-up is the inverse).
``--compile`` runs ours under ``torch.compile`` (applied to the model after the fast paths, as ``train.compile``
does in train.py) and, in place of the references, ours eager as the ``eager`` rows (ratios: compiled / eager);
the first pass, which compiles, is reported apart (``first_s``; FLOPs are not counted through a compile).
Reference libraries (timm, mmseg 1.2.2 with a stub ``mmcv.ops``, smp, torchvision with the CPU op
schema workaround of pytorch/vision#9085) are only imported inside try/except; the output says which were
found. Output: a table on stdout and, with ``--json``, a JSON file ``{"machine": ..., "cases": [...]}``.
"""

import argparse
import functools
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]  # the checkout (this file is dev/benchmark.py)
sys.path.insert(0, str(ROOT))

# name -> (description, full-size settings, --quick settings)
CASES = {
    "matmul": ("fp32 matmul throughput (A @ B, square)", {"n": 4096}, {"n": 2048}),
    "matmul_onednn": ("the same product on oneDNN (1x1 conv over a channels-last view)", {"n": 4096}, {"n": 2048}),
    "swin_l_infer_512": ("Swin-L backbone inference vs timm", {"size": (512, 512)}, {"size": (64, 64)}),
    "swin_l_train_512": ("Swin-L backbone train step vs timm", {"size": (512, 512)}, {"size": (64, 64)}),
    "icesegnet_infer_512": ("IceSegNet inference", {"size": (512, 512)}, {"size": (64, 64)}),
    "icesegnet_train_512": ("IceSegNet train step", {"size": (512, 512), "batch": 2}, {"size": (64, 64), "batch": 2}),
    "icesegnet_infer_2048x819": ("IceSegNet whole-image inference", {"size": (819, 2048)}, {"size": (64, 160)}),
    "knet_infer_512": ("K-Net Swin-L inference vs mmseg", {"size": (512, 512)}, {"size": (64, 64)}),
    "knet_train_512": ("K-Net Swin-L train step vs mmseg", {"size": (512, 512), "batch": 2}, {"size": (64, 64), "batch": 2}),
    "unetpp_infer_512": ("U-Net++ R34 5-band inference vs smp", {"size": (512, 512)}, {"size": (64, 64)}),
    "unetpp_train_512": ("U-Net++ R34 5-band train step vs smp", {"size": (512, 512)}, {"size": (64, 64)}),
    "deeplab_infer_768": ("AutoICE DeepLab inference vs torchvision seed", {"size": (768, 768)}, {"size": (64, 64)}),
    "deeplab_train_768": ("AutoICE DeepLab train step vs torchvision seed", {"size": (768, 768)}, {"size": (64, 64)}),
    "deeplab_scene_2000": ("AutoICE 2000x2000 scene, tiled inference (eval crop/stride of deeplab_autoice)",
                           {"size": (2000, 2000), "crop": (1024, 1024), "stride": (768, 768)},
                           {"size": (96, 96), "crop": (64, 64), "stride": (48, 48)}),
    "distance_maps": ("Lossd class distance maps (Manhattan, K=50), batch 8 x 7 classes",
                      {"batch": 8, "size": 1024, "classes": 7}, {"batch": 2, "size": 128, "classes": 7}),
}
RATES = ("matmul", "matmul_onednn")  # throughput references, not models
HEAVY = [c for c in CASES if c not in RATES]


# ----------------------------------------------------------------------------- measurement helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak(device: torch.device) -> float:
    """Reset the peak-memory counter; return the current level in MiB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:  # give freed heap pages (e.g. the other implementation's weights) back, so they cannot be reused unseen
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    return (_status_kb("VmRSS") or 0) / 1024


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (_status_kb("VmHWM") or 0) / 1024


class _NoModuleTracker:
    """Stand-in for FlopCounterMode's ModuleTracker: per-module attribution registers grad hooks on module
    inputs, which fails under no_grad when a Parameter is a module input (K-Net's kernels); we only need
    the total, which the counter keeps under the "Global" parent."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracker()
    return counter


def measure_time(fn, device: torch.device, repeats: int, warmup: int, batch: int, count_flops: bool = True) -> dict:
    """Run ``fn`` once under FlopCounterMode, ``warmup`` more times, then ``repeats`` timed times; on CPU also the
    rise of the process's resident memory over all of them (``process_rss_mib``)."""
    flops = None
    rss0 = _reset_peak(device) if device.type == "cpu" else None
    t0 = time.perf_counter()
    if count_flops:
        counter = _flop_counter()
        with counter:
            fn()
        flops = int(counter.get_total_flops())
    else:
        fn()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "times_s": times, "first_s": first, "images_per_s": batch / med,
            "flops": flops, "gflops_per_s": flops / med / 1e9 if flops else None,
            "process_rss_mib": _peak(device) - rss0 if rss0 is not None else None}


def measure_memory(fn, device: torch.device, passes: int) -> dict:
    """One warm-up pass (one-time allocations: oneDNN kernels, caches), then ``passes`` (>= 1) passes, each
    measured on its own (see the module docstring); the largest is the peak."""
    fn()
    _sync(device)
    mems = []
    for _ in range(passes):
        base = _reset_peak(device)
        fn()
        _sync(device)
        mems.append(_peak(device) - base)
    return {"peak_mem_mib": max(mems), "peak_mem_passes_mib": mems}


@functools.lru_cache(maxsize=None)  # one module object per script: refenv's op library must stay alive
def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"iceseg_bench_{name}", ROOT / "dev" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tv_schemas() -> None:
    """Let the PyPI torchvision wheel import on CPU torch (dev/refenv.py, pytorch/vision#9085)."""
    _load_script("refenv").allow_torchvision_import()


def _mmseg_models():
    """mmseg's MODELS registry with a stub ``mmcv.ops`` (mmcv-lite has no compiled ops; dev/refenv.py)."""
    refenv = _load_script("refenv")
    refenv.allow_torchvision_import()
    refenv.stub_mmcv_ops()
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    return MODELS


def _train_fn(model, loss_fn, fused: bool = False):
    """forward + loss + backward + AdamW step + zero_grad(set_to_none). ``fused``: one fused kernel (what
    train.py uses with ``optim.fused``, our default); else torch's default implementation (the references')."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=1e-4, fused=fused or None)

    def step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _rand(shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, shape, generator=g).float() / 64 - 2).to(device)


def _feat_loss(outs) -> torch.Tensor:
    if isinstance(outs, dict):
        outs = list(outs.values())
    return sum(o.float().pow(2).mean() for o in outs)


# ----------------------------------------------------------------------------- cases
def case_matmul(s, device, quick, use_ref):
    n = s["n"]
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return {"batch": 1, "impls": {"ours": lambda: a @ b}, "refs_found": {}}


def case_matmul_onednn(s, device, quick, use_ref):
    n = s["n"]
    a = torch.randn(1, n, 1, n, device=device).permute(0, 3, 1, 2)  # (1, n, n, 1) channels-last view of A
    b = torch.randn(n, n, 1, 1, device=device)  # B^T as 1x1 filters
    return {"batch": 1, "impls": {"ours": lambda: F.conv2d(a, b)}, "refs_found": {}}


_OURS_TRAIN_MALLOC: dict = {}  # {"malloc": train.malloc of the config our train-step case runs}


def _ours_as_configured(model, config: str, train: bool):
    """Our model (weights loaded) the way train.py (``train``) or test.py runs config ``config``:
    ``(model, optim.fused)``. ``iceseg.fast.optimize`` applied (``train.fast_paths``) unless ``--plain``;
    ``train.channels_last`` applied (NCHW input, as the data loader gives it: the convs switch to NHWC); for
    inference eval mode and, with ``eval.fuse_conv_bn`` (not with ``--plain``), BatchNorm folded into the convs,
    and under ``--amp`` the weights stored in its dtype (``iceseg.fast.autocast_weights``, as
    ``build_inference_model`` does for test.py and predict.py). Modifies ``model`` in place."""
    import configs
    from iceseg.fast import autocast_weights, fuse_conv_bn, optimize
    from iceseg.inference import autocast_dtype

    cfg = configs.get_config(config)
    if train:  # read by worker(): train.py applies train.malloc to its whole process
        _OURS_TRAIN_MALLOC["malloc"] = cfg.train.malloc
    plain = os.environ.get("ICESEG_BENCH_PLAIN") == "1"
    if cfg.train.fast_paths and not plain:
        optimize(model)
    if not train and cfg.eval.fuse_conv_bn and not plain:
        model = fuse_conv_bn(model.eval())
    amp = autocast_dtype(os.environ.get("ICESEG_BENCH_AMP", "none"), next(model.parameters()).device)
    if not train and amp is not None and cfg.train.fast_paths and not plain:
        model = autocast_weights(model.eval(), amp)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if os.environ.get("ICESEG_BENCH_COMPILE") == "1":  # --compile: as train.py's train.compile does
        model = torch.compile(model)
    return model, cfg.optim.fused


def _bench_fns(runs: dict, models: dict, train: bool, loss=None, fused: bool = False) -> dict:
    """``{impl: callable}``: a train step (loss of ``run()`` backpropagated) or a ``no_grad`` forward.
    ``fused`` applies to our optimizer only; the references keep torch's default."""
    fns = {}
    for name, run in runs.items():
        m = models[name]
        if train:
            m.train()
            fns[name] = _train_fn(m, lambda run=run: (loss or _feat_loss)(run()), fused and name == "ours")
        else:
            m.eval()
            fns[name] = torch.no_grad()(run)
    return fns


def _swin(s, device, quick, use_ref, train):
    from iceseg.models.swin import SwinTransformer, convert_timm_swin, swin_large, swin_tiny

    H, W = s["size"]
    preset, timm_name = (swin_tiny, "swin_tiny_patch4_window7_224") if quick else \
        (swin_large, "swin_large_patch4_window7_224")
    ours = SwinTransformer(preset(drop_path_rate=0.3)).to(device)
    impls, refs, found = {"ours": ours}, {}, {}
    if use_ref:
        try:
            _tv_schemas()
            import timm

            ref = timm.create_model(timm_name, pretrained=False, img_size=(H, W), always_partition=True,
                                    strict_img_size=False, drop_path_rate=0.3).to(device)
            ours.load_state_dict(convert_timm_swin(ref.state_dict()), strict=False)
            refs["timm"] = ref
            found["timm"] = timm.__version__
        except Exception as e:  # noqa: BLE001
            found["timm"] = f"not available: {type(e).__name__}: {e}"[:200]
    x = _rand((1, 3, H, W), device)
    impls["ours"], fused = _ours_as_configured(ours, "icesegnet_yrcc2", train)
    models = {**impls, **refs}
    runs = {name: (lambda m=m: m(x)) if name == "ours" else (lambda m=m: m.forward_intermediates(x, intermediates_only=True))
            for name, m in models.items()}
    return {"batch": 1, "impls": _bench_fns(runs, models, train, fused=fused), "refs_found": found}


def case_swin_l_infer_512(s, device, quick, use_ref):
    return _swin(s, device, quick, use_ref, train=False)


def case_swin_l_train_512(s, device, quick, use_ref):
    return _swin(s, device, quick, use_ref, train=True)


def _seg_cfg(name, quick):
    import configs
    from iceseg.models.swin import swin_tiny

    cfg = configs.get_config(name)
    cfg.model.pretrained = ""
    if quick:
        cfg.model.arch.backbone = swin_tiny(drop_path_rate=0.3)
    return cfg


def _segmentor_fns(model, x, label, train, config: str):
    model, fused = _ours_as_configured(model, config, train)
    if train:
        model.train()
        return _train_fn(model, lambda: sum(model(x, label).values()), fused)
    model.eval()
    return torch.no_grad()(lambda: model(x))


def _seg_setup(name: str, s: dict, device, quick: bool):
    """(cfg, our segmentor on ``device`` (not yet :func:`_ours_as_configured`), input (B, 3, H, W), label (B, H, W),
    B) for config ``name``."""
    from iceseg.segmentor import build_model

    cfg = _seg_cfg(name, quick)
    (H, W), B = s["size"], s.get("batch", 1)
    model = build_model(cfg).to(device)
    x = _rand((B, 3, H, W), device)
    label = torch.randint(0, cfg.model.num_classes, (B, H, W), generator=torch.Generator().manual_seed(1)).to(device)
    return cfg, model, x, label, B


def _icesegnet(s, device, quick, use_ref, train):
    _, model, x, label, B = _seg_setup("icesegnet_yrcc2", s, device, quick)
    return {"batch": B, "impls": {"ours": _segmentor_fns(model, x, label, train, "icesegnet_yrcc2")}, "refs_found": {}}


def case_icesegnet_infer_512(s, device, quick, use_ref):
    return _icesegnet(s, device, quick, use_ref, False)


def case_icesegnet_train_512(s, device, quick, use_ref):
    return _icesegnet(s, device, quick, use_ref, True)


def case_icesegnet_infer_2048x819(s, device, quick, use_ref):
    return _icesegnet(s, device, quick, use_ref, False)


def _knet(s, device, quick, use_ref, train):
    from iceseg.segmentor import convert_mmseg_segmentor

    cfg, ours, x, label, B = _seg_setup("knet_yrcc2", s, device, quick)
    H, W = s["size"]
    fns, found = {}, {}
    if use_ref:
        try:
            MODELS = _mmseg_models()
            gold = _load_script("make_golden_knet")
            rc = gold.reference_config()
            rc["decode_head"]["kernel_generate_head"]["num_classes"] = cfg.model.num_classes
            rc["auxiliary_head"]["num_classes"] = cfg.model.num_classes
            if not quick:  # Swin-L (mmseg knet-s3_swin-l_upernet)
                rc["backbone"].update(embed_dims=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48])
                rc["decode_head"]["kernel_generate_head"]["in_channels"] = [192, 384, 768, 1536]
                rc["auxiliary_head"]["in_channels"] = 768
            ref = MODELS.build(rc).to(device)
            ours.load_state_dict(convert_mmseg_segmentor(ref.state_dict()), strict=True)
            from importlib.metadata import version

            from mmengine.structures import PixelData
            from mmseg.structures import SegDataSample

            meta = [dict(img_shape=(H, W))] * B
            if train:
                samples = []
                for b in range(B):
                    sample = SegDataSample()
                    sample.gt_sem_seg = PixelData(data=label[b][None])
                    sample.set_metainfo(dict(img_shape=(H, W), ori_shape=(H, W)))
                    samples.append(sample)
                ref.train()
                fns["mmseg"] = _train_fn(ref, lambda: sum(v for k, v in ref.loss(x, samples).items() if "loss" in k))
            else:
                ref.eval()
                fns["mmseg"] = torch.no_grad()(lambda: ref.encode_decode(x, meta))
            found["mmseg"] = version("mmsegmentation")
        except Exception as e:  # noqa: BLE001
            found["mmseg"] = f"not available: {type(e).__name__}: {e}"[:200]
    fns["ours"] = _segmentor_fns(ours, x, label, train, "knet_yrcc2")  # after the reference's weights are in
    return {"batch": B, "impls": fns, "refs_found": found}


def case_knet_infer_512(s, device, quick, use_ref):
    return _knet(s, device, quick, use_ref, False)


def case_knet_train_512(s, device, quick, use_ref):
    return _knet(s, device, quick, use_ref, True)


def _unetpp(s, device, quick, use_ref, train):
    from iceseg.models.unetpp import UNetPlusPlus, convert_smp_unetpp

    H, W = s["size"]
    ours = UNetPlusPlus(in_channels=5, num_classes=1).to(device)
    models, found = {"ours": ours}, {}
    if use_ref:
        try:
            _tv_schemas()
            import segmentation_models_pytorch as smp

            ref = smp.UnetPlusPlus("resnet34", encoder_weights=None, in_channels=5, classes=1).to(device)
            ours.load_state_dict(convert_smp_unetpp(ref.state_dict()), strict=True)
            models["smp"] = ref
            found["smp"] = smp.__version__
        except Exception as e:  # noqa: BLE001
            found["smp"] = f"not available: {type(e).__name__}: {e}"[:200]
    x = torch.rand(1, 5, H, W, generator=torch.Generator().manual_seed(0)).to(device)
    target = (torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(1)) > 0.5).float().to(device)
    models["ours"], fused = _ours_as_configured(ours, "unetpp_glacier", train)
    runs = {name: (lambda m=m: m(x)) for name, m in models.items()}
    fns = _bench_fns(runs, models, train, lambda out: F.binary_cross_entropy_with_logits(out, target), fused)
    return {"batch": 1, "impls": fns, "refs_found": found}


def case_unetpp_infer_512(s, device, quick, use_ref):
    return _unetpp(s, device, quick, use_ref, False)


def case_unetpp_train_512(s, device, quick, use_ref):
    return _unetpp(s, device, quick, use_ref, True)


def _deeplab_models(device, use_ref):
    from iceseg.models.deeplab import autoice_deeplab, convert_seed_checkpoint

    ours = autoice_deeplab(18).to(device)
    models, found = {"ours": ours}, {}
    if use_ref:
        try:
            gold = _load_script("make_golden_aspp")  # the seed ResNetASPP from torchvision parts; declares the op schemas
            import torchvision

            ref = gold.SeedResNetASPP().to(device)
            ours.load_state_dict(convert_seed_checkpoint(ref.state_dict()), strict=True)
            models["torchvision"] = ref
            found["torchvision"] = torchvision.__version__
        except Exception as e:  # noqa: BLE001
            found["torchvision"] = f"not available: {type(e).__name__}: {e}"[:200]
    return models, found


def _deeplab(s, device, quick, use_ref, train):
    H, W = s["size"]
    models, found = _deeplab_models(device, use_ref)
    x = _rand((1, 18, H, W), device)
    models["ours"], fused = _ours_as_configured(models["ours"], "deeplab_autoice", train)
    runs = {name: (lambda m=m: m(x)) for name, m in models.items()}  # ours: forward(img) = its logits dict
    return {"batch": 1, "impls": _bench_fns(runs, models, train, fused=fused), "refs_found": found}


def case_deeplab_infer_768(s, device, quick, use_ref):
    return _deeplab(s, device, quick, use_ref, False)


def case_deeplab_train_768(s, device, quick, use_ref):
    return _deeplab(s, device, quick, use_ref, True)


def case_deeplab_scene_2000(s, device, quick, use_ref):
    """Tiled scene inference with the AutoICE evaluator's window rule, accumulating averaged logits."""
    from iceseg.inference import window_starts

    H, W = s["size"]
    (ch, cw), (sh, sw) = s["crop"], s["stride"]
    models, found = _deeplab_models(device, use_ref)
    models["ours"] = _ours_as_configured(models["ours"], "deeplab_autoice", False)[0]
    x = _rand((1, 18, H, W), device)
    ys, xs = window_starts(H, ch, sh), window_starts(W, cw, sw)

    def scene(m, ours):
        acc, cnt = x.new_zeros(16, H, W), x.new_zeros(1, H, W)
        for y in ys:
            for x0 in xs:
                out = (m.logits if ours else m)(x[:, :, y:y + ch, x0:x0 + cw])
                out = [o if o.dim() == 4 else o[:, None] for o in out.values()]  # seed SIC is (B, H, W)
                acc[:, y:y + ch, x0:x0 + cw] += torch.cat(out, 1)[0]  # (16, ch, cw)
                cnt[:, y:y + ch, x0:x0 + cw] += 1
        return acc / cnt

    fns = {}
    for name, m in models.items():
        m.eval()
        fns[name] = torch.no_grad()(lambda m=m, o=(name == "ours"): scene(m, o))
    return {"batch": 1, "impls": fns, "refs_found": found, "tiles": len(ys) * len(xs)}


def case_distance_maps(s, device, quick, use_ref):
    from iceseg.distance import class_distance_maps

    B, S, K = s["batch"], s["size"], s["classes"]
    g = torch.Generator().manual_seed(0)
    label = F.interpolate(torch.randn(B, K, 32, 32, generator=g), size=(S, S), mode="bilinear").argmax(1)
    label[:, : S // 50] = 255
    label = label.to(device)
    return {"batch": B, "impls": {"ours": lambda: class_distance_maps(label, K, 50, "manhattan")}, "refs_found": {}}


# ----------------------------------------------------------------------------- driver
def _autocast(fn, device: torch.device, amp: str):
    """``fn`` run under ``torch.autocast(device, bf16 | fp16)`` (``--amp``; "none": ``fn`` itself). A train step runs
    whole inside it, backward included, ours and the references alike."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        return fn

    def run():
        with torch.autocast(device.type, dtype=dtype):
            return fn()

    return run


def worker(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    os.environ["ICESEG_BENCH_AMP"] = args.amp  # read by _ours_as_configured
    desc, full, quick_s = CASES[args.worker]
    s = quick_s if args.quick else full
    built = globals()[f"case_{args.worker}"](s, device, args.quick, not args.no_ref)
    batch, refs_found, tiles = built["batch"], built["refs_found"], built.get("tiles")
    res = {"case": args.worker, "description": desc, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                   for k, v in s.items()},
           "batch": batch, "refs_found": refs_found, "impls": {}}
    if tiles:
        res["tiles"] = tiles
    fns = {args.impl: _autocast(built["impls"][args.impl], device, args.amp)} if args.impl in built["impls"] else {}
    built.clear()  # drop the other implementation (its model) before measuring
    gc.collect()
    malloc = "glibc"  # ours' train step as train.py runs it: train.malloc="keep" -> iceseg.fast.keep_freed_memory
    if (args.malloc == "as-run" and args.what == "time" and args.impl not in refs_found
            and _OURS_TRAIN_MALLOC.get("malloc") == "keep"):
        from iceseg.fast import keep_freed_memory

        malloc = "keep" if keep_freed_memory() else "glibc"
    elif args.malloc == "no-mmap" and args.what == "time":
        malloc = "no-mmap"
    elif args.what == "memory":
        malloc = "mmap-1MiB"
    for name, fn in fns.items():
        try:
            if args.what == "memory":
                m = measure_memory(fn, device, args.mem_passes)
            else:
                compiled = os.environ.get("ICESEG_BENCH_COMPILE") == "1"  # FLOPs not counted through a compile
                m = measure_time(fn, device, args.repeats, args.warmup, batch, args.worker not in RATES and not compiled)
            if args.worker in RATES and args.what == "time":
                m["flops"] = 2 * s["n"] ** 3
                m["gflops_per_s"] = m["flops"] / m["median_s"] / 1e9
        except Exception as e:  # noqa: BLE001 - e.g. out of memory; keep the other implementation's figures
            m = {"error": f"{type(e).__name__}: {e}"[:300]}
        res["impls"][name] = {**m, "malloc": malloc}
        gc.collect()
    return res


def machine_info(args) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": args.device, "threads": args.threads, "cpu_count": os.cpu_count(),
            "dtype": "float32", "amp": args.amp,
            "quick": args.quick, "repeats": args.repeats, "warmup": args.warmup,
            "command": " ".join([Path(sys.executable).name, *sys.argv])}
    try:
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["load_avg_start"] = list(os.getloadavg())
    except OSError:
        pass
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(report: dict) -> str:
    peak, dnn = (report["machine"].get(k) for k in ("matmul_gflops_per_s", "onednn_gflops_per_s"))
    head = f"{'case':26s} {'impl':11s} {'median s':>9s} {'img/s':>8s} {'peak MiB':>9s} {'RSS MiB':>8s} {'GFLOP':>8s} " \
           f"{'GFLOP/s':>8s} {'%mm':>5s} {'%dnn':>5s} {'t ratio':>7s} {'m ratio':>7s}"
    lines = [head, "-" * len(head)]
    for c in report["cases"]:
        if "error" in c:
            lines.append(f"{c['case']:26s} ERROR {c['error'][:90]}")
            continue
        for name, m in c["impls"].items():
            if "error" in m:
                lines.append(f"{c['case']:26s} {name:11s} ERROR {m['error'][:80]}")
                continue
            r = c["ratios"].get(name) if name != "ours" else None
            gf = m.get("gflops_per_s")
            pct = " ".join(f"{100 * gf / r:5.0f}" if gf and r and c["case"] not in RATES else "    -" for r in (peak, dnn))
            lines.append(f"{c['case']:26s} {name:11s} {m['median_s']:9.3f} {m['images_per_s']:8.3f} "
                         f"{m.get('peak_mem_mib', float('nan')):9.0f} {m.get('process_rss_mib') or float('nan'):8.0f} "
                         f"{(m['flops'] or 0) / 1e9:8.1f} {gf or 0:8.1f} {pct} "
                         + (f"{r['time']:7.3f} {r['memory'] or float('nan'):7.3f}" if r else f"{'':7s} {'':7s}"))
        if "fp32" in c["ratios"]:
            lines.append(f"{'':26s} {report['machine']['amp']} speed-up over our fp32: {1 / c['ratios']['fp32']['time']:.2f}x")
        if report["machine"].get("compile"):
            firsts = ", ".join(f"{n} {m['first_s']:.1f} s" for n, m in c["impls"].items() if "first_s" in m)
            lines.append(f"{'':26s} first pass (torch.compile's compilation + one pass): {firsts}")
        for ref, msg in c.get("refs_found", {}).items():
            if str(msg).startswith("not available"):
                lines.append(f"{'':26s} {ref:11s} {msg[:100]}")
    lines.append("t ratio / m ratio (on each reference row): ours / reference for median time and peak memory "
                 "(< 1: ours faster / smaller); RSS MiB: the time process's resident-memory rise over its passes "
                 "(its allocator setting: JSON 'malloc'); %mm / %dnn: achieved GFLOP/s as a share of the matmul / "
                 "matmul_onednn GFLOP/s")
    return "\n".join(lines)


def _run_worker(args, env: dict, name: str, impl: str, what: str) -> dict:
    """Run ``--worker name --impl impl --what what`` in a fresh interpreter; its result dict or ``{"error": ...}``.
    ``impl`` "eager" (``--compile`` runs) is ours without torch.compile, "fp32" (``--vs-fp32``) ours without
    autocast, each reported under that name."""
    if impl in ("eager", "fp32"):  # ours without torch.compile / without autocast
        part = _run_worker(argparse.Namespace(**{**vars(args), "amp": "none"}) if impl == "fp32" else args,
                           {**env, "ICESEG_BENCH_COMPILE": "0"} if impl == "eager" else env, name, "ours", what)
        if "impls" in part:
            part["impls"] = {impl: part["impls"].pop("ours")}
        return part
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--impl", impl, "--what", what,
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--mem-passes", str(args.mem_passes),
           "--device", args.device, "--threads", str(args.threads), "--amp", args.amp, "--malloc", args.malloc] + ["--quick"] * args.quick + ["--no-ref"] * args.no_ref
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout} s"}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    part = json.loads(line[len("BENCH_RESULT "):]) if line else \
        {"error": f"worker exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    if "error" not in part and "error" in part["impls"].get(impl, {}):
        part = {"error": part["impls"][impl]["error"]}
    return part


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="all", help=f"comma list or 'all': {', '.join(CASES)}")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per implementation (median reported)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed passes after the FLOP-counting pass")
    ap.add_argument("--mem-passes", type=int, default=1, help="measured passes per memory process (max taken)")
    ap.add_argument("--mem-procs", type=int, default=3, help="memory processes per implementation (median taken)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--json", default="", help="write the report here")
    ap.add_argument("--quick", action="store_true", help="small inputs / Swin-T: a smoke run of every case")
    ap.add_argument("--no-ref", action="store_true", help="skip the reference libraries")
    ap.add_argument("--plain", action="store_true",
                    help="ours without iceseg.fast (optimize, BN folding): the reference math as the model files hold it")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case subprocess")
    ap.add_argument("--malloc", choices=("as-run", "glibc", "no-mmap"), default="as-run",
                    help="as-run: our train steps with the config's train.malloc (as train.py sets it), references "
                         "with glibc's defaults; glibc: glibc's defaults for all; no-mmap: MALLOC_MMAP_MAX_=0 + no "
                         "trimming for every time worker")
    ap.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                    help="run every case, ours and each reference, under this autocast (weights stay fp32)")
    ap.add_argument("--vs-fp32", action="store_true",
                    help="with --amp: also run ours without autocast ('fp32' rows; ratio = ours amp / ours fp32)")
    ap.add_argument("--compile", action="store_true",
                    help="ours under torch.compile (as train.compile) against ours eager ('eager' rows), no references")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--what", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.repeats, args.mem_passes, args.mem_procs) < 1 or args.warmup < 0:
        raise ValueError(f"--repeats, --mem-passes and --mem-procs must be >= 1 and --warmup >= 0, got "
                         f"{args.repeats}, {args.mem_passes}, {args.mem_procs}, {args.warmup}")
    if args.worker:
        print("BENCH_RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    names = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise ValueError(f"--cases: unknown {unknown}; valid: {', '.join(CASES)}")
    report = {"machine": machine_info(args), "cases": []}
    report["machine"]["mode"] = "plain" if args.plain else "optimized"  # iceseg.fast applied to ours or not
    report["machine"]["compile"] = args.compile
    report["machine"]["vs_fp32"] = args.vs_fp32 and args.amp != "none"
    os.environ["ICESEG_BENCH_PLAIN"] = "1" if args.plain else "0"  # read by the worker processes
    os.environ["ICESEG_BENCH_COMPILE"] = "1" if args.compile else "0"
    args.no_ref = args.no_ref or args.compile
    env = dict(os.environ)
    if args.malloc == "no-mmap":  # glibc: serve every block from the heap and keep it: no page faults per pass
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**40))
    report["machine"]["malloc"] = args.malloc  # memory processes: fixed 1 MiB threshold unless ours sets train.malloc
    mem_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    mem_env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    for name in names:
        t = time.perf_counter()
        res, todo = None, ["ours"]
        while todo:  # fresh processes per implementation: one times it, one measures its memory
            impl = todo.pop(0)
            part = _run_worker(args, env, name, impl, "time")
            if "error" not in part:
                mems = [_run_worker(args, mem_env, name, impl, "memory") for _ in range(args.mem_procs)]
                errors = [m["error"] for m in mems if "error" in m]
                peaks = [m["impls"][impl]["peak_mem_mib"] for m in mems if "error" not in m]
                part["impls"].setdefault(impl, {}).update(
                    {"memory_error": errors[0]} if errors else
                    {"peak_mem_mib": statistics.median(peaks), "peak_mem_procs_mib": peaks,
                     "peak_mem_passes_mib": [m["impls"][impl]["peak_mem_passes_mib"] for m in mems]})
            if "error" in part:
                part = {"impls": {impl: {"error": part["error"]}}}
            if res is None:
                res = {"case": name, **part} if "case" in part else {"case": name, "impls": {}, "refs_found": {},
                                                                     **part}
                todo = [r for r, v in res.get("refs_found", {}).items() if not str(v).startswith("not available")]
                if args.compile:
                    todo = ["eager"]
                elif args.vs_fp32 and args.amp != "none":
                    todo.append("fp32")
            else:
                res["impls"].update(part["impls"])
        ours = res["impls"].get("ours", {})
        res["ratios"] = {r: {"time": ours["median_s"] / m["median_s"],
                             "memory": ours["peak_mem_mib"] / m["peak_mem_mib"]
                             if m.get("peak_mem_mib", 0) > 0 and "peak_mem_mib" in ours else None}
                         for r, m in res["impls"].items() if r != "ours" and "median_s" in m and "median_s" in ours}
        res["wall_s"] = time.perf_counter() - t
        report["cases"].append(res)
        print(f"[{name}] done in {res['wall_s']:.1f} s", file=sys.stderr, flush=True)
    for rate, key, frac in (("matmul", "matmul_gflops_per_s", "fraction_of_matmul"),
                            ("matmul_onednn", "onednn_gflops_per_s", "fraction_of_onednn")):
        mm = next((c for c in report["cases"] if c["case"] == rate and "ours" in c.get("impls", {})), None)
        peak = mm["impls"]["ours"].get("gflops_per_s") if mm else None
        report["machine"][key] = peak
        for c in report["cases"]:
            for m in c.get("impls", {}).values():
                if peak and m.get("gflops_per_s") and c["case"] not in RATES:
                    m[frac] = m["gflops_per_s"] / peak
    try:
        report["machine"]["load_avg_end"] = list(os.getloadavg())
    except OSError:
        pass
    found = {k: v for c in report["cases"] for k, v in c.get("refs_found", {}).items()}
    print(f"machine: {report['machine'].get('cpu', '?')}, {args.threads} threads, torch {torch.__version__}, "
          f"device {args.device}, load {report['machine'].get('load_avg_start')} -> "
          f"{report['machine'].get('load_avg_end')}")
    print("references: " + (", ".join(f"{k} {v}" for k, v in found.items()) or "none requested"))
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
