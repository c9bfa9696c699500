"""Messages a user can act on: bad data found before training (all files at once, one line each, no
traceback), one line for a bad sample met inside a DataLoader worker under torchrun, short checkpoint errors
that name the trained config, resume across world sizes, config introspection and range checks, strict
metrics JSON, pictures with legends, and weights for a model file copied alone."""

import importlib.util
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import configs
from iceseg.checkpoint import check_resume, load_checkpoint, save_checkpoint
from iceseg.data import check_dataset, file_header, loader_error
from iceseg.evaluation import json_safe, with_legend
from iceseg.segmentor import build_model
from iceseg.synthetic import make_glacier_dataset
from tests.conftest import ROOT, run_script

GLACIER = ["--config", "unetpp_glacier_debug", "--train.max_epochs=0", "--train.max_iters=2",
           "--train.val_interval=2", "--train.ckpt_interval=2", "--train.log_interval=1"]


def _glacier(tmp_path):
    return make_glacier_dataset(tmp_path / "data")


# ------------------------------------------------------------------ data problems before training

def _damage_three(root):
    """A truncated image, an image with 4 bands, a label of another size: three kinds, three files."""
    data = (root / "masked_0000.npy").read_bytes()
    (root / "masked_0000.npy").write_bytes(data[: len(data) // 2])
    np.save(root / "masked_0001.npy", np.zeros((64, 64, 4), np.float32))
    tifffile.imwrite(root / "0002.tif", np.zeros((32, 64), np.uint8))
    return [root / "masked_0000.npy", root / "masked_0001.npy", root / "0002.tif"]


def test_three_bad_files_reported_in_one_message_before_the_first_step(tmp_path):
    root = _glacier(tmp_path)
    bad = _damage_three(root)
    proc = run_script(["train.py", *GLACIER, f"--data.root={root}", f"--train.work_dir={tmp_path / 'run'}"],
                      cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err[0] == "error: 3 bad file(s) (data.check=headers; nothing was trained):", err
    line = {p: [x for x in err[1:] if str(p) in x] for p in bad}
    assert len(err) == 4 and all(len(v) == 1 for v in line.values()), err
    assert "truncated .npy" in line[bad[0]][0]
    assert "has 4 band(s), the config expects 5" in line[bad[1]][0] and "label of 64x32 (WxH)" in line[bad[2]][0]
    assert "Traceback" not in proc.stderr and "iter 1/" not in proc.stdout
    assert not (tmp_path / "run" / "last.pt").exists()


def test_check_dataset_headers_and_full(tmp_path):
    root = _glacier(tmp_path)
    cfg = configs.get_config("unetpp_glacier_debug").data
    cfg.root = str(root)
    from iceseg.data import build_dataset

    ds = build_dataset(cfg, "train", train=False)
    assert check_dataset(ds, "headers") == [] and check_dataset(ds, "full") == []
    img, ann = ds.pairs[0]
    tifffile.imwrite(ann, np.full((64, 64), 7, np.uint8))  # mask values 0/7: only decoding sees them
    assert check_dataset(ds, "headers") == []
    assert len(full := check_dataset(ds, "full")) == 1 and str(ann) in full[0] and "neither 0/1 nor 0/255" in full[0]
    assert check_dataset(ds, "none") == []
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(png)
    assert file_header(png) == (20, 30, 3)
    png.write_bytes(png.read_bytes()[:-20])  # the IEND chunk and part of the data cut off
    with pytest.raises(ValueError, match=r"x\.png: unreadable or corrupt image"):
        file_header(png)


def test_loader_error_keeps_the_original_line():
    wrapped = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1, in f\nValueError: /d/3.tif: mask values [0, 7] are "
                         "neither 0/1 nor 0/255 (sample 3)\n")
    assert loader_error(wrapped) == "/d/3.tif: mask values [0, 7] are neither 0/1 nor 0/255 (sample 3)"
    assert loader_error(ValueError("/d/a.png: bad")) == "/d/a.png: bad"


@pytest.mark.slow
def test_bad_sample_in_a_worker_prints_one_line_under_torchrun(tmp_path):
    root = _glacier(tmp_path)
    tifffile.imwrite(root / "0005.tif", np.full((64, 64), 7, np.uint8))  # only decoding in the worker sees it
    proc = run_script(["train.py", *GLACIER, f"--data.root={root}", f"--train.work_dir={tmp_path / 'run'}",
                       "--data.num_workers=1", "--data.check=none"], cwd=tmp_path, nproc=2, check=False, timeout=180)
    assert proc.returncode != 0
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "0005.tif" in line]
    assert ours == [f"error: {root / '0005.tif'}: mask values [7] are neither 0/1 nor 0/255 (sample "
                    f"{ours[0].rsplit('sample ', 1)[1]}"], proc.stdout + proc.stderr
    for noise in ("Caught ValueError in DataLoader worker", "Original Traceback", f'File "{ROOT / "train.py"}"',
                  f'File "{ROOT / "iceseg"}'):  # torchrun's own summary of the failed job follows, as always
        assert noise not in proc.stderr, proc.stderr


def test_missing_dataset_folder_printed_once_under_torchrun(tmp_path):
    proc = run_script(["train.py", *GLACIER, f"--data.root={tmp_path / 'nowhere'}", "--data.synthetic=",
                       f"--train.work_dir={tmp_path / 'run'}"], cwd=tmp_path, nproc=2, check=False, timeout=120)
    assert proc.returncode != 0
    assert (proc.stdout + proc.stderr).count("glacier folder") == 1, proc.stderr
    assert f'File "{ROOT / "train.py"}"' not in proc.stderr


# ------------------------------------------------------------------ checkpoints that say what they are

def _knet_checkpoint(tmp_path):
    cfg = configs.get_config("knet_yrcc2_debug")
    path = tmp_path / "knet.pt"
    save_checkpoint({"model": build_model(cfg).state_dict(), "config": configs.to_dict(cfg), "iter": 4}, path)
    return path


@pytest.mark.parametrize("script", ["test.py", "predict.py"])
def test_mismatched_checkpoint_names_its_config_in_few_lines(tmp_path, script):
    ckpt = _knet_checkpoint(tmp_path)
    extra = [str(tmp_path), "--out", str(tmp_path / "out")] if script == "predict.py" else []
    proc = run_script([script, "--config", "unetpp_glacier_debug", "--checkpoint", str(ckpt), *extra], cwd=tmp_path,
                      check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) < 10, proc.stderr
    assert "'knet_yrcc2_debug'" in proc.stderr and "--config knet_yrcc2_debug" in proc.stderr


def test_mismatched_weights_list_a_few_keys(tmp_path):
    ckpt = _knet_checkpoint(tmp_path)
    proc = run_script(["test.py", "--config", "knet_yrcc2_debug", "--checkpoint", str(ckpt),
                       "--model.arch.channels=48"], cwd=tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) < 10, proc.stderr
    assert "key(s) with another shape, e.g. " in proc.stderr and "checkpoint (32," in proc.stderr
    assert "the overrides it was trained with" in proc.stderr


@pytest.mark.parametrize("content,msg", [
    (b"hello world\n" * 10, "not a PyTorch checkpoint"),
    ("namespace", "holds Python objects (argparse.Namespace)"),
])
def test_not_a_checkpoint_says_so_without_unsafe_advice(tmp_path, content, msg):
    path = tmp_path / "weights.pt"
    if content == "namespace":
        import argparse

        torch.save({"args": argparse.Namespace(lr=1)}, path)
    else:
        path.write_bytes(content)
    proc = run_script(["test.py", "--config", "unetpp_glacier_debug", "--checkpoint", str(path)], cwd=tmp_path,
                      check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) < 10, proc.stderr
    assert msg in proc.stderr and "weights_only=False" not in proc.stderr


def test_resume_with_another_global_batch_is_refused_and_same_global_batch_continues(tmp_path):
    ckpt = {"world_size": 2, "batch_size": 4, "accum_steps": 1, "rng": [None, None]}
    check_resume(ckpt, tmp_path / "last.pt", 1, 8, 1)  # 2 x 4 = 1 x 8: the same schedule
    check_resume(ckpt, tmp_path / "last.pt", 1, 4, 2)
    with pytest.raises(ValueError, match=r"saved by 2 process\(es\) x batch 4 x 1 accumulation step\(s\) = 8 images "
                                         r"per step; this run has 1 process\(es\) x batch 4 x 1 .* = 4 .*Resume with "
                                         r"--data.batch_size=8 or --train.accum_steps=2"):
        check_resume(ckpt, tmp_path / "last.pt", 1, 4, 1)
    old = {"rng": [None, None], "config": {"data": {"batch_size": 2}, "train": {"accum_steps": 1}}}  # older files
    with pytest.raises(ValueError, match="= 4 images per step"):
        check_resume(old, tmp_path / "last.pt", 1, 2, 1)


@pytest.mark.slow
def test_resume_on_another_world_size(tmp_path):
    root = _glacier(tmp_path)
    wd = tmp_path / "run"
    common = [f"--data.root={root}", f"--train.work_dir={wd}", "--train.max_iters=4", "--train.ckpt_interval=2"]
    run_script(["train.py", *GLACIER, *common, "--train.max_iters=2"], cwd=tmp_path, nproc=2)
    refused = run_script(["train.py", *GLACIER, *common], cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "Resume with --data.batch_size=4 or --train.accum_steps=2" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok = run_script(["train.py", *GLACIER, *common, "--data.batch_size=4"], cwd=tmp_path)
    assert "resumed from" in ok.stdout and "at iteration 2" in ok.stdout and "done: 4 iterations" in ok.stdout


# ------------------------------------------------------------------ config introspection and range checks

def test_help_lists_sections_and_list_configs_describes_each():
    proc = run_script(["train.py", "--help"], cwd=ROOT)
    for section in ("--data.KEY", "--model.KEY", "--optim.KEY", "--train.KEY", "--eval.KEY", "--print-config"):
        assert section in proc.stdout
    listing = run_script(["train.py", "--list-configs"], cwd=ROOT).stdout.splitlines()
    assert len(listing) == len(configs.list_configs())
    assert all(len(line.split(None, 1)) == 2 for line in listing)  # name, then a description
    assert any(line.startswith("unetpp_glacier_debug") and "synthetic" in line for line in listing)


def test_print_config_shows_every_key_with_its_comment():
    out = run_script(["train.py", "--print-config", "icesegnet_yrcc2", "--optim.lr=1e-3"], cwd=ROOT).stdout
    assert "optim.lr = 0.001" in out
    assert "model.arch.feedforward_channels = [2048, 1024, 512]" in out
    assert "model.arch.backbone.window_size = 7  # window side in tokens" in out
    assert "data.batch_size = 4  # per process" in out


@pytest.mark.parametrize("arg,msg", [
    ("--data.batch_size=0", "--data.batch_size=0: must be a positive integer"),
    ("--optim.lr=-1", "--optim.lr=-1.0: must be >= 0"),
    ("--eval.mode=slide --eval.stride=(600,600)", "--eval.stride=(600, 600): is larger than eval.crop_size (512, 512): pixels between windows "
                                        "would get no prediction"),
    ("--data.check=some", "--data.check='some': must be one of 'headers', 'full', 'none'"),
])
def test_range_checks_give_one_line(arg, msg):
    proc = run_script(["train.py", "--config", "demo", *arg.split()], cwd=ROOT, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {msg}", proc.stderr


# ------------------------------------------------------------------ outputs people look at

def test_json_safe_writes_null_never_nan():
    text = json.dumps(json_safe({"mIoU": float("nan"), "IoU": [1.0, float("inf")], "n": 3}), allow_nan=False)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")) == {
        "mIoU": None, "IoU": [1.0, None], "n": 3}


def test_legend_strip_holds_every_class_colour():
    rgb = np.zeros((40, 200, 3), np.uint8)
    out = with_legend(rgb, ["land", "water", "ice"], [[10, 20, 30], [0, 255, 0], [255, 0, 255]], note="bands 0, 1, 2")
    assert out.shape[0] > 40 and out.shape[1:] == (200, 3) and (out[:40] == 0).all()
    narrow = with_legend(np.zeros((8, 8, 3), np.uint8), ["shore ice"], [[0, 255, 255]], note="bands 0, 1, 2")
    assert narrow.shape[1] > 60 and (narrow[:8, :8] == 0).all() and (narrow[:8, 8:] == 255).all()  # padded, not cut
    strip = out[40:].reshape(-1, 3)
    for colour in ([10, 20, 30], [0, 255, 0], [255, 0, 255]):
        assert (strip == colour).all(1).any(), colour


def test_plot_log_draws_curves(tmp_path):
    pytest.importorskip("matplotlib")  # in requirements-dev.txt: runs in CI
    wd = tmp_path / "run"
    wd.mkdir()
    rows = [{"event": "train", "iter": i, "loss": 1 / i, "lr": 1e-3} for i in range(1, 5)]
    rows += [{"event": "val", "iter": 4, "mIoU": 50.0, "aAcc": None, "IoU": [1, 2]}]
    (wd / "log.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    proc = run_script(["dev/plot_log.py", str(wd)], cwd=tmp_path)
    png = Image.open(wd / "curves.png")
    assert png.size[0] > 300 and "curves written" in proc.stdout
    bad = run_script(["dev/plot_log.py", str(wd), "--metrics", "mDice"], cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "metrics ['mDice'] are not in" in bad.stderr


# ------------------------------------------------------------------ weights for a copied model file

def _import_alone(tmp_path, name):
    """``iceseg/models/<name>.py`` copied alone into a fresh folder and imported from there."""
    folder = tmp_path / f"alone_{name}"
    folder.mkdir()
    shutil.copy(ROOT / "iceseg" / "models" / f"{name}.py", folder / f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"alone_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.__file__.startswith(str(ROOT / "iceseg"))
    return module


@pytest.mark.parametrize("config,attr", [("unetpp_glacier_debug", "net"), ("deeplab_autoice_debug", None),
                                         ("icesegnet_yrcc2_debug", "backbone")])
def test_exported_weights_load_into_a_model_file_copied_alone(tmp_path, config, attr):
    cfg = configs.get_config(config)
    model = build_model(cfg).eval()
    ckpt = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": configs.to_dict(cfg), "iter": 7}, ckpt)
    proc = subprocess.run([sys.executable, str(ROOT / "dev" / "export_weights.py"), str(ckpt),
                           str(tmp_path / "exp.pth")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "exp.json").read_text())
    mod = _import_alone(tmp_path, meta["model_file"][:-3])
    cls = getattr(mod, meta["class"])
    copy = cls(mod.SwinConfig(**meta["kwargs"])) if meta["class"] == "SwinTransformer" else cls(**meta["kwargs"])
    mod.load_pretrained(copy, str(tmp_path / "exp.pth"))
    ref = getattr(model, attr) if attr else model
    x = torch.randn(1, cfg.data.in_channels, 64, 64)
    with torch.no_grad():
        a, b = ref(x), copy.eval()(x)
    flat = lambda o: list(o.values()) if isinstance(o, dict) else list(o) if isinstance(o, (list, tuple)) else [o]  # noqa: E731
    assert all(torch.equal(p, q) for p, q in zip(flat(a), flat(b), strict=True))
    assert meta["config"] == config and meta["iter"] == 7
    if attr == "net":  # the train.py checkpoint itself loads too: its `net.` prefix is understood
        again = cls(**meta["kwargs"])
        mod.load_pretrained(again, str(ckpt))
        assert all(torch.equal(p, q) for p, q in zip(again.state_dict().values(), copy.state_dict().values(),
                                                       strict=True))
    assert math.isfinite(float(flat(b)[0].sum()))
    assert load_checkpoint(tmp_path / "exp.pth", fallback=False).keys() == copy.state_dict().keys()
