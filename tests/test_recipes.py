"""Recipes as the seeds state them: norm-type weight decay, SyncBN exclusions, TTA scales relative to the
original image, and the AutoICE schedule (ReduceLROnPlateau min_lr/cooldown, early stopping on validation
loss with min_delta) with test.py scoring a bf16 checkpoint exactly as validation did."""

import json

import pytest
import torch
from torch import nn

import configs
from iceseg.evaluation import SegEvaluator
from iceseg.schedule import EarlyStopping, Plateau
from iceseg.segmentor import NORM_TYPES, build_model, convert_sync_batchnorm, param_groups
from tests.conftest import assert_scores_equal_validation, run_script


def test_seed_recipe_defaults():
    a = configs.get_config("deeplab_autoice")  # spec autoice.md §2.5
    assert (a.train.early_stop_metric, a.train.early_stop_mode, a.train.early_stop_patience) == ("loss", "min", 80)
    assert a.train.early_stop_min_delta == 1e-8 and a.schedule.plateau_min_lr == 1e-8
    assert (a.schedule.plateau_metric, a.schedule.plateau_patience, a.schedule.plateau_factor) == ("loss", 4, 0.5)
    i = configs.get_config("icesegnet_yrcc2")
    assert i.train.sync_bn_exclude == ["neck"] and i.eval.tta_scale_base == "original"
    assert i.eval.tta_scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # spec icesegnet.md §3.3
    assert configs.get_config("unetpp_loveda").optim.no_decay_norm


@pytest.mark.parametrize("mode,cooldown,min_lr", [("min", 0, 0.0), ("min", 2, 0.02), ("max", 1, 0.0)])
def test_plateau_follows_torch_reduce_lr_on_plateau(mode, cooldown, min_lr):
    values = [5, 4, 4, 4.0001, 4, 3, 3, 3, 3, 3, 3, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]
    values = values if mode == "min" else [10 - v for v in values]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=1, threshold=1e-3,
                                                     cooldown=cooldown, min_lr=min_lr)
    ours = Plateau(0.1, mode, factor=0.5, patience=1, threshold=1e-3, cooldown=cooldown, min_lr=min_lr)
    lrs = []
    for v in values:
        ref.step(v)
        ours.step(v)
        assert 0.1 * ours.state["scale"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) >= 3  # the sequence really cuts (and, with min_lr, stops at it)


def test_early_stopping_counts_only_improvements_beyond_min_delta():
    es = EarlyStopping("min", patience=3, min_delta=0.1)
    assert [es.step(v) for v in (1.0, 0.95, 0.85, 0.8, 0.79, 0.76)] == [False] * 5 + [True]
    assert es.state == {"best": 0.85, "stale": 3}  # 0.95, then 0.8, 0.79, 0.76 are within 0.1 of the best
    assert not any(EarlyStopping("max", patience=0).step(v) for v in (3, 2, 1))  # patience 0: never


def test_no_decay_norm_is_decided_by_module_type():
    cfg = configs.get_config("unetpp_loveda_debug")
    model = build_model(cfg)
    wd = {id(p): g["weight_decay"] for g in param_groups(model, cfg.optim) for p in g["params"]}
    names = dict(model.named_parameters())
    norm = {n for m_name, m in model.named_modules() if isinstance(m, NORM_TYPES)
            for n in (f"{m_name}.weight", f"{m_name}.bias") if n in names}
    smp_style = [n for n in norm if "bn" not in n]  # e.g. decoder.blocks.x_0_0.conv1.1.weight
    assert smp_style and len(norm) > 20
    assert all(wd[id(names[n])] == 0.0 for n in norm)
    assert all(wd[id(p)] == cfg.optim.weight_decay for n, p in names.items() if n not in norm and "bias" not in n)
    cfg.optim.no_decay_norm, cfg.optim.no_decay = False, []
    assert {g["weight_decay"] for g in param_groups(model, cfg.optim)} == {cfg.optim.weight_decay}


def test_sync_batchnorm_conversion_leaves_sefpn_per_process():
    cfg = configs.get_config("icesegnet_yrcc2_debug")
    model = convert_sync_batchnorm(build_model(cfg), cfg.train.sync_bn_exclude)
    bns = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    neck = {n: t for n, t in bns.items() if n.startswith("neck.")}
    heads = {n: t for n, t in bns.items() if not n.startswith("neck.")}
    assert len(neck) == 4 and set(neck.values()) == {nn.BatchNorm2d}  # SEFPN's extra BNs (spec §1.3)
    assert heads and set(heads.values()) == {nn.SyncBatchNorm}
    assert all(isinstance(m, nn.SyncBatchNorm) for m in convert_sync_batchnorm(build_model(cfg)).modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))


class SizeRecorder(nn.Module):
    """Zero logits of 4 classes at the input size; records every input size."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, img):
        self.sizes.append(tuple(img.shape[-2:]))
        return img.new_zeros(img.shape[0], 4, *img.shape[-2:])


@pytest.mark.parametrize("hw", [(640, 1600), (160, 400)])
def test_tta_scales_multiply_the_original_image(hw):
    cfg = configs.get_config("icesegnet_yrcc2")  # test resize (2048, 1024), 6 scales x flip
    model, (H, W) = SizeRecorder(), hw
    probs = SegEvaluator(cfg, torch.device("cpu")).predict(model, torch.zeros(1, 3, H, W), tta=True)
    assert probs.shape == (1, 4, H, W)
    expected = [(int(H * s + 0.5), int(W * s + 0.5)) for s in cfg.eval.tta_scales for _ in range(2)]
    assert model.sizes == expected  # 640x1600: 320x800 .. 1120x2800 (spec §3.3), whatever the test resize
    model.sizes.clear()
    SegEvaluator(cfg, torch.device("cpu")).predict(model, torch.zeros(1, 3, H, W), tta=False)
    assert model.sizes == [(819, 2048)]  # the single-scale test resize still applies
    cfg.eval.tta_scale_base = "resized"
    model.sizes.clear()
    SegEvaluator(cfg, torch.device("cpu")).predict(model, torch.zeros(1, 3, H, W), tta=True)
    assert model.sizes[4] == (819, 2048)  # scale 1.0 of the resized image


def test_autoice_plateau_early_stop_and_bf16_test_script_equal_validation(tmp_path):
    wd, data = tmp_path / "run", tmp_path / "data"
    # patience 0 and threshold 1 (nothing counts as better): eval 2 cuts 1e-3 -> 5e-4, eval 3 is in the
    # cooldown, eval 4 cuts to max(2.5e-4, min_lr 3e-4). Early stopping: nothing beats the best by 1e9,
    # so after 3 stale evaluations (epoch 4 of 5) the run stops.
    proc = run_script(["train.py", "--config", "deeplab_autoice_debug", f"--train.work_dir={wd}", f"--data.root={data}",
                       "--train.amp=bf16", "--train.max_epochs=5", "--schedule.plateau_patience=0",
                       "--schedule.plateau_threshold=1.0", "--schedule.plateau_cooldown=1",
                       "--schedule.plateau_min_lr=3e-4", "--train.early_stop_patience=3",
                       "--train.early_stop_min_delta=1e9"], cwd=tmp_path)
    cuts = [line for line in proc.stdout.splitlines() if line.startswith("plateau:")]
    assert cuts == ["plateau: lr reduced to 0.0005", "plateau: lr reduced to 0.0003"], proc.stdout[-3000:]
    assert "early stop: loss did not improve by more than 1e+09 in 3 evaluations" in proc.stdout
    rows = [json.loads(x) for x in (wd / "log.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in rows if r["event"] == "train") == 4 and "done: 16 iterations" in proc.stdout
    assert {r["lr"] for r in rows if r["event"] == "train" and r["epoch"] >= 3} == {5e-4}
    run_script(["test.py", "--config", "deeplab_autoice_debug", "--checkpoint", str(wd / "best.pt"),
                f"--data.root={data}", "--train.amp=bf16", "--out", str(tmp_path / "m.json")], cwd=tmp_path)
    assert_scores_equal_validation(wd, json.loads((tmp_path / "m.json").read_text()))
