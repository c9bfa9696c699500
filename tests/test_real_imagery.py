"""Real imagery from ../shared/data converted into the seed layouts; a debug model must learn on it.

- sentinel2_patch (eo-learn, Copernicus Sentinel-2 L1C) -> Glacier layout: five bands (B2, B3, B4,
  B11 for SWIR1, B10) as per-tile max-scaled ``masked_<id>.npy`` (H, W, 5) and a binary 0/255
  ``<id>.tif`` mask from the land-cover labels (forest = 1).
- seaice_tile (ai4er-cdt/sea-ice-classification) -> NWPU_YRCC2 layout: the JPEGs as they are
  (the loader applies their EXIF orientation) with index labels water = 2, ice = 4 (raw, 1-based).
The files are read from ../shared/data and written only under pytest's tmp_path.
"""

import json

import numpy as np
import tifffile
from PIL import Image

from iceseg.data import read_image
from tests.conftest import run_script

S2_BANDS = {"B02": 1, "B03": 2, "B04": 3, "B10": 10, "B11": 11}  # indices in the 13-band L1C stack


def _train_losses(work_dir):
    rows = [json.loads(x) for x in (work_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "train"]


def _falls(losses, k=3):
    return np.mean(losses[-k:]) < 0.9 * np.mean(losses[:k])


def test_sentinel2_patch_as_glacier_rasters_trains(shared_data, tmp_path):
    scenes = np.load(shared_data / "sentinel2_patch/REFERENCE_SCENES.npy")  # (5, 101, 100, 13)
    lulc = np.load(shared_data / "sentinel2_patch/LULC.npy")[..., 0]  # (101, 100)
    root = tmp_path / "glacier"
    root.mkdir()
    bands = [S2_BANDS[b] for b in ("B02", "B03", "B04", "B11", "B10")]
    n = 0
    for t in range(scenes.shape[0]):
        for y, x in ((0, 0), (0, 36), (37, 0), (37, 36)):  # four 64x64 corner tiles per date
            tile = scenes[t, y:y + 64, x:x + 64][..., bands]  # (64, 64, 5)
            tile = tile / np.maximum(tile.max(axis=(0, 1), keepdims=True), 1e-12)  # the seed's per-band max
            np.save(root / f"masked_s2_{n:02d}.npy", tile.astype(np.float32))
            tifffile.imwrite(root / f"s2_{n:02d}.tif", ((lulc[y:y + 64, x:x + 64] == 2) * 255).astype(np.uint8))
            n += 1
    wd = tmp_path / "run"
    run_script(["train.py", "--config", "unetpp_glacier_debug", f"--data.root={root}", "--data.synthetic=",
                f"--train.work_dir={wd}", "--train.max_epochs=4", "--train.log_interval=1", "--optim.lr=1e-3"],
               cwd=tmp_path)
    losses = _train_losses(wd)
    assert len(losses) == 4 * 8 and np.isfinite(losses).all()  # 16 train tiles / batch 2 = 8 per epoch
    assert _falls(losses), losses


def test_seaice_tile_as_nwpu_layout_trains(shared_data, tmp_path):
    root = tmp_path / "NWPU_YRCC2"
    for split, ids in (("train", [0, 1, 2, 3]), ("val", [0, 3])):
        (root / split).mkdir(parents=True)
        (root / f"{split}_labels").mkdir()
        for i in ids:
            (root / split / f"{i}.jpg").write_bytes((shared_data / f"seaice_tile/sar/{i}.jpg").read_bytes())
            chart = np.asarray(Image.open(shared_data / f"seaice_tile/chart/{i}.png").convert("RGB"))
            ice = chart.astype(np.float32).mean(-1) > 127  # snap stray resampling colours to black/white
            Image.fromarray(np.where(ice, 4, 2).astype(np.uint8)).save(root / f"{split}_labels" / f"{i}.png")
    assert read_image(root / "train/1.jpg").shape == (256, 256, 3)  # EXIF-rotated image matches its chart
    wd = tmp_path / "run"
    run_script(["train.py", "--config", "demo", f"--data.root={root}", "--data.synthetic=", "--data.batch_size=2",
                "--data.num_workers=0", f"--train.work_dir={wd}", "--train.max_iters=16", "--train.log_interval=1",
                "--schedule.warmup_iters=0", "--train.val_interval=16"], cwd=tmp_path)
    losses = _train_losses(wd)
    assert len(losses) == 16 and np.isfinite(losses).all()
    assert _falls(losses), losses
    metrics = [json.loads(x) for x in (wd / "log.jsonl").read_text().splitlines() if '"val"' in x][-1]
    assert metrics["Acc"][0] is None and metrics["Acc"][2] is None  # land/shore ice absent from the labels (null)
    assert not np.isnan(metrics["Acc"][1]) and not np.isnan(metrics["Acc"][3])
