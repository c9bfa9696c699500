"""Datasets: pairing, label decoding, the Glacier split, and the bad-input errors (file + problem)."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import configs
from iceseg.data import DATASETS, build_dataset, glacier_split, pair_by_stem, read_image


def _write_pair(root, split, stem, img, label, ann_suffix="_labels"):
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}{ann_suffix}").mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / split / f"{stem}.png")
    Image.fromarray(label).save(root / f"{split}{ann_suffix}" / f"{stem}.png")


def _nwpu(tmp_path, n=2, h=16, w=24, label_value=None):
    rng = np.random.default_rng(0)
    for i in range(n):
        lab = rng.integers(0, 5, (h, w), dtype=np.uint8) if label_value is None else np.full((h, w), label_value, np.uint8)
        _write_pair(tmp_path, "train", f"{i:03d}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8), lab)
    cfg = configs.get_config("demo").data
    cfg.root = str(tmp_path)
    return cfg


def test_nwpu_reduce_zero_label_and_item_format(tmp_path):
    cfg = _nwpu(tmp_path)
    ds = build_dataset(cfg, "train", train=False)
    raw = np.asarray(Image.open(tmp_path / "train_labels" / "000.png")).astype(np.int64)
    item = ds[0]
    assert item["img"].shape == (3, 16, 24) and item["img"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["name"] == "000"
    expected = np.where(raw == 0, 255, raw - 1)
    assert np.array_equal(item["label"].numpy(), expected)


def test_nwpu_ex_accepts_annot_folders_and_label_map(tmp_path):
    rng = np.random.default_rng(1)
    _write_pair(tmp_path, "train", "a", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
                np.array([[1, 2, 3, 0]] * 8, np.uint8).repeat(2, 1), ann_suffix="annot")
    cfg = configs.get_config("demo").data
    cfg.root, cfg.dataset, cfg.label_map = str(tmp_path), "NWPU_YRCC_EX", {2: 0}  # after reduce: class 2 -> 0
    label = build_dataset(cfg, "train", train=False)[0]["label"].numpy()
    assert sorted(np.unique(label).tolist()) == [0, 1, 255]


def test_colour_labels_decode_through_class_dict(tmp_path):
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nland,0,0,0\nwater,0,255,0\nshore ice,0,255,255\n"
                                             "streaming,255,0,255\n")
    lab = np.zeros((4, 4, 3), np.uint8)
    lab[:2] = (0, 255, 0)
    lab[3, 3] = (255, 0, 255)
    _write_pair(tmp_path, "train", "c", np.zeros((4, 4, 3), np.uint8), lab)
    cfg = configs.get_config("demo").data
    cfg.root = str(tmp_path)
    out = build_dataset(cfg, "train", train=False)[0]["label"].numpy()
    assert out[0, 0] == 1 and out[2, 0] == 0 and out[3, 3] == 3  # palette index, no zero reduction
    lab[0, 0] = (1, 2, 3)
    Image.fromarray(lab).save(tmp_path / "train_labels" / "c.png")
    with pytest.raises(ValueError, match=r"c\.png.*colours outside the palette.*\(1, 2, 3\)"):
        build_dataset(cfg, "train", train=False)[0]


def test_read_image_tif_channels_first_and_npy(tmp_path):
    arr = np.random.default_rng(0).random((5, 40, 48)).astype(np.float32)
    tifffile.imwrite(tmp_path / "x.tif", arr)
    np.save(tmp_path / "y.npy", arr.transpose(1, 2, 0))
    assert read_image(tmp_path / "x.tif").shape == (40, 48, 5)
    assert np.array_equal(read_image(tmp_path / "y.npy"), arr.transpose(1, 2, 0))


def test_glacier_split_matches_sklearn_rule():
    ids = [f"t{i:02d}" for i in range(10)]
    train, val = glacier_split(ids, 0.2, 42, group=False)
    perm = np.random.RandomState(42).permutation(10)  # what train_test_split(random_state=42) draws
    assert val == perm[:2].tolist() and train == perm[2:].tolist()
    ids = [f"t{i}_aug_{k}" for i in range(5) for k in range(3)]
    train, val = glacier_split(ids, 0.2, 42, group=True)
    tiles = lambda idx: {ids[i].split("_")[0] for i in idx}  # noqa: E731
    assert len(val) == 3 and not tiles(train) & tiles(val)  # augmented copies never straddle


def test_glacier_masks_0_1_and_0_255(tmp_path):
    rng = np.random.default_rng(0)
    for i, scale in enumerate([1, 255, 1, 255, 1]):
        np.save(tmp_path / f"masked_{i}.npy", rng.random((32, 32, 5)).astype(np.float32))
        tifffile.imwrite(tmp_path / f"{i}.tif", (rng.random((32, 32)) > 0.5).astype(np.uint8) * scale)
    cfg = configs.get_config("unetpp_glacier").data
    cfg.root = str(tmp_path)
    tr, va = build_dataset(cfg, "train", train=False), build_dataset(cfg, "val", train=False)
    assert len(tr) + len(va) == 5 and len(va) == 1
    for ds in (tr, va):
        for item in ds:
            assert set(item["label"].unique().tolist()) <= {0, 1}


# ------------------------------------------------------------------ bad input: file name + problem

def test_missing_label_names_the_image(tmp_path):
    cfg = _nwpu(tmp_path)
    (tmp_path / "train_labels" / "001.png").unlink()
    with pytest.raises(ValueError, match=r"001\.png: missing label"):
        build_dataset(cfg, "train", train=False)


def test_label_without_image(tmp_path):
    cfg = _nwpu(tmp_path)
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(tmp_path / "train_labels" / "zzz.png")
    with pytest.raises(ValueError, match=r"zzz\.png: label without image"):
        build_dataset(cfg, "train", train=False)


def test_size_mismatch(tmp_path):
    cfg = _nwpu(tmp_path)
    Image.fromarray(np.ones((10, 24), np.uint8)).save(tmp_path / "train_labels" / "000.png")
    with pytest.raises(ValueError, match=r"000\.png: label size 24x10 .* differs from image 000\.png size 24x16"):
        build_dataset(cfg, "train", train=False)[0]


def test_label_value_outside_class_set(tmp_path):
    cfg = _nwpu(tmp_path, label_value=7)
    with pytest.raises(ValueError, match=r"000\.png: label values \[7\] \(raw\) outside the class set 0\.\.3"):
        build_dataset(cfg, "train", train=False)[0]


def test_unreadable_image(tmp_path):
    cfg = _nwpu(tmp_path)
    (tmp_path / "train" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=r"001\.png: unreadable or corrupt image"):
        build_dataset(cfg, "train", train=False)[1]


def test_wrong_channel_count(tmp_path):
    cfg = _nwpu(tmp_path)
    cfg.in_channels = 5
    with pytest.raises(ValueError, match=r"000\.png: has 3 channels, the config expects 5"):
        build_dataset(cfg, "train", train=False)[0]


def test_empty_split_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train_labels").mkdir()
    with pytest.raises(ValueError, match=r"train: no images"):
        pair_by_stem(tmp_path / "train", tmp_path / "train_labels")


def test_missing_nwpu_dataset_explains_layout_and_demo(tmp_path):
    cfg = configs.get_config("demo").data
    cfg.root = str(tmp_path / "NWPU_YRCC2")
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(cfg, "train", train=True)
    msg = str(e.value)
    assert "NWPU_YRCC2/train" in msg and "train_labels" in msg and "Baidu" in msg and "--config demo" in msg


def test_glacier_missing_mask_and_bad_mask_values(tmp_path):
    np.save(tmp_path / "masked_a.npy", np.zeros((32, 32, 5), np.float32))
    cfg = configs.get_config("unetpp_glacier").data
    cfg.root = str(tmp_path)
    with pytest.raises(ValueError, match=r"masked_a\.npy: missing label; expected .*a\.tif"):
        build_dataset(cfg, "train", train=False)
    tifffile.imwrite(tmp_path / "a.tif", np.full((32, 32), 3, np.uint8))
    np.save(tmp_path / "masked_b.npy", np.zeros((32, 32, 5), np.float32))
    tifffile.imwrite(tmp_path / "b.tif", np.full((32, 32), 3, np.uint8))
    with pytest.raises(ValueError, match=r"\.tif: mask values \[3\] are neither 0/1 nor 0/255"):
        ds = build_dataset(cfg, "train", train=False)
        ds[0]


def test_corrupt_npy(tmp_path):
    (tmp_path / "masked_a.npy").write_bytes(b"not a numpy file")
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "masked_b.npy").write_bytes(b"not a numpy file")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((32, 32), np.uint8))
    cfg = configs.get_config("unetpp_glacier").data
    cfg.root = str(tmp_path)
    with pytest.raises(ValueError, match=r"masked_[ab]\.npy: unreadable or corrupt image"):
        build_dataset(cfg, "train", train=False)[0]


def test_unknown_dataset_lists_valid_names():
    cfg = configs.get_config("demo").data
    cfg.dataset = "NWPU"
    with pytest.raises(KeyError, match="valid: " + ", ".join(sorted(DATASETS))):
        build_dataset(cfg, "train", train=True)


def test_augmentation_is_deterministic_per_epoch(tmp_path):
    cfg = _nwpu(tmp_path, h=64, w=64)
    cfg.train_pipeline = [{"type": "RandomCrop", "crop_size": (32, 32)}, {"type": "RandomFlip", "prob": 0.5}]
    ds = build_dataset(cfg, "train", train=True, seed=3)
    a, b = ds[0], ds[0]
    assert torch.equal(a["img"], b["img"]) and a["img"].shape == (3, 32, 32)
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["img"], a["img"])
