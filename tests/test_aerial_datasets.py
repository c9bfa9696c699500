"""Aerial datasets (iceseg/data.py: LoveDA, Potsdam, Vaihingen, UAVid, tile_dataset) on the real samples in
../shared/data and on fixtures written in the official layouts (colour labels) under tmp_path."""

import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

import configs
from iceseg.data import (
    DATASETS,
    ISPRS_PALETTE,
    POTSDAM_TEST,
    UAVID_PALETTE,
    build_dataset,
    read_image,
    tile_dataset,
)


def data_cfg(dataset: str, root, **kw) -> configs.DataConfig:
    n = {"LoveDA": 7, "Potsdam": 6, "Vaihingen": 6, "UAVid": 8}[dataset]
    return configs.DataConfig(dataset=dataset, root=str(root), num_classes=n, **kw)


def raw(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_loveda_samples_reduce_zero_label(shared_data):
    root = shared_data / "loveda_samples"
    ds = build_dataset(data_cfg("LoveDA", root), "train", train=False)
    assert len(ds) == 3 and ds.names == ["0", "1", "2"]
    item = ds[1]
    assert item["img"].shape == (3, 1024, 1024)
    label, expect = item["label"].numpy(), raw(root / "ann/1.png")
    np.testing.assert_array_equal(label, np.where(expect == 0, 255, expect - 1))  # 1..7 -> 0..6, 0 -> ignore
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3, 5, 6}  # raw {1,2,3,4,6,7}


def test_loveda_official_layout_and_joined_splits(shared_data, tmp_path):
    src = shared_data / "loveda_samples"
    for split, domain, i in (("Train", "Urban", 0), ("Train", "Rural", 1), ("Val", "Rural", 2)):
        for sub, folder in (("img", "images_png"), ("ann", "masks_png")):
            (tmp_path / split / domain / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / sub / f"{i}.png", tmp_path / split / domain / folder / f"{1000 + i}.png")
    (tmp_path / "Test/Urban/images_png").mkdir(parents=True)
    shutil.copy(src / "img/0.png", tmp_path / "Test/Urban/images_png/5000.png")
    cfg = data_cfg("LoveDA", tmp_path)
    assert DATASETS["LoveDA"](cfg, "train", [], 0).names == ["Urban_1000", "Rural_1001"]
    assert len(DATASETS["LoveDA"](cfg, "train+val", [], 0)) == 3
    test = DATASETS["LoveDA"](cfg, "test", [], 0)  # labels withheld: all ignore
    assert (test[0]["label"] == 255).all()
    with pytest.raises(FileNotFoundError, match="Train/Urban/images_png"):
        DATASETS["LoveDA"](data_cfg("LoveDA", tmp_path / "nowhere"), "train", [], 0)


@pytest.mark.parametrize("name", ["potsdam", "vaihingen"])
def test_isprs_samples_index_labels(shared_data, name):
    root = shared_data / "isprs_samples" / name
    ds = build_dataset(data_cfg(name.capitalize(), root), "val", train=False)
    item = ds[0]
    stem = {"potsdam": "2_10_0_0_512_512", "vaihingen": "area1_0_0_512_512"}[name]
    assert item["name"] == stem and item["img"].shape == (3, 512, 512)
    expect = raw(root / "ann" / f"{stem}.png")  # mmseg converter: 0 boundary, 1..6 classes
    np.testing.assert_array_equal(item["label"].numpy(), np.where(expect == 0, 255, expect - 1))
    counts = np.bincount(item["label"].numpy().ravel(), minlength=256)
    assert counts[:5].min() > 0 and counts[5] == 0  # five classes present, clutter absent
    no_clutter = build_dataset(data_cfg(name.capitalize(), root, label_map={4: 255}), "val", train=False)[0]
    assert (no_clutter["label"] == 4).sum() == 0  # label_map applies after the decoding (e.g. ignore cars)


def colour_label(index_label: np.ndarray, palette) -> np.ndarray:
    """0-based classes (255 -> the last palette colour) -> (H, W, 3) uint8 RGB."""
    pal = np.asarray(palette, dtype=np.uint8)
    return pal[np.where(index_label == 255, len(pal) - 1, index_label)]


def test_potsdam_official_rgb_tiles_and_splits(shared_data, tmp_path):
    src = shared_data / "isprs_samples/potsdam"
    img = np.asarray(Image.open(src / "img/2_10_0_0_512_512.png"))[:128, :128]
    index = raw(src / "ann/2_10_0_0_512_512.png")[:128, :128]
    label = np.where(index == 0, 255, index - 1)
    label[:4, :4] = 5  # a little clutter (red)
    (tmp_path / "2_Ortho_RGB").mkdir()
    (tmp_path / "5_Labels_all").mkdir()
    (tmp_path / "5_Labels_all_noBoundary").mkdir()
    for tile in ("2_10", "7_10", POTSDAM_TEST[0]):
        tifffile.imwrite(tmp_path / f"2_Ortho_RGB/top_potsdam_{tile}_RGB.tif", img)
        full = np.where(label == 255, 0, label)  # full reference: no boundary pixels
        tifffile.imwrite(tmp_path / f"5_Labels_all/top_potsdam_{tile}_label.tif", colour_label(full, ISPRS_PALETTE))
        tifffile.imwrite(tmp_path / f"5_Labels_all_noBoundary/top_potsdam_{tile}_label_noBoundary.tif",
                         colour_label(label, ISPRS_PALETTE))
    cfg = data_cfg("Potsdam", tmp_path)
    train, val = DATASETS["Potsdam"](cfg, "train", [], 0), DATASETS["Potsdam"](cfg, "val", [], 0)
    assert train.names == ["top_potsdam_2_10_RGB"]  # 7_10 dropped, test tile held out
    assert val.names == [f"top_potsdam_{POTSDAM_TEST[0]}_RGB"]
    assert train.pairs[0][1].parent.name == "5_Labels_all" and val.pairs[0][1].parent.name.endswith("noBoundary")
    np.testing.assert_array_equal(val[0]["label"].numpy(), label)  # colours -> classes, black -> ignore
    np.testing.assert_array_equal(train[0]["label"].numpy(), np.where(label == 255, 0, label))
    bad = colour_label(label, ISPRS_PALETTE)
    bad[0, 0] = (10, 20, 30)
    tifffile.imwrite(tmp_path / f"5_Labels_all_noBoundary/top_potsdam_{POTSDAM_TEST[0]}_label_noBoundary.tif", bad)
    with pytest.raises(ValueError, match=r"outside the palette.*\(10, 20, 30\)"):
        DATASETS["Potsdam"](cfg, "val", [], 0)[0]


def test_uavid_official_layout_colour_labels(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 8, (40, 60))
    for seq in ("seq1", "seq2"):  # the same frame name in two sequences
        (tmp_path / f"uavid_train/{seq}/Images").mkdir(parents=True)
        (tmp_path / f"uavid_train/{seq}/Labels").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
            tmp_path / f"uavid_train/{seq}/Images/000000.png")
        Image.fromarray(np.asarray(UAVID_PALETTE, dtype=np.uint8)[label]).save(
            tmp_path / f"uavid_train/{seq}/Labels/000000.png")
    ds = DATASETS["UAVid"](data_cfg("UAVid", tmp_path), "train", [], 0)
    assert ds.names == ["seq1_000000", "seq2_000000"] and ds[1]["name"] == "seq2_000000"
    np.testing.assert_array_equal(ds[0]["label"].numpy(), label)  # clutter (black) is class 7


def test_tile_dataset_round_trip(shared_data, tmp_path):
    src = DATASETS["Potsdam"](data_cfg("Potsdam", shared_data / "isprs_samples/potsdam"), "val", [], 0)
    n = tile_dataset(src, tmp_path, "val", size=200, stride=200)  # 512 px -> offsets 0, 200, 312
    assert n == 9
    tiles = DATASETS["Potsdam"](data_cfg("Potsdam", tmp_path), "val", [], 0)
    assert len(tiles) == 9
    i = tiles.names.index("2_10_0_0_512_512_312_200")
    np.testing.assert_array_equal(tiles[i]["label"].numpy(), src[0]["label"].numpy()[312:, 200:400])
    np.testing.assert_array_equal(read_image(tmp_path / "img_dir/val/2_10_0_0_512_512_312_200.png"),
                                  read_image(shared_data / "isprs_samples/potsdam/img/2_10_0_0_512_512.png")[312:, 200:400])
