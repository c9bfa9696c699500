"""predict.py and iceseg/scene.py: windowed raster reading, blended tiling, georeferenced output, coverage."""

import json
import sys

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

import configs
import predict
from iceseg.inference import predict as whole_predict
from iceseg.inference import slide_logits
from iceseg.scene import TiledPredictor, geokeys, hann_weight, open_raster, pixel_area_m2
from iceseg.segmentor import build_model
from tests.conftest import run_script

# EPSG:32633 (UTM 33N), projected, pixel-is-area, metres: the GeoKeys GDAL writes for such a scene
GEOKEYS = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633, 3076, 0, 1, 9001)
GEO = {33550: (10.0, 10.0, 0.0), 33922: (0.0, 0.0, 0.0, 465181.05, 5080254.63, 0.0), 34735: GEOKEYS,
       34737: "WGS 84 / UTM zone 33N|WGS 84|"}
GEO_TYPES = {33550: 12, 33922: 12, 34735: 3, 34737: 2}


def write_scene(path, arr, *, tile=None, planar=False, compression=None, nodata=None, geo=True, extrasamples=None):
    """A GeoTIFF of ``arr`` (H, W, C) with the GEO tags and an optional GDAL nodata tag."""
    tags = [(c, GEO_TYPES[c], 0 if GEO_TYPES[c] == 2 else len(v), v, True) for c, v in GEO.items()] if geo else []
    if nodata is not None:
        tags.append((42113, 2, 0, str(nodata), True))
    data = np.ascontiguousarray(arr.transpose(2, 0, 1)) if planar else arr
    tifffile.imwrite(path, data, tile=tile, compression=compression, photometric="minisblack",
                     planarconfig="separate" if planar else "contig", extratags=tags, metadata=None,
                     extrasamples=extrasamples)
    return path


class Pointwise(nn.Module):
    """A per-pixel model (1x1 conv): a tiling of it must equal the whole image; counts its calls."""

    def __init__(self, c, k, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv, self.calls = nn.Conv2d(c, k, 1), 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


class Charts(nn.Module):
    """The multi-task model's chart logits side by side: ``(B, SIC + SoD + FLOE, H, W)``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.cat(list(self.net(x).values()), dim=1)


def run_tiled(model, raster, crop, stride, blend="mean", **kw):
    pred = TiledPredictor(model.eval(), crop, stride, blend=blend, **kw)
    blocks = list(pred(raster))
    logits = torch.cat([b[1] for b in blocks], dim=1)  # (K', H, W)
    valid = np.concatenate([b[2] for b in blocks])
    assert [b[0] for b in blocks] == sorted(b[0] for b in blocks) and logits.shape[1] == raster.height
    return logits, valid, pred


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("layout", [dict(), dict(tile=(32, 32)), dict(planar=True), dict(compression="zlib"),
                                    dict(tile=(16, 48), planar=True, compression="zlib")])
def test_windows_read_what_was_written(tmp_path, dtype, layout):
    rng = np.random.default_rng(0)
    arr = (rng.random((70, 90, 3)) * 1000).astype(dtype)
    raster = open_raster(write_scene(tmp_path / "s.tif", arr, **layout), 3)
    assert (raster.height, raster.width, raster.bands) == (70, 90, 3)
    for y, x, h, w in [(0, 0, 70, 90), (5, 7, 33, 41), (69, 89, 1, 1), (31, 0, 2, 90)]:
        img, valid = raster.read(y, x, h, w)
        np.testing.assert_array_equal(img, arr[y:y + h, x:x + w])
        assert valid.all()
    raster.close()


def test_npy_and_png_scenes(tmp_path):
    arr = np.random.default_rng(1).random((40, 30, 5), dtype=np.float32)
    np.save(tmp_path / "a.npy", arr)
    r = open_raster(tmp_path / "a.npy", 5)
    np.testing.assert_array_equal(r.read(3, 4, 20, 10)[0], arr[3:23, 4:14])
    from PIL import Image

    rgba = np.random.default_rng(2).integers(0, 256, (20, 25, 4)).astype(np.uint8)
    rgba[5:, :, 3] = np.maximum(rgba[5:, :, 3], 1)
    rgba[:5, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b.png")
    r = open_raster(tmp_path / "b.png", 3)  # the alpha band is the valid mask, not a band
    img, valid = r.read(0, 0, 20, 25)
    np.testing.assert_array_equal(img, rgba[..., :3])
    assert not valid[:5].any() and valid[5:].all()


def test_nodata_sources(tmp_path):
    arr = np.random.default_rng(3).integers(1, 200, (30, 30, 2)).astype(np.uint16)
    arr[:10] = 0  # all bands 0: nodata
    arr[10:12, :, 0] = 0  # only one band 0: valid (rasterio's dataset mask)
    r = open_raster(write_scene(tmp_path / "n.tif", arr, nodata=0), 2)
    assert r.nodata == 0 and r.nodata_source == "GDAL_NODATA tag"
    valid = r.read(0, 0, 30, 30)[1]
    assert not valid[:10].any() and valid[10:].all()
    r = open_raster(tmp_path / "n.tif", 2, nodata=7)  # --nodata overrides the tag
    assert r.nodata_source == "--nodata" and r.read(0, 0, 30, 30)[1].all()
    f = np.random.default_rng(4).random((20, 20, 3), dtype=np.float32)
    f[4, 5, 1] = np.nan  # NaN in any band: nodata
    valid = open_raster(write_scene(tmp_path / "f.tif", f), 3).read(0, 0, 20, 20)[1]
    assert not valid[4, 5] and valid.sum() == 399
    alpha = np.concatenate([arr, np.full((30, 30, 1), 255, np.uint16)], -1)
    alpha[20:, :, 2] = 0
    r = open_raster(write_scene(tmp_path / "a.tif", alpha, extrasamples=[0, 2]), 2)
    assert r.alpha and r.bands == 2 and (r.read(0, 0, 30, 30)[1] == (np.arange(30) < 20)[:, None]).all()


def test_pixel_area_from_geokeys():
    tags = {33550: GEO[33550], 34735: GEOKEYS}
    assert pixel_area_m2(tags) == (100.0, "")
    assert geokeys(GEOKEYS) == {1024: 1, 1025: 1, 3072: 32633, 3076: 9001}
    feet = list(GEOKEYS)
    feet[-1] = 9002
    assert pixel_area_m2({33550: GEO[33550], 34735: feet})[0] == pytest.approx(100 * 0.3048 ** 2)
    geographic = (1, 1, 0, 1, 1024, 0, 1, 2)
    area, note = pixel_area_m2({33550: (1e-4, 1e-4, 0), 34735: geographic})
    assert area is None and "geographic" in note
    m = [0.0] * 16
    m[0], m[1], m[4], m[5] = 3.0, 1.0, 1.0, -2.0  # a rotated ModelTransformation: |det| = 7
    assert pixel_area_m2({34264: m, 34735: GEOKEYS})[0] == 7.0
    assert pixel_area_m2({})[0] is None


# --------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("blend", ["mean", "hann"])
def test_tiling_of_a_pointwise_model_equals_the_whole_image(tmp_path, blend):
    arr = np.random.default_rng(5).random((75, 61, 3), dtype=np.float32)
    np.save(tmp_path / "p.npy", arr)
    model = Pointwise(3, 4)
    logits, valid, pred = run_tiled(model, open_raster(tmp_path / "p.npy", 3), (32, 24), (20, 17), blend=blend,
                                    batch_size=3)
    whole = model(torch.from_numpy(arr.transpose(2, 0, 1))[None])[0]
    torch.testing.assert_close(logits, whole, atol=1e-5, rtol=1e-5)
    assert valid.all() and pred.windows_done == 4 * 4 and pred.windows_skipped == 0


def test_one_window_scene_equals_whole_image_prediction(tmp_path):
    cfg = configs.get_config("unetpp_glacier_debug")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    arr = np.random.default_rng(6).random((64, 96, 5), dtype=np.float32)
    np.save(tmp_path / "g.npy", arr)
    logits, _, pred = run_tiled(model, open_raster(tmp_path / "g.npy", 5), (128, 128), (96, 96), size_divisor=32)
    probs = whole_predict(model, torch.from_numpy(arr.transpose(2, 0, 1))[None], size_divisor=32)[0]  # (2, H, W)
    assert pred.windows_done == 1
    torch.testing.assert_close(torch.sigmoid(logits[0]), probs[1], atol=1e-6, rtol=0)


def test_overlapping_tiling_matches_slide_inference_for_deeplab(tmp_path):
    """The 2x2 average-pool ASPP branch sees each window, not the scene: tiled = mmseg slide inference."""
    cfg = configs.get_config("deeplab_autoice_debug")
    torch.manual_seed(0)
    model = Charts(build_model(cfg))

    arr = np.random.default_rng(7).standard_normal((200, 180, cfg.data.in_channels)).astype(np.float32)
    np.save(tmp_path / "d.npy", arr)
    logits, _, pred = run_tiled(model, open_raster(tmp_path / "d.npy", cfg.data.in_channels), (96, 96), (64, 64))
    with torch.no_grad():
        ref = slide_logits(model, torch.from_numpy(arr.transpose(2, 0, 1))[None], (96, 96), (64, 64))[0]
    assert pred.windows_done == 9
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


def test_hann_weight():
    w = hann_weight(8, 6)
    assert w.shape == (8, 6) and (w > 0).all() and w.max() <= 1
    torch.testing.assert_close(w, w.flip(0).flip(1))
    assert w[3:5, 2:4].min() > w[0, 0] * 10  # centre weighs far more than the corners


def test_empty_windows_are_not_run(tmp_path):
    arr = np.random.default_rng(8).integers(1, 255, (64, 96, 3)).astype(np.uint8)
    arr[:, :64] = 0  # the windows at x = 0 and x = 32 hold no valid pixel
    r = open_raster(write_scene(tmp_path / "e.tif", arr, nodata=0), 3)
    model = Pointwise(3, 2)
    _, valid, pred = run_tiled(model, r, (32, 32), (32, 32))
    assert pred.windows_skipped == 4 and pred.windows_done == 2 and model.calls == 2
    assert not valid[:, :64].any() and valid[:, 64:].all()


# --------------------------------------------------------------------------- predict.py end to end


def save_checkpoint(tmp_path, name, model=None, overrides=()):
    cfg = configs.get_config(name)
    configs.apply_overrides(cfg, list(overrides))
    torch.manual_seed(0)
    model = model or build_model(cfg)
    torch.save({"model": model.state_dict(), "config": configs.to_dict(cfg)}, tmp_path / "ckpt.pt")
    return tmp_path / "ckpt.pt"


def run_predict(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["predict.py", *map(str, argv)])
    predict.main()


def test_outputs_georeferencing_nodata_and_coverage(tmp_path, monkeypatch):
    """The class map carries the input's geo tags and nodata 255; coverage figures equal hand counts."""
    ckpt = save_checkpoint(tmp_path, "icesegnet_yrcc2_debug")
    cfg = configs.get_config("icesegnet_yrcc2_debug")
    rng = np.random.default_rng(9)
    arr = rng.integers(1, 256, (70, 100, 3)).astype(np.uint8)
    arr[:20, :30] = 0  # 600 nodata pixels
    scene = write_scene(tmp_path / "river.tif", arr, tile=(32, 32), nodata=0)
    out = tmp_path / "out"
    run_predict(monkeypatch, scene, "--checkpoint", ckpt, "--out", out, "--probs", "--eval.crop_size=(48,48)",
                "--eval.stride=(32,32)")
    with tifffile.TiffFile(out / "river_pred.tif") as t, tifffile.TiffFile(scene) as s:
        page, src = t.pages[0], s.pages[0]
        for code in GEO:
            assert page.tags[code].value == src.tags[code].value, code
        assert page.tags[42113].value.strip("\x00") == "255" and page.is_tiled and page.compression == 8
        cls = page.asarray()
    assert cls.shape == (70, 100) and (cls[:20, :30] == 255).all() and (cls[20:] < 4).all()
    probs = tifffile.imread(out / "river_probs.tif")
    assert probs.shape == (70, 100, 4) and (probs[:20, :30] == 0).all()
    winner = np.take_along_axis(probs[20:], cls[20:, :, None], -1)[..., 0].astype(int)
    assert (winner >= probs[20:].max(-1) - 1).all()  # the mapped class has the top probability, up to rounding
    assert (np.abs(probs[20:].sum(-1).astype(int) - 255) <= 2).all()
    rec = json.loads((out / "coverage.json").read_text())["scenes"][0]
    counts = np.bincount(cls[cls != 255], minlength=4)
    assert rec["valid_pixels"] == 7000 - 600 and rec["nodata_pixels"] == 600 and rec["pixel_area_m2"] == 100.0
    for c, n in zip(rec["classes"], counts, strict=True):
        assert c["pixels"] == n and c["fraction"] == pytest.approx(n / 6400) and c["area_km2"] == pytest.approx(n * 1e-4)
    ice, river = counts[2] + counts[3], counts[1:].sum()
    assert rec["totals"]["ice"]["pixels"] == ice and rec["totals"]["river"]["pixels"] == river
    assert rec["totals"]["ice"]["fraction_of_river"] == pytest.approx(ice / river)
    assert [c["name"] for c in rec["classes"]] == list(cfg.eval.class_names)
    rows = (out / "coverage.csv").read_text().splitlines()
    assert rows[0].startswith("file,height,width,valid_pixels,pixel_area_m2,class") and len(rows) == 1 + 4 + 2
    for png in ("river_pred.png", "river_overlay.png"):
        assert (out / png).is_file()
    assert not list(out.glob("*.tmp"))


def test_bf16_predict_stores_bf16_weights_and_equals_autocast_of_the_fp32_model(tmp_path, monkeypatch):
    """--amp bf16: predict.py builds the model with its linear/conv weights in bf16 (iceseg.fast.autocast_weights);
    its probabilities equal those of the fp32-weight model tiled under the same autocast."""
    from iceseg.segmentor import build_inference_model
    from iceseg.transforms import build_transforms

    ckpt = save_checkpoint(tmp_path, "icesegnet_yrcc2_debug")
    cfg = configs.get_config("icesegnet_yrcc2_debug")
    scene = write_scene(tmp_path / "river.tif", np.random.default_rng(4).integers(0, 256, (64, 80, 3)).astype(np.uint8))
    built = []
    real = predict.build_inference_model
    monkeypatch.setattr(predict, "build_inference_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    run_predict(monkeypatch, scene, "--checkpoint", ckpt, "--out", tmp_path / "out", "--probs", "--amp", "bf16",
                "--eval.crop_size=(48,48)", "--eval.stride=(32,32)")
    assert {p.dtype for p in built[0].parameters()} == {torch.bfloat16, torch.float32}
    fp32 = build_inference_model(cfg, torch.load(ckpt, weights_only=True)["model"], torch.device("cpu"))
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    logits, _, _ = run_tiled(fp32, open_raster(scene, 3), (48, 48), (32, 32), cfg.eval.blend, autocast=torch.bfloat16,
                             size_divisor=cfg.eval.size_divisor, transform=build_transforms(cfg.data.test_pipeline),
                             channels_last=cfg.train.channels_last)
    probs = (logits.softmax(0) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, K)
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "river_probs.tif"), probs)


def test_skip_existing_all_nodata_and_no_georeferencing(tmp_path, monkeypatch, capsys):
    ckpt = save_checkpoint(tmp_path, "unetpp_glacier_debug")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    np.save(scenes / "a.npy", np.random.default_rng(10).random((40, 50, 5), dtype=np.float32))
    np.save(scenes / "b.npy", np.full((40, 50, 5), np.nan, np.float32))  # all nodata
    out = tmp_path / "out"
    run_predict(monkeypatch, scenes, "--checkpoint", ckpt, "--out", out)
    log = capsys.readouterr().out
    assert "warning: the scene is all nodata" in log
    recs = {r["file"]: r for r in json.loads((out / "coverage.json").read_text())["scenes"]}
    b = recs[str(scenes / "b.npy")]
    assert b["valid_pixels"] == 0 and all(c["pixels"] == 0 and c["fraction"] is None for c in b["classes"])
    assert (tifffile.imread(out / "b_pred.tif") == 255).all()
    a = recs[str(scenes / "a.npy")]
    assert a["pixel_area_m2"] is None and "no georeferencing" in a["area_note"] and a["valid_pixels"] == 2000
    assert all(c["area_km2"] is None for c in a["classes"])
    mtime = (out / "a_pred.tif").stat().st_mtime_ns
    for f in out.glob("b_*"):  # b as a run killed in the middle of it leaves it: no outputs, its scratch rows
        f.unlink()
    (out / ".b_pred.raw.tmp").write_bytes(b"\x07" * 999)
    run_predict(monkeypatch, scenes, "--checkpoint", ckpt, "--out", out, "--skip-existing")
    log = capsys.readouterr().out
    assert "a: outputs exist, skipped" in log and "b: outputs exist" not in log
    assert (tifffile.imread(out / "b_pred.tif") == 255).all() and not list(out.glob(".*.tmp"))
    assert (out / "a_pred.tif").stat().st_mtime_ns == mtime and len(json.loads((out / "coverage.json").read_text())["scenes"]) == 2


def test_real_sentinel2_patch(tmp_path, monkeypatch, shared_data):
    """Five bands of the real Sentinel-2 patch as a planar float32 GeoTIFF with a NaN hole."""
    bands = np.load(shared_data / "sentinel2_patch" / "REFERENCE_SCENES.npy")[0][..., [1, 2, 3, 7, 11]]  # (101, 100, 5)
    bands = np.ascontiguousarray(bands, np.float32)
    bands[50:60, 40:45] = np.nan
    scene = write_scene(tmp_path / "s2.tif", bands, planar=True, tile=(32, 32), compression="zlib")
    ckpt = save_checkpoint(tmp_path, "unetpp_glacier_debug")
    out = tmp_path / "out"
    run_predict(monkeypatch, scene, "--checkpoint", ckpt, "--out", out, "--eval.crop_size=(64,64)",
                "--eval.stride=(48,48)", "--rgb-bands", "2,1,0")
    cls = tifffile.imread(out / "s2_pred.tif")
    assert cls.shape == (101, 100) and (cls[50:60, 40:45] == 255).all() and set(np.unique(cls)) <= {0, 1, 255}
    rec = json.loads((out / "coverage.json").read_text())["scenes"][0]
    assert rec["valid_pixels"] == 101 * 100 - 50 and rec["classes"][0]["area_km2"] == pytest.approx(
        rec["classes"][0]["pixels"] * 1e-4)


# --------------------------------------------------------------------------- bad input


def lzw_copy(src, dst):
    """``src`` with its Compression tag patched to LZW (5): decoding then needs imagecodecs."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as t:
        off = t.pages[0].tags[259].valueoffset
    data[off:off + 2] = (5).to_bytes(2, "little")
    dst.write_bytes(bytes(data))
    return dst


def test_bad_inputs_name_the_file(tmp_path, monkeypatch):
    arr = np.random.default_rng(11).integers(0, 255, (40, 40, 3)).astype(np.uint8)
    good = write_scene(tmp_path / "good.tif", arr)
    before = good.read_bytes()
    try:
        import imagecodecs  # noqa: F401
        has_codecs = True
    except ImportError:
        has_codecs = False
    if not has_codecs:
        with pytest.raises(ValueError, match=r"lzw\.tif: LZW compression .*pip install imagecodecs"):
            open_raster(lzw_copy(good, tmp_path / "lzw.tif"), 3)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"cut\.tif: (truncated|unreadable)"):
        open_raster(cut, 3)
    with pytest.raises(ValueError, match=r"good\.tif: has 3 band\(s\), the model expects 5"):
        open_raster(good, 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: folder holds no scene files"):
        predict.list_scenes([str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError, match="missing.tif: no such file"):
        predict.list_scenes([str(tmp_path / "missing.tif")])
    (tmp_path / "x").mkdir()
    np.save(tmp_path / "x" / "good.npy", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="share the stem 'good'"):
        predict.list_scenes([str(good), str(tmp_path / "x")])
    with pytest.raises(OSError, match="output folder cannot be written"):
        predict.check_out_dir(good / "sub")  # below a file
    ckpt = save_checkpoint(tmp_path, "unetpp_glacier_debug")
    with pytest.raises(ValueError, match="trained with config 'unetpp_glacier_debug' \\(model.num_classes = 1\\)"):
        run_predict(monkeypatch, good, "--checkpoint", ckpt, "--out", tmp_path / "o", "--config", "unetpp_loveda_debug")
    with pytest.raises(ValueError, match="test_pipeline has \\['Resize'\\]"):
        run_predict(monkeypatch, good, "--checkpoint", ckpt, "--out", tmp_path / "o",
                    "--data.test_pipeline=[{'type':'Resize','scale':(8,8)}]")
    assert good.read_bytes() == before  # inputs are never modified


@pytest.mark.slow
def test_torchrun_shards_scenes_and_matches_one_process(tmp_path):
    ckpt = save_checkpoint(tmp_path, "unetpp_glacier_debug")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(3):
        np.save(scenes / f"s{i}.npy", np.random.default_rng(20 + i).random((48, 64, 5), dtype=np.float32))
    for nproc, out in ((2, "two"), (1, "one")):
        run_script(["predict.py", str(scenes), "--checkpoint", str(ckpt), "--out", str(tmp_path / out),
                    "--eval.crop_size=(32,32)", "--eval.stride=(24,24)"], tmp_path, nproc=nproc, threads=1)
    for i in range(3):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "two" / f"s{i}_pred.tif"),
                                      tifffile.imread(tmp_path / "one" / f"s{i}_pred.tif"))
    two, one = (json.loads((tmp_path / d / "coverage.json").read_text()) for d in ("two", "one"))
    assert two == one and [r["file"] for r in two["scenes"]] == [str(scenes / f"s{i}.npy") for i in range(3)]


# --------------------------------------------------------------------------- AutoICE scenes


@pytest.mark.parametrize("f", [1, 3])
def test_autoice_scene_charts_equal_the_evaluator_submission(tmp_path, monkeypatch, f):
    """predict.py's charts of a ``*_prep.nc`` scene equal test.py's submission (the AutoICE evaluator) on every
    unmasked pixel, are 255 where HH is masked, and its coverage equals counts of the written charts."""
    import h5py

    from iceseg.autoice import Scene, write_synthetic_scene
    from iceseg.autoice.evaluate import AutoICEEvaluator

    overrides = ["--eval.crop_size=(40,48)", "--eval.stride=(24,32)", f"--data.kwargs.downsample={f}"]
    ckpt = save_checkpoint(tmp_path, "deeplab_autoice_debug")
    cfg = configs.get_config("deeplab_autoice_debug")
    configs.apply_overrides(cfg, overrides)
    scenes = tmp_path / "scenes"
    nc = write_synthetic_scene(scenes / "20210101T120000_dmi_prep.nc", 110, 130, seed=3, labels="reference")
    out = tmp_path / "out"
    run_predict(monkeypatch, scenes, "--checkpoint", ckpt, "--out", out, "--blend", "mean", *overrides)
    # the evaluator on the same scene, as test.py runs it
    model = build_model(cfg)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    model.eval()
    scene = Scene(nc, f)
    cfg.eval.submission = str(tmp_path / "sub.nc")
    ev = AutoICEEvaluator(cfg, torch.device("cpu"))
    labels = {c: torch.from_numpy(v)[None] for c, v in scene.read_charts().items()}
    with torch.no_grad():
        ev.update(model, {"img": torch.from_numpy(scene.read_inputs())[None], "label": labels, "name": [scene.name]})
    ev.compute()
    with h5py.File(nc) as fh:
        masked = fh["nersc_sar_primary"][()] == 0
    masked = masked[::f, ::f].repeat(f, 0).repeat(f, 1)[:110, :130]  # the input grid's mask at 80 m
    assert 0 < masked.mean() < 0.5
    with h5py.File(out / "20210101T120000_dmi_charts.nc") as ours, h5py.File(tmp_path / "sub.nc") as ref, \
            h5py.File(out / "submission.nc") as sub:
        for c in ("SIC", "SOD", "FLOE"):
            key = f"20210101T120000_dmi_{c}"
            pred = ours[key][()]
            assert pred.dtype == np.uint8 and pred.shape == (110, 130)
            assert (pred[masked] == 255).all()
            np.testing.assert_array_equal(pred[~masked], ref[key][()][~masked])
            np.testing.assert_array_equal(sub[key][()], pred)
            if c == "SIC":
                sic = pred
    rec = json.loads((out / "coverage.json").read_text())["scenes"][0]
    valid = int((~masked).sum())
    assert rec["valid_pixels"] == valid and rec["pixel_area_m2"] == 6400.0 and rec["height"] == 110
    counts = np.bincount(sic[~masked], minlength=11)
    got = [c for c in rec["classes"] if c["chart"] == "SIC"]
    assert [c["name"] for c in got][:2] == ["SIC 0%", "SIC 10%"] and len(got) == 11
    assert [c["pixels"] for c in got] == counts.tolist()
    assert got[4]["area_km2"] == pytest.approx(counts[4] * 0.0064)
    assert rec["totals"]["ice"]["pixels"] == counts[1:].sum()
    assert rec["totals"]["ice_sic_weighted"]["area_km2"] == pytest.approx((counts * np.arange(11) / 10).sum() * 0.0064)
    assert len([c for c in rec["classes"] if c["chart"] == "SOD"]) == 7  # 6 classes and the seed's mask slot
    for c in ("SIC", "SOD", "FLOE"):
        assert (out / f"20210101T120000_dmi_{c}.png").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_autoice_bad_inputs_name_the_file(tmp_path, monkeypatch):
    from iceseg.autoice import write_synthetic_scene

    ckpt = save_checkpoint(tmp_path, "deeplab_autoice_debug")
    bad = write_synthetic_scene(tmp_path / "20210101T120000_dmi_prep.nc", 60, 60, labels="none",
                                drop=("distance_map",))
    with pytest.raises(ValueError, match=r"_dmi_prep\.nc: missing variable\(s\) \['distance_map'\]"):
        run_predict(monkeypatch, bad, "--checkpoint", ckpt, "--out", tmp_path / "o")
    tif = write_scene(tmp_path / "river.tif", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="river.tif: config 'deeplab_autoice_debug' is an AutoICE config"):
        run_predict(monkeypatch, tif, "--checkpoint", ckpt, "--out", tmp_path / "o")
    with pytest.raises(ValueError, match="--probs: config 'deeplab_autoice_debug' predicts AutoICE charts"):
        run_predict(monkeypatch, bad, "--checkpoint", ckpt, "--out", tmp_path / "o", "--probs")
    with pytest.raises(ValueError, match="--nodata: .* HH = 0"):
        run_predict(monkeypatch, bad, "--checkpoint", ckpt, "--out", tmp_path / "o", "--nodata", "0")
    (tmp_path / "g").mkdir()
    other = save_checkpoint(tmp_path / "g", "unetpp_glacier_debug")
    with pytest.raises(ValueError, match=r"_dmi_prep\.nc: an AutoICE scene, but config 'unetpp_glacier_debug'"):
        run_predict(monkeypatch, bad, "--checkpoint", other, "--out", tmp_path / "o")
    (tmp_path / "x_reference.nc").write_bytes(b"")
    with pytest.raises(ValueError, match=r"x_reference\.nc: not a scene file \(expected one of .*_prep\.nc\)"):
        predict.list_scenes([str(tmp_path / "x_reference.nc")])
    write_synthetic_scene(tmp_path / "s" / "20210101T120000_dmi_prep.nc", 60, 60, labels="reference")
    assert [p.name for p in predict.list_scenes([str(tmp_path / "s")])] == ["20210101T120000_dmi_prep.nc"]
