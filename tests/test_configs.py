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
                                            "--eval.crop_size=[64, 96]", "--model.kwargs.feedforward_channels=[8, 8, 8]",
                                            "--train.resume=False"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int -> float promotion
    assert cfg.train.max_iters == 7 and cfg.train.amp == "bf16" and cfg.train.resume is False
    assert cfg.eval.crop_size == (64, 96)  # list coerced to the field's tuple
    assert cfg.model.kwargs["feedforward_channels"] == [8, 8, 8]
    assert len(applied) == 6


@pytest.mark.parametrize("arg,exc,msg", [
    ("--optim.lrr=1e-4", KeyError, "Did you mean lr"),
    ("--optimizer.lr=1e-4", KeyError, "config has no 'optimizer'"),
    ("--train.max_iters=1.5", TypeError, "expected int"),
    ("--train.resume=1", TypeError, "expected True or False"),
    ("--model.kwargs.nope=1", KeyError, "has no 'nope'"),
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
