"""iceseg/export.py, dev/export.py and predict.py on exported programs: every family traced with dynamic
height and width equals the eager model on two sizes, as a ``.pt2`` program and as an ONNX model on ONNX Runtime
(onnx, onnxscript and onnxruntime: optional for users, in requirements-dev.txt so that CI runs those tests);
predict.py gives the checkpoint's class map."""

import json
import sys

import numpy as np
import pytest
import tifffile
import torch

import configs
import predict
from iceseg.export import export_model, load_onnx, load_program, min_size, save_onnx, save_program
from iceseg.fast import fuse_conv_bn
from iceseg.segmentor import build_model
from tests.conftest import run_script

FAMILIES = ["unetpp_glacier_debug", "deeplab_autoice_debug", "icesegnet_yrcc2_debug", "knet_yrcc2_debug"]


def eager(name: str):
    """The debug model of ``name`` with seed-0 weights, as predict.py runs it (eval, BatchNorm folded)."""
    cfg = configs.get_config(name)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return cfg, (fuse_conv_bn(model) if cfg.eval.fuse_conv_bn else model)


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """``{name: (.pt checkpoint, .pt2 program, (ExportedProgram, meta))}`` for every family, exported once for
    the module."""
    folder = tmp_path_factory.mktemp("export")
    out = {}
    for name in FAMILIES:
        cfg, model = eager(name)
        torch.manual_seed(0)
        ckpt = folder / f"{name}.pt"
        torch.save({"model": build_model(cfg).state_dict(), "config": configs.to_dict(cfg)}, ckpt)
        ep, meta = export_model(model, cfg)
        save_program(ep, meta, folder / f"{name}.pt2", cfg)
        out[name] = (ckpt, folder / f"{name}.pt2", (ep, meta))
    return out


def flat(out) -> list[torch.Tensor]:
    return [out[k] for k in sorted(out)] if isinstance(out, dict) else [out]


@pytest.mark.parametrize("name", FAMILIES)
def test_exported_program_equals_eager_on_two_sizes(programs, name):
    cfg, model = eager(name)
    net, stored, meta = load_program(programs[name][1])
    assert stored["name"] == name and meta["dynamic"] and meta["input_hw"] is None
    lo = meta["min_hw"][0]
    assert lo == (32 * (cfg.model.arch.backbone.window_size + 1) if name.startswith(("icesegnet", "knet")) else 64)
    torch.manual_seed(1)
    for hw in ((lo, lo + 64), (lo + 96, lo)):  # neither the traced size nor square
        x = torch.randn(2, cfg.data.in_channels, *hw)  # (B, C, H, W): the program runs a batch image by image
        with torch.no_grad():
            a, b = flat(model(x)), flat(net(x))
        assert len(a) == len(b) and all(p.shape == q.shape and p.shape[-2:] == hw for p, q in zip(a, b, strict=True))
        assert max((p - q).abs().max().item() for p, q in zip(a, b, strict=True)) <= 1e-4


def _onnx_packages() -> None:
    """The optional ONNX packages (requirements-dev.txt installs them, so CI runs these tests; a user's
    machine without them skips)."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_model_on_onnxruntime_equals_eager_on_two_sizes(programs, tmp_path, name):
    _onnx_packages()
    cfg, model = eager(name)
    ep, meta = programs[name][2]
    path = tmp_path / f"{name}.onnx"
    save_onnx(ep, meta, path, cfg)
    net, stored, stored_meta = load_onnx(path)
    assert stored["name"] == name and stored_meta == meta and not list(tmp_path.glob("*.tmp"))
    lo = meta["min_hw"][0]
    torch.manual_seed(1)
    for hw in ((lo, lo + 64), (lo + 96, lo)):
        x = torch.randn(2, cfg.data.in_channels, *hw)  # (B, C, H, W)
        with torch.no_grad():
            a, b = model(x), net(x)
        assert type(a) is type(b) and (not isinstance(a, dict) or list(a) == list(b))
        a, b = flat(a), flat(b)
        assert all(p.shape == q.shape and p.shape[-2:] == hw for p, q in zip(a, b, strict=True))
        assert max((p - q).abs().max().item() for p, q in zip(a, b, strict=True)) <= 1e-4


def test_onnx_without_its_packages_or_metadata_says_what_is_missing(programs, tmp_path, monkeypatch):
    _onnx_packages()
    cfg, _ = eager("unetpp_glacier_debug")
    ep, meta = programs["unetpp_glacier_debug"][2]
    bare = tmp_path / "bare.onnx"
    import onnx

    onnx.save_model(torch.onnx.export(ep, (), dynamo=True, verbose=False).model_proto, str(bare))
    with pytest.raises(ValueError, match=r"bare\.onnx: an ONNX model without iceseg's"):
        load_onnx(bare)
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ValueError, match=r"text\.onnx: not an ONNX model"):
        load_onnx(tmp_path / "text.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a machine without the optional package
    with pytest.raises(ImportError, match="optional packages onnx and onnxscript"):
        save_onnx(ep, meta, tmp_path / "x.onnx", cfg)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="optional package onnxruntime"):
        load_onnx(bare)


def test_matrix_adaptive_pool_equals_torch():
    from iceseg.export import MatrixAdaptiveAvgPool2d

    torch.manual_seed(0)
    for hw, size in (((8, 8), 6), ((7, 11), 3), ((5, 4), 6), ((16, 9), 1), ((6, 10), (2, None))):
        x = torch.randn(2, 3, *hw)
        want = torch.nn.AdaptiveAvgPool2d(size)(x)
        got = MatrixAdaptiveAvgPool2d(size)(x)
        assert got.shape == want.shape, (hw, size)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_min_size_follows_the_swin_window():
    _, unetpp = eager("unetpp_glacier_debug")
    _, knet = eager("knet_yrcc2_debug")
    assert min_size(unetpp) == 64 and min_size(knet) == 32 * 8  # stride 32: two positions; window 7: two windows


def test_predict_with_a_program_equals_the_checkpoint(programs, tmp_path, monkeypatch):
    """Same class map and coverage from the .pt2 as from the .pt; a window the program cannot take and
    --amp are refused naming the file, before any model runs."""
    ckpt, program, _ = programs["icesegnet_yrcc2_debug"]
    rng = np.random.default_rng(3)
    scene = tmp_path / "river.tif"
    tifffile.imwrite(scene, rng.integers(0, 256, (300, 280, 3), dtype=np.uint8), photometric="rgb")
    for src, out in ((ckpt, "a"), (program, "b")):
        monkeypatch.setattr(sys, "argv", ["predict.py", str(scene), "--checkpoint", str(src), "--out",
                                          str(tmp_path / out), "--eval.crop_size=(256,256)", "--eval.stride=(192,192)",
                                          "--eval.fuse_conv_bn=True", "--train.fast_paths=False"])
        predict.main()
    a, b = tifffile.imread(tmp_path / "a" / "river_pred.tif"), tifffile.imread(tmp_path / "b" / "river_pred.tif")
    assert a.shape == (300, 280) and (a == b).all()
    ja, jb = (json.loads((tmp_path / o / "coverage.json").read_text())["scenes"][0]["classes"] for o in "ab")
    assert ja == jb

    small = tmp_path / "small.tif"
    tifffile.imwrite(small, rng.integers(0, 256, (100, 300, 3), dtype=np.uint8), photometric="rgb")
    monkeypatch.setattr(sys, "argv", ["predict.py", str(small), "--checkpoint", str(program), "--out",
                                      str(tmp_path / "c")])
    with pytest.raises(ValueError, match=r"small\.tif: its 128x320 windows are smaller than the exported program "
                                         r"accepts \(256x256 or more\)"):
        predict.main()
    monkeypatch.setattr(sys, "argv", ["predict.py", str(scene), "--checkpoint", str(program), "--out",
                                      str(tmp_path / "c"), "--amp", "bf16"])
    with pytest.raises(ValueError, match=r"icesegnet_yrcc2_debug\.pt2: an exported program runs in float32"):
        predict.main()
    assert not list((tmp_path / "c").glob("*.tif"))


def test_load_program_names_a_bad_file(tmp_path):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"model\.pt2: not a torch\.export program"):
        load_program(bad)


def test_export_script_checks_against_eager(tmp_path):
    """dev/export.py writes the program and prints its difference from eager; above --atol it fails and
    leaves no file."""
    cfg, _ = eager("deeplab_autoice_debug")
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "config": configs.to_dict(cfg)}, tmp_path / "ckpt.pt")
    proc = run_script(["dev/export.py", "--checkpoint", "ckpt.pt", "--out", "m.pt2"], tmp_path)
    diffs = [float(line.rsplit("=", 1)[1]) for line in proc.stdout.splitlines() if "max |program - eager|" in line]
    assert len(diffs) == 2 and max(diffs) <= 1e-4 and (tmp_path / "m.pt2").is_file()
    proc = run_script(["dev/export.py", "--checkpoint", "ckpt.pt", "--out", "s.pt2", "--static"], tmp_path)
    assert "fixed (96, 96)" in proc.stdout and proc.stdout.count("max |program - eager| = 0") == 1
    _, _, meta = load_program(tmp_path / "s.pt2")
    assert meta["input_hw"] == meta["min_hw"] == [96, 96] and not meta["dynamic"]
    proc = run_script(["dev/export.py", "--checkpoint", "ckpt.pt", "--out", "n.pt2", "--atol", "-1"], tmp_path,
                      check=False)
    assert proc.returncode == 1 and "differs from the eager model" in proc.stderr and not (tmp_path / "n.pt2").exists()


def test_export_script_writes_onnx_checked_on_onnxruntime(tmp_path):
    _onnx_packages()
    cfg, _ = eager("deeplab_autoice_debug")
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "config": configs.to_dict(cfg)}, tmp_path / "ckpt.pt")
    proc = run_script(["dev/export.py", "--checkpoint", "ckpt.pt", "--out", "m.onnx", "--format", "onnx"], tmp_path)
    diffs = [float(line.rsplit("=", 1)[1]) for line in proc.stdout.splitlines() if "max |program - eager|" in line]
    assert len(diffs) == 2 and max(diffs) <= 1e-4 and load_onnx(tmp_path / "m.onnx")[1]["name"] == cfg.name
