"""Bad-input suite: every loader error names the file and the problem; config errors list the valid
choices; overrides are parsed as literals, never evaluated.

tests/test_data.py holds the first cases (missing label, label without image, size mismatch, label
value outside the class set, colour outside the palette, corrupt image / .npy, wrong channel count,
empty image folder, missing dataset folder, bad glacier mask values); these add the rest.
"""

import numpy as np
import pytest
import tifffile
from PIL import Image

import configs
from iceseg.data import build_dataset


def _glacier(tmp_path, n=5, bands=5, mask_hw=(32, 32)):
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(tmp_path / f"masked_{i}.npy", rng.random((32, 32, bands)).astype(np.float32))
        tifffile.imwrite(tmp_path / f"{i}.tif", (rng.random(mask_hw) > 0.5).astype(np.uint8) * 255)
    cfg = configs.get_config("unetpp_glacier").data
    cfg.root = str(tmp_path)
    return cfg


def _first_item(cfg, split="train"):
    """Build the split and read every item (errors in any file surface)."""
    ds = build_dataset(cfg, split, train=False)
    return [ds[i] for i in range(len(ds))]


def _nwpu(tmp_path, n=2):
    rng = np.random.default_rng(0)
    for split in ("train", "train_labels"):
        (tmp_path / split).mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "train" / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 5, (16, 24), dtype=np.uint8)).save(tmp_path / "train_labels" / f"{i:03d}.png")
    cfg = configs.get_config("demo").data
    cfg.root = str(tmp_path)
    return cfg


def _folder(tmp_path, num_classes=3, in_channels=3):
    for split in ("train", "train_labels"):
        (tmp_path / split).mkdir(exist_ok=True)
    cfg = configs.get_config("demo").data
    cfg.root, cfg.dataset, cfg.num_classes, cfg.in_channels = str(tmp_path), "Folder", num_classes, in_channels
    cfg.test_pipeline = []
    return cfg


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------ Glacier (.npy images, .tif masks)

def test_glacier_mask_without_image(tmp_path):
    cfg = _glacier(tmp_path)
    tifffile.imwrite(tmp_path / "zz.tif", np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"zz\.tif: label without image \(no .*masked_zz\.npy"):
        build_dataset(cfg, "train", train=False)


def test_glacier_truncated_npy(tmp_path):
    cfg = _glacier(tmp_path)
    for i in range(5):
        _truncate(tmp_path / f"masked_{i}.npy")
    with pytest.raises(ValueError, match=r"masked_\d\.npy: unreadable or corrupt image .*not fully written"):
        _first_item(cfg)


def test_glacier_truncated_tif_mask(tmp_path):
    cfg = _glacier(tmp_path)
    for i in range(5):
        _truncate(tmp_path / f"{i}.tif")
    with pytest.raises(ValueError, match=r"[0-4]\.tif: unreadable or corrupt label"):
        _first_item(cfg)


def test_glacier_wrong_band_count(tmp_path):
    cfg = _glacier(tmp_path, bands=4)
    with pytest.raises(ValueError, match=r"masked_\d\.npy: has 4 channels, the config expects 5"):
        _first_item(cfg)


def test_glacier_mask_size_mismatch(tmp_path):
    cfg = _glacier(tmp_path, mask_hw=(30, 32))
    with pytest.raises(ValueError, match=r"\d\.tif: label size 32x30 \(WxH\) differs from image masked_\d\.npy size 32x32"):
        _first_item(cfg)


def test_glacier_no_tiles_after_filtering(tmp_path):
    np.save(tmp_path / "tile_0.npy", np.zeros((32, 32, 5), np.float32))  # not named masked_<id>.npy
    cfg = configs.get_config("unetpp_glacier").data
    cfg.root = str(tmp_path)
    with pytest.raises(ValueError, match=f"{tmp_path}: no masked_<id>.npy files"):
        build_dataset(cfg, "train", train=False)


def test_glacier_split_empty_after_filtering(tmp_path):
    cfg = _glacier(tmp_path, n=1)  # one tile: the 20 % validation share takes it
    with pytest.raises(ValueError, match=f"{tmp_path}: the train split is empty \\(1 tiles"):
        build_dataset(cfg, "train", train=False)


# ------------------------------------------------------------------ NWPU layout (.png / .jpg)

def test_nwpu_empty_split_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train_labels").mkdir()
    cfg = configs.get_config("demo").data
    cfg.root = str(tmp_path)
    with pytest.raises(ValueError, match=r"train: no images with extensions .jpg"):
        build_dataset(cfg, "train", train=False)


def test_nwpu_truncated_png_image(tmp_path):
    cfg = _nwpu(tmp_path)
    _truncate(tmp_path / "train" / "001.png", keep=0.6)
    with pytest.raises(ValueError, match=r"train/001\.png: unreadable or corrupt image .*truncated"):
        _first_item(cfg)


def test_nwpu_truncated_jpg_image(tmp_path):
    cfg = _nwpu(tmp_path)
    rng = np.random.default_rng(1)
    (tmp_path / "train" / "001.png").unlink()
    Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "train" / "001.jpg")
    _truncate(tmp_path / "train" / "001.jpg", keep=0.6)
    with pytest.raises(ValueError, match=r"001\.jpg: unreadable or corrupt image .*(?i:truncated)"):
        _first_item(cfg)


def test_nwpu_truncated_label(tmp_path):
    cfg = _nwpu(tmp_path)
    _truncate(tmp_path / "train_labels" / "000.png", keep=0.6)
    with pytest.raises(ValueError, match=r"train_labels/000\.png: unreadable or corrupt label"):
        _first_item(cfg)


def test_nwpu_missing_label_folder(tmp_path):
    cfg = _nwpu(tmp_path)
    (tmp_path / "train_labels").rename(tmp_path / "labels")
    with pytest.raises(FileNotFoundError, match=r"label folder not found: .*train_labels \(needed for images in"):
        build_dataset(cfg, "train", train=False)


# ------------------------------------------------------------------ Folder (.tif / .npy / colour PNG)

def test_folder_truncated_compressed_tif(tmp_path):
    cfg = _folder(tmp_path, in_channels=5)
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 5), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "train" / "a.tif", img, compression="zlib")
    tifffile.imwrite(tmp_path / "train_labels" / "a.tif", np.zeros((64, 64), np.uint8))
    _truncate(tmp_path / "train" / "a.tif")  # tifffile alone would return a wrongly shaped array
    with pytest.raises(ValueError, match=r"train/a\.tif: unreadable or corrupt image .*truncated or corrupt TIFF"):
        _first_item(cfg)


def test_folder_two_images_share_a_stem(tmp_path):
    cfg = _folder(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "train_labels" / "a.png")
    with pytest.raises(ValueError, match=r"train: two images share the stem 'a'"):
        build_dataset(cfg, "train", train=False)


def test_folder_non_integer_npy_label(tmp_path):
    cfg = _folder(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    np.save(tmp_path / "train_labels" / "a.npy", np.full((8, 8), 0.5, np.float32))
    with pytest.raises(ValueError, match=r"a\.npy: label has non-integer values \(dtype float32\)"):
        _first_item(cfg)


def test_folder_colour_label_without_palette(tmp_path):
    cfg = _folder(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    lab = np.zeros((8, 8, 3), np.uint8)
    lab[0, 0] = (255, 0, 0)
    Image.fromarray(lab).save(tmp_path / "train_labels" / "a.png")
    with pytest.raises(ValueError, match=r"train_labels/a\.png: colour label but no palette"):
        _first_item(cfg)


def test_folder_bad_class_dict(tmp_path):
    cfg = _folder(tmp_path)
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nwater,0,red,0\n")
    with pytest.raises(ValueError, match=r"class_dict\.csv: bad colour value"):
        build_dataset(cfg, "train", train=False)


def test_folder_image_with_too_many_dimensions(tmp_path):
    cfg = _folder(tmp_path)
    np.save(tmp_path / "train" / "a.npy", np.zeros((2, 8, 8, 3), np.float32))
    np.save(tmp_path / "train_labels" / "a.npy", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"train/a\.npy: expected a 2-D or 3-D image, got shape \(2, 8, 8, 3\)"):
        _first_item(cfg)


# ------------------------------------------------------------------ AutoICE (.nc scenes)

def test_autoice_truncated_nc_scene(tmp_path):
    from iceseg.autoice import make_synthetic_dataset

    make_synthetic_dataset(tmp_path, n_train=2, n_val=1, size=(64, 64))
    scene = sorted(tmp_path.glob("*_prep.nc"))[0]
    _truncate(scene)
    cfg = configs.get_config("deeplab_autoice_debug").data
    cfg.root = str(tmp_path)
    with pytest.raises(ValueError, match=rf"{scene.name}: .*truncated"):
        _first_item(cfg)


# ------------------------------------------------------------------ configs and overrides

def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(KeyError, match=r"unknown config key 'train.max_iter'.*Did you mean max_iters.*Valid keys: "
                                        r"work_dir, seed, max_iters"):
        configs.apply_overrides(configs.get_config("demo"), ["--train.max_iter=3"])


def test_unknown_config_name_lists_valid_names():
    with pytest.raises(KeyError, match=r"unknown config 'nope'\. Valid configs: .*demo.*unetpp_glacier_debug"):
        configs.get_config("nope")


def test_wrong_type_names_the_expected_type():
    with pytest.raises(TypeError, match=r"--train.nonfinite_patience: expected int \(current value 5\), got str"):
        configs.apply_overrides(configs.get_config("demo"), ["--train.nonfinite_patience=five"])


def test_overrides_are_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = configs.get_config("demo")
    code = "__import__('pathlib').Path('pwned').touch()"
    configs.apply_overrides(cfg, [f"--train.work_dir={code}"])
    assert cfg.train.work_dir == code and not (tmp_path / "pwned").exists()  # kept as a plain string
    with pytest.raises(TypeError, match="expected int"):
        configs.apply_overrides(cfg, [f"--train.max_iters={code}"])
    with pytest.raises(TypeError, match="expected float"):
        configs.apply_overrides(cfg, ["--optim.lr=1e-3*2"])  # arithmetic is not a literal
    assert not (tmp_path / "pwned").exists()
