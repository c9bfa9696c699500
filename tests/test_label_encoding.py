"""Label encodings decided from the files (spec icesegnet.md §8.7) and the band axis read from the file.

NWPU labels are never shifted blindly: one_based / zero_based / colour is detected or given, an
ambiguous split is an error with the override; class_dict.csv is matched by class name. Images are
read as stored: TIFF axes decide the band axis, .npy is (H, W, C), Pillow modes are not converted
unless data.image_mode says so.
"""

import numpy as np
import pytest
import tifffile
from PIL import Image

import configs
from iceseg.data import build_dataset, read_image


def _nwpu(tmp_path, labels, dataset="NWPU_YRCC2", ext=".png"):
    """Write ``{stem: label array}`` (H, W) index maps or (H, W, 3) colour labels with random RGB images."""
    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "train_labels").mkdir(exist_ok=True)
    for stem, lab in labels.items():
        Image.fromarray(rng.integers(0, 255, (*lab.shape[:2], 3), dtype=np.uint8)).save(tmp_path / "train" / f"{stem}{ext}")
        Image.fromarray(lab).save(tmp_path / "train_labels" / f"{stem}.png")
    cfg = configs.get_config("demo").data
    cfg.root, cfg.dataset, cfg.test_pipeline = str(tmp_path), dataset, []
    return cfg


def _label(values, h=4, w=6):
    return np.resize(np.asarray(values, np.uint8), (h, w))


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ index labels: detection and override

def test_one_based_detected_when_value_c_is_present(tmp_path):
    raw = _label([0, 1, 2, 3, 4, 4])
    cfg = _nwpu(tmp_path, {"000": raw, "001": _label([1, 2])})
    ds = build_dataset(cfg, "train", train=False)
    assert ds.label_encoding == "one_based"
    assert ds.label_mapping_note == "raw 1..4 -> classes 0..3, raw 0 -> ignore 255"
    assert np.array_equal(ds[0]["label"].numpy(), np.where(raw == 0, 255, raw.astype(np.int64) - 1))


def test_every_split_shares_the_encoding_decided_from_all_labels(tmp_path):
    cfg = _nwpu(tmp_path, {"000": _label([0, 1, 2, 3, 4])})
    (tmp_path / "val").mkdir()
    (tmp_path / "val_labels").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "val" / "v.png")
    Image.fromarray(_label([0, 1, 2, 3])).save(tmp_path / "val_labels" / "v.png")  # no raw 4 in val alone
    val = build_dataset(cfg, "val", train=False)
    assert val.label_encoding == "one_based" and val[0]["label"].numpy()[0, :4].tolist() == [255, 0, 1, 2]


def test_one_based_with_label_map_as_in_the_ex_debug_config(tmp_path):
    cfg = _nwpu(tmp_path, {"a": _label([0, 1, 2, 3, 4])}, dataset="NWPU_YRCC_EX")
    cfg.label_map = {3: 2}  # synthetic raw 4 (streaming) -> class 2 after the shift; zero_based cannot fit raw 4
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nland,0,0,0\nwater,0,255,0\nshore ice,0,255,255\n"
                                             "streaming,255,0,255\n")  # synthetic palette: unused for index labels
    ds = build_dataset(cfg, "train", train=False)
    assert ds.palette is None and ds[0]["label"].numpy()[0, :5].tolist() == [255, 0, 1, 2, 2]
    assert ds.label_encoding == "one_based"


def test_zero_based_detected_only_when_unambiguous(tmp_path):
    cfg = _nwpu(tmp_path, {"a": _label([0, 1, 2, 3, 100])})
    cfg.label_map = {100: 255}  # no-data 100 -> ignore fits raw 0..3 only as zero_based (one_based gives 99)
    ds = build_dataset(cfg, "train", train=False)
    assert ds[0]["label"].numpy()[0, :5].tolist() == [0, 1, 2, 3, 255]
    assert ds.label_encoding == "zero_based"


def test_values_0_to_c_minus_1_are_ambiguous_and_name_file_values_and_override(tmp_path):
    cfg = _nwpu(tmp_path, {"000": _label([1, 2, 3]), "001": _label([0, 1, 2, 3])})
    with pytest.raises(ValueError) as e:
        build_dataset(cfg, "train", train=False)
    msg = _one_line_error(e)
    assert msg.startswith(str(tmp_path / "train_labels" / "001.png") + ":")  # the file holding raw 0
    assert "label values [0, 1, 2, 3]" in msg
    assert "one_based: raw 1..4 -> classes 0..3, raw 0 -> ignore 255, so classes [3] stay empty" in msg
    assert "zero_based: raw 0..3 -> classes 0..3" in msg
    assert "--data.label_encoding=zero_based or --data.label_encoding=one_based" in msg


@pytest.mark.parametrize("encoding,expected", [("zero_based", [0, 1, 2, 3, 255]),
                                               ("one_based", [255, 0, 1, 2, 255])])  # raw 255 stays ignore (mmseg)
def test_explicit_label_encoding_is_honoured(tmp_path, encoding, expected):
    cfg = _nwpu(tmp_path, {"a": _label([0, 1, 2, 3, 255])})  # ambiguous: auto would refuse it
    cfg.label_encoding = encoding
    ds = build_dataset(cfg, "train", train=False)
    assert ds[0]["label"].numpy()[0, :5].tolist() == expected and ds.label_encoding == encoding


def test_explicit_zero_based_still_rejects_out_of_range_values_per_file(tmp_path):
    cfg = _nwpu(tmp_path, {"000": _label([0, 1, 2, 3, 4])})
    cfg.label_encoding = "zero_based"
    with pytest.raises(ValueError, match=r"train_labels/000\.png: label values \[4\] \(raw\) outside the class set 0\.\.3"):
        build_dataset(cfg, "train", train=False)[0]


def test_values_fitting_no_encoding_fail_when_the_dataset_is_built(tmp_path):
    cfg = _nwpu(tmp_path, {"000": _label([0, 1, 2]), "001": _label([0, 5])})
    with pytest.raises(ValueError) as e:
        build_dataset(cfg, "train", train=False)  # no item read: the scan decides
    msg = _one_line_error(e)
    assert msg.startswith(str(tmp_path / "train_labels" / "001.png") + ": label values [5] (raw) outside")
    assert "under every label encoding" in msg and "found [0, 1, 2, 5]" in msg


def test_unknown_label_encoding(tmp_path):
    cfg = _nwpu(tmp_path, {"a": _label([1, 4])})
    cfg.label_encoding = "1-based"
    with pytest.raises(ValueError, match=r"data\.label_encoding must be 'auto' or one of one_based, zero_based, colour"):
        build_dataset(cfg, "train", train=False)


def test_folder_keeps_reduce_zero_label_by_default_and_takes_an_explicit_encoding(tmp_path):
    cfg = _nwpu(tmp_path, {"a": _label([0, 1, 2, 3])})
    cfg.dataset, cfg.num_classes = "Folder", 4
    auto = build_dataset(cfg, "train", train=False)
    assert auto[0]["label"].numpy()[0, :4].tolist() == [0, 1, 2, 3]  # reduce_zero_label False: as stored
    cfg.label_encoding = "one_based"
    ds = build_dataset(cfg, "train", train=False)
    assert ds[0]["label"].numpy()[0, :4].tolist() == [255, 0, 1, 2] and ds.label_encoding == "one_based"


# ------------------------------------------------------------------ colour labels and class_dict.csv

def _colour_label(colours, h=4):
    return np.array([colours] * h, np.uint8)  # (h, len(colours), 3)


def test_class_dict_matched_by_name_any_order_and_case(tmp_path):
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nStreaming,255,0,255\nWATER,0,255,0\n land ,0,0,0\n"
                                             "Shore_Ice,0,255,255\nvoid,128,128,128\n")
    lab = _colour_label([(0, 0, 0), (0, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128)])
    cfg = _nwpu(tmp_path, {"c": lab})
    ds = build_dataset(cfg, "train", train=False)
    assert ds[0]["label"].numpy()[0].tolist() == [0, 1, 2, 3, 255]  # dataset class order; void -> ignore
    assert ds.label_encoding == "colour"


@pytest.mark.parametrize("rows,missing,extra", [
    ("land,0,0,0\nwater,0,255,0\nshore ice,0,255,255\ndrift ice,255,0,255\n", "['streaming']", "['drift ice']"),
    ("land,0,0,0\nwater,0,255,0\nshore ice,0,255,255\n", "['streaming']", "[]"),
    ("land,0,0,0\nwater,0,255,0\nshore ice,0,255,255\nstreaming,255,0,255\nsnow,9,9,9\n", "[]", "['snow']"),
])
def test_class_dict_missing_or_extra_class_is_an_error(tmp_path, rows, missing, extra):
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\n" + rows)
    cfg = _nwpu(tmp_path, {"c": _colour_label([(0, 0, 0), (0, 255, 0)])})
    with pytest.raises(ValueError) as e:
        build_dataset(cfg, "train", train=False)
    msg = _one_line_error(e)
    assert msg.startswith(str(tmp_path / "class_dict.csv") + ":")
    assert f"missing {missing}, extra {extra}" in msg
    assert "expected ['land', 'water', 'shore ice', 'streaming']" in msg


def test_colour_and_index_labels_mixed(tmp_path):
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nland,0,0,0\nwater,0,255,0\nshore ice,0,255,255\n"
                                             "streaming,255,0,255\n")
    cfg = _nwpu(tmp_path, {"a": _colour_label([(0, 255, 0)] * 3), "b": _label([1, 2])[:, :3]})
    with pytest.raises(ValueError, match=r"train_labels/a\.png: colour label, but .*b\.png is a single-channel"):
        build_dataset(cfg, "train", train=False)


# ------------------------------------------------------------------ band axis: TIFF, .npy

def test_tif_contig_is_hwc_and_planar_or_page_stack_is_chw(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 255, (24, 40, 36), dtype=np.uint8)  # 36 bands, H <= 32: the old guess transposed it
    tifffile.imwrite(tmp_path / "contig.tif", hwc, photometric="minisblack", planarconfig="contig")
    assert np.array_equal(read_image(tmp_path / "contig.tif"), hwc)
    chw = rng.integers(0, 255, (5, 16, 24), dtype=np.uint8)  # small tile: the old guess kept (5, 16, 24)
    tifffile.imwrite(tmp_path / "separate.tif", chw, photometric="minisblack", planarconfig="separate")
    assert np.array_equal(read_image(tmp_path / "separate.tif"), chw.transpose(1, 2, 0))
    tifffile.imwrite(tmp_path / "pages.tif", chw.astype(np.float32))  # axes QYX: 5 pages
    assert np.array_equal(read_image(tmp_path / "pages.tif", in_channels=5), chw.transpose(1, 2, 0))
    tifffile.imwrite(tmp_path / "grey.tif", chw[0])
    assert read_image(tmp_path / "grey.tif", in_channels=1).shape == (16, 24, 1)


def test_tif_page_stack_of_an_hwc_array_is_not_guessed_back(tmp_path):
    cfg = _nwpu(tmp_path, {"a": _label([1, 2, 3, 4], 16, 24)})
    cfg.dataset, cfg.num_classes, cfg.in_channels = "Folder", 5, 5
    (tmp_path / "train" / "a.png").unlink()
    tifffile.imwrite(tmp_path / "train" / "a.tif", np.zeros((16, 24, 5), np.uint8))  # no photometric: 16 pages
    with pytest.raises(ValueError, match=r"train/a\.tif: has 16 channels, the config expects 5 .*stored shape "
                                         r"\(16, 24, 5\) read as \(H, W, C\) = \(24, 5, 16\) \(TIFF axes QYX.*"
                                         r"planarconfig='contig'"):
        build_dataset(cfg, "train", train=False)[0]


def test_npy_is_never_transposed_and_a_band_mismatch_names_both_shapes(tmp_path):
    cfg = _nwpu(tmp_path, {"a": _label([1, 2], 5, 64)})
    cfg.dataset, cfg.num_classes, cfg.in_channels = "Folder", 4, 64
    (tmp_path / "train" / "a.png").unlink()
    arr = np.arange(5 * 64 * 64, dtype=np.float32).reshape(5, 64, 64)
    np.save(tmp_path / "train" / "a.npy", arr)
    img = build_dataset(cfg, "train", train=False)[0]["img"]
    assert np.array_equal(img.numpy(), arr.transpose(2, 0, 1))  # read as (H, W, C) = (5, 64, 64) -> (C, H, W)
    cfg.in_channels = 5
    with pytest.raises(ValueError, match=r"train/a\.npy: has 64 channels, the config expects 5 \(data\.in_channels\); "
                                         r"stored shape \(5, 64, 64\) read as \(H, W, C\) = \(5, 64, 64\) "
                                         r"\(\.npy rasters are \(H, W, C\)"):
        build_dataset(cfg, "train", train=False)[0]


# ------------------------------------------------------------------ Pillow modes and data.image_mode

def test_greyscale_jpeg_in_an_rgb_dataset_is_an_error_unless_image_mode_converts(tmp_path):
    cfg = _nwpu(tmp_path, {"g": _label([1, 2, 3, 4], 16, 24)}, ext=".jpg")
    grey = np.random.default_rng(0).integers(0, 255, (16, 24), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "train" / "g.jpg")
    assert read_image(tmp_path / "train" / "g.jpg").shape == (16, 24, 1)
    with pytest.raises(ValueError, match=r"train/g\.jpg: has 1 channels, the config expects 3 .*Pillow mode L as "
                                         r"stored; --data.image_mode=RGB converts"):
        build_dataset(cfg, "train", train=False)[0]
    cfg.image_mode = "RGB"
    img = build_dataset(cfg, "train", train=False)[0]["img"]
    assert img.shape == (3, 16, 24) and bool((img[0] == img[1]).all() and (img[0] == img[2]).all())


def test_rgba_png_is_read_with_alpha_and_rejected_in_a_3_band_dataset(tmp_path):
    cfg = _nwpu(tmp_path, {"a": _label([1, 2, 3, 4], 8, 8)})
    rgba = np.random.default_rng(0).integers(0, 255, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "a.png")
    with pytest.raises(ValueError, match=r"train/a\.png: has 4 channels, the config expects 3 .*Pillow mode RGBA "
                                         r"as stored; --data.image_mode=RGB converts"):
        build_dataset(cfg, "train", train=False)[0]
    assert np.array_equal(read_image(tmp_path / "train" / "a.png", in_channels=4), rgba)
    cfg.image_mode = "RGB"
    assert np.array_equal(build_dataset(cfg, "train", train=False)[0]["img"].numpy(),
                          rgba[..., :3].transpose(2, 0, 1).astype(np.float32))  # (C, H, W)


def test_unknown_image_mode(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"data\.image_mode must be '', 'RGB' or 'L', not 'CMYK'"):
        read_image(tmp_path / "a.png", image_mode="CMYK")


def test_palette_png_is_decoded_through_its_palette(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), "P")
    im.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    im.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").tolist() == [[[10, 20, 30], [40, 50, 60]], [[40, 50, 60], [70, 80, 90]]]
    im.save(tmp_path / "t.png", transparency=0)  # a transparent palette entry: RGBA, alpha 0 where index 0
    assert read_image(tmp_path / "t.png")[..., 3].tolist() == [[0, 255], [255, 255]]
