import dataclasses
import json

import pytest
import torch

import configs
from iceseg.segmentor import build_model


@pytest.mark.parametrize("name", configs.list_configs())
def test_every_config_builds_a_model_that_runs(name):
    cfg = configs.get_config(name)
    assert cfg.name == name
    model = build_model(cfg).eval()
    x = torch.randn(1, cfg.data.in_channels, 70, 90)  # odd size: exercises size_divisor padding
    with torch.no_grad():
        out = model(x)
    outs = out.values() if isinstance(out, dict) else [out]  # multi-task segmentors: {task: (B, K_t, H, W)}
    assert all(o.shape[0] == 1 and o.shape[-2:] == (70, 90) and torch.isfinite(o).all() for o in outs)
    if not isinstance(out, dict):
        assert out.shape == (1, cfg.model.num_classes, 70, 90)


def test_unknown_config_lists_close_matches():
    with pytest.raises(KeyError, match="Did you mean unetpp_glacier"):
        configs.get_config("unetpp_glaciers")


def test_overrides_parse_and_type_check():
    cfg = configs.get_config("demo")
    applied = configs.apply_overrides(cfg, ["--optim.lr=1", "--train.max_iters=7", "--train.amp=bf16",
                                            "--eval.crop_size=[64, 96]", "--model.arch.feedforward_channels=[8, 8, 8]",
                                            "--train.resume=False"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int -> float promotion
    assert cfg.train.max_iters == 7 and cfg.train.amp == "bf16" and cfg.train.resume is False
    assert cfg.eval.crop_size == (64, 96)  # list coerced to the field's tuple
    assert cfg.model.arch.feedforward_channels == [8, 8, 8]
    assert len(applied) == 6


@pytest.mark.parametrize("arg,exc,msg", [
    ("--optim.lrr=1e-4", KeyError, "Did you mean lr"),
    ("--optimizer.lr=1e-4", KeyError, "config has no 'optimizer'"),
    ("--train.max_iters=1.5", TypeError, "expected int"),
    ("--train.resume=1", TypeError, "expected True or False"),
    ("--model.arch.nope=1", KeyError, "has no 'nope'"),
    ("--model.arch.num_heads=8", TypeError, "--model.arch.num_heads: expected list"),
    ("--model.arch.backbone.depths=2", TypeError, "--model.arch.backbone.depths: expected tuple"),
    ("--model.arch.backbone=1", KeyError, "is a section"),
    ("--train", ValueError, "--section.key=value"),
    ("--optim=1", KeyError, "is a section"),
])
def test_bad_overrides_raise_clear_errors(arg, exc, msg):
    with pytest.raises(exc, match=msg):
        configs.apply_overrides(configs.get_config("demo"), [arg])


def test_config_json_round_trip():
    cfg = configs.get_config("unetpp_glacier")
    configs.apply_overrides(cfg, ["--eval.stride=[100, 120]"])
    d = json.loads(json.dumps(configs.to_dict(cfg)))
    back = configs.from_dict(d)
    assert configs.to_dict(back) == configs.to_dict(cfg)
    assert back.eval.stride == (100, 120) and back.optim.betas == (0.9, 0.999)  # tuples restored
    assert back.model == cfg.model and back.train == cfg.train


def test_model_hyper_parameters_are_named_typed_fields():
    d = dataclasses.asdict(configs.get_config("icesegnet_yrcc2"))
    arch = d["model"]["arch"]
    assert "kwargs" not in d["model"] and arch["feedforward_channels"] == [2048, 1024, 512]
    assert arch["num_heads"] == [16, 8, 4] and arch["edge_mode"] == "published" and arch["neck_channels"] == 768
    assert arch["backbone"]["embed_dim"] == 192 and arch["backbone"]["depths"] == (2, 2, 18, 2)  # Swin-L
    assert dataclasses.asdict(configs.get_config("deeplab_autoice"))["model"]["arch"]["tasks"] == {
        "SIC": 1, "SOD": 7, "FLOE": 8}
    cfg = configs.get_config("icesegnet_yrcc2_debug")
    configs.apply_overrides(cfg, ["--model.arch.num_heads=[2, 2, 2]", "--model.arch.backbone.window_size=4"])
    model = build_model(cfg)
    assert [s.ffn.layers[0][0].out_features for s in model.decode_head.kernel_update_head] == [64, 32, 16]
    assert [s.attention.attn.num_heads for s in model.decode_head.kernel_update_head] == [2, 2, 2]
    assert model.backbone.config.window_size == 4


@pytest.mark.parametrize("name", configs.list_configs())
def test_every_config_round_trips_through_plain_data(name):
    cfg = configs.get_config(name)
    d = json.loads(json.dumps(configs.to_dict(cfg)))
    back = configs.from_dict(d)
    assert configs.to_dict(back) == configs.to_dict(cfg) and back.model == cfg.model  # pipelines hold JSON lists
    assert type(back.model.arch) is configs.MODEL_ARCHS[cfg.model.name]


def test_config_stored_with_model_kwargs_still_loads():
    """Checkpoints written before the typed families hold ``model.kwargs`` over the builder defaults."""
    for name, kwargs in [
        ("demo", {"backbone": {"preset": "swin_tiny", "embed_dim": 32, "depths": [2, 2, 2, 2],
                               "num_heads": [1, 2, 4, 8], "drop_path_rate": 0.1},
                  "neck_channels": 64, "channels": 64, "feedforward_channels": [256, 128, 64],
                  "num_heads": [8, 4, 2], "aux_channels": 32, "edge_mode": "published"}),
        ("unetpp_glacier_debug", {"decoder_channels": [32, 16, 16, 8, 8]}),
        ("deeplab_autoice_debug", {"tasks": {"SIC": 1, "SOD": 7, "FLOE": 8}, "pool": "avg2", "layers": [1, 1, 1],
                                   "aspp_channels": 8}),
    ]:
        cfg = configs.get_config(name)
        old = configs.to_dict(cfg)
        del old["model"]["arch"]
        old["model"]["kwargs"] = kwargs
        back = configs.from_dict(old)
        assert back.model == cfg.model and configs.to_dict(back) == configs.to_dict(cfg), name
