"""AutoICE: NetCDF scenes (schema, channels, fill values, reference files, bad scenes), patch sampler,
scene lists, losses, R² / weighted F1 / combined score, the tiled evaluator, and train.py + test.py
on synthetic scenes (torchrun, 2 gloo processes)."""

import json
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import configs
from iceseg import autoice
from iceseg.autoice import (
    CHANNELS,
    AutoICEPatches,
    AutoICEScenes,
    Scene,
    nearest_index,
    read_scene_list,
    scene_file_name,
    write_synthetic_scene,
)
from iceseg.autoice.evaluate import AutoICEEvaluator, combined_score
from iceseg.autoice.loss import MultiTaskLoss, masked_mse
from iceseg.metrics import RegressionStats, confusion_matrix, r2_from_sums, weighted_f1
from tests.conftest import assert_scores_equal_validation, run_script

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    return write_synthetic_scene(tmp_path_factory.mktemp("ai") / "20210101T120000_dmi_prep.nc", 180, 230, seed=3)


# --------------------------------------------------------------------------- files


def test_synthetic_scene_has_the_ai4arctic_schema(scene_path):
    with h5py.File(scene_path, "r") as f:
        H, W = 180, 230
        assert f["SIC"].dtype == np.uint8 and f["SIC"].shape == (H, W) and f["SIC"].attrs["chart_fill_value"] == 255
        for v in autoice.SAR_VARS + ("distance_map",):
            assert f[v].dtype == np.float32 and f[v].shape == (H, W)
        assert f["nersc_sar_primary"].attrs["variable_fill_value"] == 0
        for v in autoice.GEO_VARS:
            assert f[v].dtype == np.float64 and f[v].shape == (21, 21)
            assert [f[v].dims[i][0].name for i in range(2)] == ["/sar_sample_2dgrid_points", "/sar_line_2dgrid_points"]
        for v in autoice.AMSR2_ALL + autoice.ERA5_VARS:
            assert f[v].dtype == np.float32 and f[v].shape == (H // 25, W // 25)
        assert len([k for k in f if f[k].ndim == 2]) == 29
        assert f["SIC"].dims[0][0].name == "/sar_lines" and f["t2m"].dims[1][0].name == "/2km_grid_samples"
        assert f["sar_lines"].attrs["NAME"].startswith(b"This is a netCDF dimension but not a netCDF variable.")
        assert {k: f.attrs[k] for k in ("ice_service", "pixel_spacing")} == {"ice_service": "dmi", "pixel_spacing": 80}
        sic = f["SIC"][()]
    assert (sic == 255).any() and set(np.unique(sic)) <= set(range(11)) | {255}


def test_channels_follow_the_seed_order_and_upsampling(scene_path):
    s = Scene(scene_path)
    x = s.read_inputs()
    assert x.shape == (18, 180, 230) and x.dtype == np.float32 and len(CHANNELS) == 18
    with h5py.File(scene_path, "r") as f:
        assert np.array_equal(x[0], f["nersc_sar_primary"][()]) and np.array_equal(x[7], f["distance_map"][()])
        lat = torch.from_numpy(f["sar_grid2d_latitude"][()])[None, None]
        lon = torch.from_numpy(f["sar_grid2d_longitude"][()])[None, None]

        def up(t):  # the seed's upsampling
            return F.interpolate(t, size=(180, 230), mode="nearest")[0, 0].numpy()

        np.testing.assert_allclose(x[3], np.sin(np.pi * up(lon) / 180), atol=1e-6)
        np.testing.assert_allclose(x[6], np.cos(np.pi * up(lat) / 90), atol=1e-6)
        for k, v in enumerate(autoice.LOWRES_VARS):
            assert np.array_equal(x[8 + k], up(torch.from_numpy(f[v][()])[None, None]))
    assert CHANNELS[8:] == ("btemp_18_7h", "btemp_18_7v", "btemp_36_5h", "btemp_36_5v", "u10m_rotated",
                            "v10m_rotated", "t2m", "skt", "tcwv", "tclw")
    assert np.array_equal(s.read_inputs(40, 120, 7, 200), x[:, 40:120, 7:200])  # windows = crops of the scene
    assert np.array_equal(Scene(scene_path, downsample=3).read_inputs(), x[:, ::3, ::3])
    assert list(nearest_index(21, 50)[:6]) == [0, 0, 0, 1, 1, 2]


def test_fill_values_scale_and_reference_files(tmp_path):
    p = write_synthetic_scene(tmp_path / "20210203T040506_cis_prep.nc", 100, 120, seed=1, labels="reference")
    with h5py.File(p, "a") as f:
        raw = f["nersc_sar_secondary"][()]
        raw[0, :5] = -999
        del f["nersc_sar_secondary"]
        ds = f.create_dataset("nersc_sar_secondary", data=raw)
        ds.attrs.update({"_FillValue": np.float32(-999), "scale_factor": np.float32(2), "add_offset": np.float32(1)})
    s = Scene(p)
    assert s.label_file.name == "20210203T040506_cis_prep_reference.nc"
    x = s.read_inputs()
    assert (x[1, 0, :5] == 0).all() and np.allclose(x[1, 1:], raw[1:] * 2 + 1)
    assert set(s.read_charts()) == {"SIC", "SOD", "FLOE"} and s.name == "20210203T040506_cis"


def _rewrite(path, name, data):
    with h5py.File(path, "a") as f:
        del f[name]
        f.create_dataset(name, data=data)


@pytest.mark.parametrize("case,msg", [
    ("missing", r"missing variable\(s\) \['t2m'\]"),
    ("no_charts", r"missing chart variable\(s\) \['SIC', 'SOD', 'FLOE'\]"),
    ("lowres", "2 km variables must share one grid"),
    ("tiepoints", "expected the 21x21 tie-point grid"),
    ("fullgrid", "expected the 2-D 80 m grid"),
])
def test_bad_scenes_raise_errors_naming_the_file(tmp_path, case, msg):
    p = tmp_path / "20210301T000000_dmi_prep.nc"
    write_synthetic_scene(p, 100, 120, seed=2, drop=("t2m",) if case == "missing" else (),
                          labels="none" if case == "no_charts" else "inline")
    if case == "lowres":
        _rewrite(p, "tcwv", np.zeros((9, 4), np.float32))
    elif case == "tiepoints":
        _rewrite(p, "sar_grid2d_latitude", np.zeros((20, 21)))
    elif case == "fullgrid":
        _rewrite(p, "distance_map", np.zeros((100, 119), np.float32))
    with pytest.raises(ValueError, match=msg) as e:
        Scene(p)
    assert str(p) in str(e.value)


def test_all_masked_charts_raise_naming_the_file(tmp_path):
    p = write_synthetic_scene(tmp_path / "20210302T000000_dmi_prep.nc", 100, 120, seed=2)
    _rewrite(p, "SIC", np.full((100, 120), 255, np.uint8))
    with pytest.raises(ValueError, match=f"{p}: the SIC chart is masked"):
        AutoICEScenes([Scene(p)])[0]
    with pytest.raises(ValueError, match=f"{p}: the SIC chart is masked"):
        AutoICEPatches([Scene(p)], 32, 4)[0]


def test_missing_h5py_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        autoice.require_h5py()


def test_patch_sampler_is_seeded_and_keeps_valid_patches(tmp_path, scene_path):
    ds = AutoICEPatches([Scene(scene_path)], 64, 6, min_valid=0.3, seed=7)
    a, b = ds[2], ds[2]
    assert a["img"].shape == (18, 64, 64) and a["label"]["SOD"].dtype == torch.int64
    assert torch.equal(a["img"], b["img"]) and a["name"] == b["name"]
    assert (a["label"]["SIC"] != 255).float().mean() > 0.3
    y, x = map(int, a["name"].split("@")[1].split(","))
    assert torch.equal(a["img"], torch.from_numpy(Scene(scene_path).read_inputs(y, y + 64, x, x + 64)))
    epoch0 = [ds[i]["name"] for i in range(6)]
    ds.set_epoch(1)
    assert [ds[i]["name"] for i in range(6)] != epoch0  # a new stream per epoch
    ds.set_epoch(0)
    assert [ds[i]["name"] for i in range(6)] == epoch0  # and the same one again (exact resume)
    with pytest.raises(ValueError, match="smaller than the patch"):
        AutoICEPatches([Scene(scene_path)], 200, 4)


def test_scene_lists(tmp_path, scene_path):
    assert scene_file_name("S1A_EW_GRDM_1SDH_20180124T194759_20180124T194859_020301_022AA4_1F75_icechart_dmi_"
                           "201801241950_SouthEast_RIC.nc") == "20180124T194759_dmi_prep.nc"
    root = scene_path.parent
    (root / "a.json").write_text(json.dumps(["20210101T120000_dmi"]))
    (root / "b.txt").write_text("20210101T120000_dmi_prep.nc\n")
    assert read_scene_list(root, "a") == read_scene_list(root, "b") == [scene_path]
    (root / "c.json").write_text(json.dumps(["20990101T000000_cis"]))
    with pytest.raises(FileNotFoundError, match="c.json: scene '20990101T000000_cis' not found"):
        read_scene_list(root, "c")
    with pytest.raises(FileNotFoundError, match="none of"):
        read_scene_list(root, "nope")


# --------------------------------------------------------------------------- losses and metrics


def test_masked_mse_and_multitask_loss():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[1, 255], [5, 4]]])
    assert torch.isclose(masked_mse(pred, target), torch.tensor(4 / 3))
    assert masked_mse(pred, torch.full((1, 2, 2), 255)) == 0
    logits = torch.randn(2, 7, 4, 4)
    label = torch.randint(0, 6, (2, 4, 4))
    label[0, 0] = 255
    crit = MultiTaskLoss({"SIC": 1, "SOD": 7}, {"SOD": 3.0})
    out = crit({"SIC": pred.expand(2, 1, 2, 2), "SOD": logits}, {"SIC": target.expand(2, 2, 2), "SOD": label})
    ref = torch.nn.CrossEntropyLoss(ignore_index=255)(logits, label)  # the seed's CE
    assert torch.isclose(out["loss_SOD"], 3 * ref) and torch.isclose(out["loss_SIC"], torch.tensor(4 / 3))
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTaskLoss({"SIC": 1}, {"FLOE": 1.0})


def test_r2_weighted_f1_and_combined_by_hand():
    y, p = torch.tensor([0, 2, 4, 6, 255]), torch.tensor([1.0, 2.0, 3.0, 7.0, 50.0])
    st = RegressionStats()
    st.update(p[:2], y[:2])
    st.update(p[2:], y[2:])  # pooled: SSE = 3, mean 3, SST = 20
    assert st.r2() == pytest.approx(1 - 3 / 20)
    y, p = torch.tensor([0, 10, 5, 255]), torch.tensor([-0.7, 12.0, 5.4, 3.0])
    raw, rounded = RegressionStats(), RegressionStats(round_clip=(0, 10))
    raw.update(p, y)
    rounded.update(p, y)
    assert raw.r2() == pytest.approx(1 - 4.65 / 50) and rounded.r2() == 1.0
    assert r2_from_sums(2, 6, 18, 0) == 1.0 and r2_from_sums(2, 6, 18, 1) == 0.0  # constant target (sklearn)
    mat = confusion_matrix(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 1, 1, 2]), 4)
    # F1: class 0 = 0.8 (support 3), class 1 = 0.5 (2), class 2 = 2/3 (1); class 3 has no support
    assert weighted_f1(mat) == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert combined_score(90.0, 80.0, 70.0) == pytest.approx(82.0)


# --------------------------------------------------------------------------- evaluator


class Oracle(torch.nn.Module):
    """Reads the charts back from image channels 0..2 (pixel-wise, so tiling cannot change anything)."""

    def forward(self, x):
        sod = F.one_hot(x[:, 1].long().clamp(0, 6), 7).permute(0, 3, 1, 2).float()  # (B, 7, H, W)
        floe = F.one_hot(x[:, 2].long().clamp(0, 7), 8).permute(0, 3, 1, 2).float()  # (B, 8, H, W)
        return {"SIC": x[:, :1] + 0.3, "SOD": sod * 5, "FLOE": floe * 5}


def _oracle_batch(f=1, H=50, W=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    small = [torch.randint(0, k, (-(-H // f), -(-W // f)), generator=g) for k in (11, 6, 7)]
    labels = {c: v.repeat_interleave(f, 0).repeat_interleave(f, 1)[:H, :W].to(torch.uint8)
              for c, v in zip(("SIC", "SOD", "FLOE"), small, strict=True)}
    labels["SIC"][:5] = 255
    img = torch.zeros(1, 18, *small[0].shape)
    for i, v in enumerate(small):
        img[0, i] = v.float()
    return {"img": img, "label": {c: v[None] for c, v in labels.items()}, "name": [f"scene{seed}"]}


@pytest.mark.parametrize("mode,f", [("whole", 1), ("slide", 1), ("slide", 3)])
def test_evaluator_tiles_pools_and_scores_an_oracle_perfectly(tmp_path, mode, f):
    cfg = configs.get_config("deeplab_autoice_debug")
    cfg.eval.mode, cfg.eval.crop_size, cfg.eval.stride = mode, (24, 32), (16, 20)
    cfg.data.kwargs["downsample"] = f
    cfg.eval.submission = str(tmp_path / "sub.nc")
    ev = AutoICEEvaluator(cfg, torch.device("cpu"))
    for s in range(2):
        ev.update(Oracle(), _oracle_batch(f, seed=s), show_dir=tmp_path / "vis")
    m = ev.compute()
    assert m["r2_SIC_int"] == pytest.approx(100) and m["f1_SOD"] == pytest.approx(100)
    assert m["f1_FLOE"] == pytest.approx(100) and m["combined_int"] == pytest.approx(100)
    assert m["r2_SIC"] < 100 and m["loss_SIC"] == pytest.approx(0.09, rel=1e-4)  # the +0.3 offset
    assert m["scenes"] == 2 and m["pixels_SIC"] == 2 * 45 * 70
    with h5py.File(tmp_path / "sub.nc", "r") as fh:
        assert fh["scene1_SOD"].dtype == np.uint8 and fh["scene1_SOD"].shape == (50, 70)
        assert np.array_equal(fh["scene1_FLOE"][()], _oracle_batch(f, seed=1)["label"]["FLOE"][0].numpy())
    assert (tmp_path / "vis" / "scene0_SIC.png").is_file() and (tmp_path / "vis" / "scene0_FLOE_ref.png").is_file()
    assert "combined" in ev.table(m)


class PixelModel(torch.nn.Module):
    def forward(self, x):
        return {"SIC": x[:, :1] * 2, "SOD": x[:, :7], "FLOE": x[:, 1:9]}


def test_sliding_windows_equal_the_whole_scene_for_a_pixelwise_model():
    cfg = configs.get_config("deeplab_autoice_debug")
    torch.manual_seed(0)
    model = PixelModel()
    batch = _oracle_batch(1, 40, 90, seed=4)
    batch["img"] = batch["img"] + torch.randn(batch["img"].shape)
    out = []
    for mode in ("whole", "slide"):
        cfg.eval.mode, cfg.eval.crop_size, cfg.eval.stride = mode, (16, 48), (12, 30)
        ev = AutoICEEvaluator(cfg, torch.device("cpu"))
        ev.update(model, batch)
        out.append(ev.compute())
    for k in ("r2_SIC", "f1_SOD", "f1_FLOE", "loss"):
        assert out[0][k] == pytest.approx(out[1][k], rel=1e-6), k


# --------------------------------------------------------------------------- scripts


def test_torchrun_trains_on_synthetic_netcdf_scenes_then_test_script_writes_submission(tmp_path):
    wd, data = tmp_path / "run", tmp_path / "data"
    args = ["train.py", "--config", "deeplab_autoice_debug", f"--train.work_dir={wd}", f"--data.root={data}"]
    proc = run_script(args, cwd=tmp_path, nproc=2)
    assert "2 process(es) on cpu" in proc.stdout and "combined" in proc.stdout and (wd / "best.pt").is_file()
    assert (data / "train.json").is_file() and len(list(data.glob("*_prep_reference.nc"))) == 2
    evals = [json.loads(x) for x in (wd / "log.jsonl").read_text().splitlines() if '"val"' in x]
    assert len(evals) == 2 and all(np.isfinite(e["combined"]) and e["loss"] > 0 and e["scenes"] == 2 for e in evals)
    proc = run_script(["test.py", "--config", "deeplab_autoice_debug", "--checkpoint", str(wd / "best.pt"),
                       f"--data.root={data}", "--show-dir", str(tmp_path / "vis"), "--out", str(tmp_path / "m.json"),
                       f"--eval.submission={tmp_path / 'sub.nc'}"], cwd=tmp_path, nproc=2)
    assert "peak memory" in proc.stdout and "SOD F1" in proc.stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["scenes"] == 2 and metrics["peak_mem_gib"] > 0 and "combined" in metrics
    assert_scores_equal_validation(wd, metrics)  # 2 processes in both: the saved weights are what was scored
    assert len(list((tmp_path / "vis").glob("*.png"))) == 12
    with h5py.File(tmp_path / "sub.nc", "r") as fh:  # rank parts merged by rank 0
        names = sorted(k for k in fh if fh[k].ndim == 2)
    assert len(names) == 6 and names[0].endswith(("_FLOE", "_SIC", "_SOD")) and not list(tmp_path.glob("sub.nc.part*"))
