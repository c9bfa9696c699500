"""Tests for iceseg.transforms: determinism, shapes/dtypes, alignment, mmseg/albumentations semantics.

Literal expected values marked "golden" were produced once with the reference libraries (OpenCV 5.0.0
and 4.10.0 x86-64 wheels, albumentations 2.0.8, mmsegmentation 1.2.2 / mmcv 2.1.0); the tests only
read the literals, so they run without those libraries.
"""

import numpy as np
import pytest

from iceseg.transforms import (
    TRANSFORMS,
    Compose,
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomAffine,
    RandomBrightnessContrast,
    RandomCrop,
    RandomFlip,
    RandomResize,
    RandomRotate90,
    Resize,
    affine_matrix,
    build_transforms,
    hsv_to_rgb,
    resize_image,
    resize_label,
    rgb_to_hsv,
    warp_affine,
    warp_affine_label,
)


def make_pair(h=24, w=32, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        img = rng.integers(0, 256, (h, w, c)).astype(np.uint8)
    else:
        img = rng.random((h, w, c), dtype=np.float32)
    label = rng.integers(0, 4, (h, w)).astype(np.int64)
    label[:2] = 255
    return img, label


class LegacyRng:
    """Generator-style calls served by numpy's legacy RandomState (the stream mmcv/mmseg draw from)."""

    def __init__(self, seed):
        self.r = np.random.RandomState(seed)

    def integers(self, lo, hi=None):
        return self.r.randint(lo, hi)

    def random(self):
        return self.r.random_sample()

    def uniform(self, lo, hi):
        return self.r.uniform(lo, hi)


class CountingRng:
    """Wraps a Generator and counts ``integers`` calls (RandomCrop draws 2 per offset)."""

    def __init__(self, seed):
        self.g, self.calls = np.random.default_rng(seed), 0

    def integers(self, *args):
        self.calls += 1
        return self.g.integers(*args)


# --------------------------------------------------------------------------- pipeline-level

FULL_PIPELINE = [
    {"type": "RandomResize", "scale": [48, 32], "ratio_range": [0.5, 2.0], "keep_ratio": True},
    {"type": "RandomCrop", "crop_size": [20, 20], "cat_max_ratio": 0.75},
    {"type": "RandomFlip", "prob": 0.5, "direction": "horizontal"},
    {"type": "RandomRotate90", "prob": 0.5},
    {"type": "RandomAffine", "prob": 0.5},
    {"type": "PhotoMetricDistortion"},
    {"type": "Normalize", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
    {"type": "Pad", "size": [24, 24]},
]


def test_pipeline_deterministic_given_seed():
    pipe = build_transforms(FULL_PIPELINE)
    img, label = make_pair()
    outs = [pipe(img, label, np.random.default_rng(s)) for s in (7, 7, 8, 9, 10)]
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert any(not np.array_equal(outs[0][0], o[0]) for o in outs[2:])
    for out_img, out_label in outs:
        assert out_img.shape == (24, 24, 3) and out_img.dtype == np.float32
        assert out_label.shape == (24, 24) and out_label.dtype == np.int64
    np.testing.assert_array_equal(img, make_pair()[0])  # inputs not modified in place


SPECS = [  # (spec, geometric?)
    ({"type": "Resize", "scale": (40, 30)}, True),
    ({"type": "Resize", "scale_factor": 0.75}, True),
    ({"type": "RandomResize", "scale": (64, 32), "ratio_range": (0.5, 2.0)}, True),
    ({"type": "RandomCrop", "crop_size": (16, 16), "cat_max_ratio": 0.75}, True),
    ({"type": "RandomFlip", "prob": 1.0, "direction": ["horizontal", "vertical"]}, True),
    ({"type": "RandomRotate90", "prob": 1.0}, True),
    ({"type": "RandomAffine", "prob": 1.0}, True),
    ({"type": "Pad", "size_divisor": 16}, True),
    ({"type": "PhotoMetricDistortion"}, False),
    ({"type": "RandomBrightnessContrast", "prob": 1.0, "max_value": 255.0}, False),
]


@pytest.mark.parametrize("C", [1, 3, 5])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("spec,geometric", SPECS, ids=[s["type"] + str(i) for i, (s, _) in enumerate(SPECS)])
def test_shapes_and_dtypes(spec, geometric, C, dtype):
    img, label = make_pair(c=C, dtype=dtype)
    t = build_transforms([spec])
    for seed in range(3):
        out, lab = t(img, label, np.random.default_rng(seed))
        assert out.ndim == 3 and out.shape[2] == C
        assert lab.shape == out.shape[:2] and lab.dtype == label.dtype
        assert out.dtype == (img.dtype if geometric else np.float32)
        out2, lab2 = t(img, None, np.random.default_rng(seed))  # test time: no label
        assert lab2 is None
        np.testing.assert_array_equal(out, out2)


def test_bad_inputs_raise():
    img, label = make_pair()
    with pytest.raises(ValueError, match="RandomFlip: label shape"):
        RandomFlip()(img, label[:-1], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        RandomFlip()(img[..., 0], None, np.random.default_rng(0))


# --------------------------------------------------------------------------- flips / rot90


def id_pair(h, w):
    """Image whose channels encode the pixel id, and a label computed from the image."""
    ids = np.arange(h * w, dtype=np.float32).reshape(h, w)
    img = np.stack([ids, -ids], axis=-1)  # (h, w, 2)
    return img, (ids % 7).astype(np.int64)


@pytest.mark.parametrize("direction,flip", [("horizontal", lambda a: a[:, ::-1]), ("vertical", lambda a: a[::-1]),
                                            ("diagonal", lambda a: a[::-1, ::-1])])
def test_flip_moves_image_and_label_together(direction, flip):
    img, label = id_pair(5, 8)
    out, lab = RandomFlip(prob=1.0, direction=direction)(img, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out, flip(img))
    np.testing.assert_array_equal(lab, (out[..., 0] % 7).astype(np.int64))
    same, lab0 = RandomFlip(prob=0.0, direction=direction)(img, label, np.random.default_rng(0))
    np.testing.assert_array_equal(same, img)
    np.testing.assert_array_equal(lab0, label)


def test_flip_probability_and_list_prob():
    img, label = id_pair(3, 4)
    t = RandomFlip(prob=0.5)
    flipped = sum(not np.array_equal(t(img, label, np.random.default_rng(s))[0], img) for s in range(400))
    assert 150 < flipped < 250
    t = RandomFlip(prob=[0.3, 0.7], direction=["horizontal", "vertical"])
    vert = sum(np.array_equal(t(img, label, np.random.default_rng(s))[0], img[::-1]) for s in range(400))
    assert 240 < vert < 320
    with pytest.raises(ValueError, match="RandomFlip"):
        RandomFlip(direction="sideways")


def test_rot90_alignment_and_all_k():
    img, label = id_pair(4, 6)
    t = RandomRotate90(prob=1.0)
    seen = set()
    for s in range(40):
        out, lab = t(img, label, np.random.default_rng(s))
        np.testing.assert_array_equal(lab, (out[..., 0] % 7).astype(np.int64))
        k = next(k for k in range(4) if out.shape == np.rot90(img, k).shape and np.array_equal(out, np.rot90(img, k)))
        seen.add(k)
    assert seen == {0, 1, 2, 3}  # albumentations: np.rot90(x, k) (counter-clockwise), k uniform in {0..3}
    out, _ = RandomRotate90(prob=0.0)(img, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out, img)


# --------------------------------------------------------------------------- RandomCrop


def test_random_crop_cat_max_ratio_retries():
    img = np.zeros((60, 60, 1), np.float32)
    crop = RandomCrop(crop_size=(20, 20), cat_max_ratio=0.75)
    # one class everywhere (or one class + ignore): every check fails -> 10 checks + the 11th draw
    for label in (np.zeros((60, 60), np.int64), np.where(np.arange(60)[None] < 30, 0, 255).repeat(60, 0)):
        rng = CountingRng(0)
        crop(img, label, rng)
        assert rng.calls == 2 * 11
    # checkerboard: the first crop passes
    board = (np.add.outer(np.arange(60), np.arange(60)) % 2).astype(np.int64)
    rng = CountingRng(0)
    crop(img, board, rng)
    assert rng.calls == 2
    # cat_max_ratio = 1 never checks
    rng = CountingRng(0)
    RandomCrop(crop_size=20)(img, np.zeros((60, 60), np.int64), rng)
    assert rng.calls == 2


def test_random_crop_accepted_crops_satisfy_ratio():
    # class 0 on the left 45 columns, class 1 on the right 15: few 20x20 crops pass the 0.75 check
    label = np.where(np.arange(60)[None] < 45, 0, 1).repeat(60, 0).astype(np.uint8)
    img = np.stack([label.astype(np.float32)] * 2, -1)
    crop = RandomCrop(crop_size=(20, 20), cat_max_ratio=0.75)
    n_checked = 0
    for s in range(100):
        rng = CountingRng(s)
        out, lab = crop(img, label, rng)
        np.testing.assert_array_equal(out[..., 0], lab)
        if rng.calls < 22:  # accepted by the check
            n_checked += 1
            counts = np.bincount(lab.ravel(), minlength=2)
            assert (counts > 0).all() and counts.max() / counts.sum() < 0.75
    assert n_checked > 50


def test_random_crop_smaller_image():
    img, label = make_pair(h=12, w=40)
    out, lab = RandomCrop(crop_size=(16, 16))(img, label, np.random.default_rng(0))
    assert out.shape == (12, 16, 3) and lab.shape == (12, 16)


# --------------------------------------------------------------------------- resizing


def test_random_resize_ratio_bounds_and_keep_ratio():
    img, label = make_pair(h=16, w=40, c=1)
    t = RandomResize(scale=(100, 50), ratio_range=(0.5, 2.0), keep_ratio=True)
    widths = []
    for s in range(60):
        out, lab = t(img, label, np.random.default_rng(s))
        h, w = out.shape[:2]
        # factor = min(100 r / 40, 50 r / 16) = 2.5 r, r in [0.5, 2]
        assert int(40 * 1.25 + 0.5) - 1 <= w <= int(40 * 5.0 + 0.5)
        assert abs(h / w - 16 / 40) < 1.0 / min(h, w) + 1e-9  # aspect kept up to rounding
        assert lab.shape == (h, w) and set(np.unique(lab)) <= set(np.unique(label))
        widths.append(w)
    assert min(widths) < 80 and max(widths) > 160
    # exact mmcv arithmetic: r = U(0.5, 2), target = (int(100 r), int(50 r)), f = min(max/long, min/short)
    r = np.random.default_rng(3).random() * 1.5 + 0.5
    tw, th = int(100 * r), int(50 * r)
    f = min(max(tw, th) / 40, min(tw, th) / 16)
    assert t(img, label, np.random.default_rng(3))[0].shape == (int(16 * f + 0.5), int(40 * f + 0.5), 1)
    out, _ = RandomResize(scale=(100, 50), ratio_range=(1.0, 1.0), keep_ratio=False)(img, None, np.random.default_rng(0))
    assert out.shape == (50, 100, 1)


def test_resize_mmcv_sizes():
    img = np.zeros((640, 1600, 1), np.uint8)
    assert Resize(scale=(2048, 1024), keep_ratio=True)(img, None, None)[0].shape == (819, 2048, 1)  # spec §3.2
    small = np.zeros((32, 80, 1), np.float32)
    assert Resize(scale_factor=1.25)(small, None, None)[0].shape == (40, 100, 1)  # TTA view
    assert Resize(scale=(30, 50), keep_ratio=False)(small, None, None)[0].shape == (50, 30, 1)
    with pytest.raises(ValueError, match="exactly one"):
        Resize(scale=(10, 10), scale_factor=2.0)


def test_bilinear_follows_opencv_half_pixel_rule():
    x = np.array([[0, 50, 100, 250], [10, 20, 30, 40], [255, 0, 255, 0]], np.float32)[..., None]
    golden = np.array([  # cv2.resize(x, (7, 5), INTER_LINEAR), OpenCV 5.0.0
        [0.0, 17.857139587402344, 46.42856979370117, 75.0, 110.71428680419922, 196.42857360839844, 250.0],
        [4.0, 16.142860412597656, 35.57143020629883, 55.0, 78.71427917480469, 132.42857360839844, 166.0],
        [10.0, 13.571430206298828, 19.285709381103516, 25.0, 30.714279174804688, 36.42856979370117, 40.0],
        [157.0, 103.78572082519531, 18.642860412597656, 86.5, 154.35714721679688, 69.21427917480469, 16.0],
        [255.0, 163.92857360839844, 18.214290618896484, 127.5, 236.7857208251953, 91.07142639160156, 0.0]])
    np.testing.assert_allclose(resize_image(x, (7, 5))[..., 0], golden, atol=1e-4)
    # uint8 stays uint8, rounded
    out = resize_image(x.astype(np.uint8), (7, 5))
    assert out.dtype == np.uint8 and np.abs(out[..., 0].astype(float) - golden).max() <= 1.0


def test_nearest_label_follows_opencv_rule():
    src = np.arange(3, dtype=np.uint8)[None].repeat(2, 0)  # (2, 3)
    out = resize_label(src, (141, 2))
    # cv2 INTER_NEAREST: floor(x * 3 / 141) in double precision; x = 47 -> 1 (float32 torch gives 0)
    assert out[0, 47] == 1 and out[0, 46] == 0 and out[0, 94] == 2
    np.testing.assert_array_equal(resize_label(src, (6, 2))[0], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(resize_label(np.arange(6)[None], (3, 1))[0], [0, 2, 4])


# --------------------------------------------------------------------------- affine

GOLDEN_MATRIX_5x7 = np.array([  # albumentations create_affine_transformation_matrix, same arguments
    [0.8547485077444943, 0.36994505953194123, -0.3041356422973651],
    [-0.2408446076347429, 1.0614481763650145, 0.5996374701741995],
    [0.0, 0.0, 1.0]])


def test_affine_matrix_matches_albumentations():
    m = affine_matrix(5, 7, scale_x=0.9, scale_y=1.1, rotate=12.5, shear_x=7.0, shear_y=-3.0)
    np.testing.assert_allclose(m, GOLDEN_MATRIX_5x7, rtol=0, atol=1e-12)
    np.testing.assert_allclose(affine_matrix(5, 7) @ [3.0, 2.0, 1.0], [3.0, 2.0, 1.0])
    # rotation about the centre (W/2 - 0.5, H/2 - 0.5) keeps the centre fixed
    np.testing.assert_allclose(affine_matrix(5, 7, rotate=33.0, scale_x=1.2) @ [3.0, 2.0, 1.0], [3.0, 2.0, 1.0])


def test_affine_warp_matches_albumentations_golden():
    img = (np.arange(42).reshape(6, 7, 1) * 6).astype(np.uint8)
    lab = (np.arange(42).reshape(6, 7) % 4).astype(np.uint8)
    # A.Affine(scale={"x": 0.9, "y": 1.1}, rotate=12.5, shear={"x": 7, "y": -3}, p=1); albumentations
    # negates the sampled shear before building the matrix
    m = affine_matrix(6, 7, scale_x=0.9, scale_y=1.1, rotate=12.5, shear_x=-7.0, shear_y=3.0)
    golden_img = [[0, 6, 17, 29, 42, 55, 30], [26, 41, 54, 67, 80, 93, 58], [53, 79, 91, 104, 117, 130, 95],
                  [71, 116, 129, 142, 155, 167, 140], [82, 153, 166, 179, 192, 205, 193],
                  [84, 191, 204, 217, 229, 224, 193]]
    golden_lab = [[0, 1, 2, 3, 0, 0, 0], [3, 0, 1, 2, 3, 0, 0], [2, 3, 0, 1, 2, 3, 0], [1, 2, 3, 0, 1, 2, 3],
                  [1, 1, 2, 3, 0, 1, 2], [0, 1, 1, 2, 3, 0, 1]]
    out = warp_affine(img, m)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], golden_img)
    np.testing.assert_array_equal(warp_affine_label(lab, m), golden_lab)


def test_affine_warp_geometry():
    """Effect, not bits: +90 degrees is np.rot90 (counter-clockwise on screen) for image and label, and a 2x
    scale about the centre (W/2 - 0.5, H/2 - 0.5) halves the slopes of a ramp and keeps the centre value."""
    img = np.arange(5 * 5 * 2, dtype=np.float32).reshape(5, 5, 2)
    m = affine_matrix(5, 5, rotate=90.0)
    np.testing.assert_allclose(warp_affine(img, m), np.rot90(img), atol=1e-5)
    np.testing.assert_array_equal(warp_affine(img.astype(np.uint8), m), np.rot90(img.astype(np.uint8)))
    np.testing.assert_array_equal(warp_affine_label(np.arange(25).reshape(5, 5), m), np.rot90(np.arange(25).reshape(5, 5)))
    ys, xs = np.mgrid[0:6, 0:6].astype(np.float32)
    out = warp_affine((6 * ys + xs)[..., None], affine_matrix(6, 6, scale_x=2.0, scale_y=2.0))[..., 0]
    np.testing.assert_allclose(np.diff(out, axis=1), 0.5, atol=1e-5)
    np.testing.assert_allclose(np.diff(out, axis=0), 3.0, atol=1e-5)
    np.testing.assert_allclose(out[0, 0], 6 * 1.25 + 1.25, atol=1e-5)  # source (1.25, 1.25) of pixel (0, 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_affine_identity(dtype):
    img, label = make_pair(c=5, dtype=dtype)
    out, lab = RandomAffine(prob=1.0, scale=1.0, rotate=0.0, shear=0.0)(img, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(lab, label)
    # the warp itself is exact at integer source positions too
    np.testing.assert_array_equal(warp_affine(img, np.eye(3)), img)


def test_affine_labels_stay_in_value_set_and_fill():
    img, _ = make_pair(h=40, w=40, c=2, dtype=np.float32)
    label = np.where(np.add.outer(np.arange(40), np.arange(40)) % 10 < 5, 3, 7).astype(np.uint8)
    label[:4] = 255
    t = RandomAffine(prob=1.0, scale=(0.9, 1.1), rotate=(-15, 15), shear=(-10, 10), fill=0.5, fill_label=255)
    for s in range(5):
        out, lab = t(img, label, np.random.default_rng(s))
        assert set(np.unique(lab)) <= {3, 7, 255}
        assert lab.dtype == np.uint8 and out.shape == img.shape
    # constant border: a 20 degree rotation leaves the corners outside the source -> exactly the fill values
    m = affine_matrix(40, 40, rotate=20.0)
    np.testing.assert_array_equal(warp_affine(img, m, fill=[0.25, 0.75])[0, 0], np.float32([0.25, 0.75]))
    assert warp_affine_label(label, m, fill=9)[0, 0] == 9
    with pytest.raises(ValueError, match="fill has 3 values"):
        warp_affine(img, m, fill=[0, 0, 0])


# --------------------------------------------------------------------------- photometric


def test_brightness_contrast_formula_and_clip():
    img = np.array([[[0.1, 0.5, 0.9]]], np.float32)
    # out = img * (1 + c) + b * max_value, clipped to [0, max_value]; same alpha/beta for every channel
    out, _ = RandomBrightnessContrast(prob=1.0, brightness_limit=(0.1, 0.1), contrast_limit=(0.2, 0.2))(
        img, None, np.random.default_rng(0))
    np.testing.assert_allclose(out[0, 0], [0.22, 0.70, 1.0], atol=1e-6)
    out, _ = RandomBrightnessContrast(prob=1.0, brightness_limit=(-0.2, -0.2), contrast_limit=(-0.2, -0.2))(
        img, None, np.random.default_rng(0))
    np.testing.assert_allclose(out[0, 0], [0.0, 0.2, 0.52], atol=1e-6)
    out, _ = RandomBrightnessContrast(prob=1.0, brightness_limit=(0.1, 0.1), contrast_limit=(0.0, 0.0),
                                      max_value=255.0)(np.array([[[100, 250]]], np.uint8), None, np.random.default_rng(0))
    np.testing.assert_allclose(out[0, 0], [125.5, 255.0])
    out, _ = RandomBrightnessContrast(prob=0.0)(img, None, np.random.default_rng(0))
    assert out.dtype == np.float32 and np.array_equal(out, img)
    # symmetric limits: the draws stay inside (1 +- 0.2) and +- 0.2
    t = RandomBrightnessContrast(prob=1.0)
    half = np.full((1, 1, 1), 0.5, np.float32)
    vals = [t(half, None, np.random.default_rng(s))[0].item() for s in range(200)]
    assert 0.5 * 0.8 - 0.2 - 1e-6 <= min(vals) and max(vals) <= 0.5 * 1.2 + 0.2 + 1e-6


def test_hsv_on_the_opencv_scale():
    rgb = np.array([[[10, 200, 30], [255, 0, 0], [1, 2, 3], [200, 150, 100], [0, 0, 0], [90, 90, 90],
                     [17, 250, 251], [128, 0, 255]]], np.uint8)
    golden_hsv = [[63, 242, 200], [0, 255, 255], [105, 170, 3], [15, 127, 200], [0, 0, 0], [0, 0, 90],
                  [90, 238, 251], [135, 255, 255]]  # cv2.COLOR_RGB2HSV (8-bit fixed point)
    np.testing.assert_allclose(rgb_to_hsv(rgb)[0], golden_hsv, atol=1.0)  # cv2 rounds to integers
    hsv = np.array([[[0, 1, 1], [10, 200, 100], [90, 50, 200], [179, 255, 255], [45, 1, 4], [1, 90, 85],
                     [120, 255, 128], [33, 77, 201]]], np.uint8)
    golden_rgb = [[1, 0, 0], [100, 47, 21], [160, 200, 200], [255, 0, 8], [3, 4, 3], [85, 56, 55], [0, 0, 128],
                  [194, 201, 140]]  # cv2.COLOR_HSV2RGB on a 32-pixel row (vectorised path)
    np.testing.assert_allclose(hsv_to_rgb(hsv)[0], golden_rgb, atol=1.0)  # cv2 truncates to integers
    x = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32) * 255
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-3)


# mmseg 1.2.2 PhotoMetricDistortion().transform on BGR uint8 np.random.RandomState(100 + mode).randint(0, 256,
# (1, 32, 3)) after np.random.seed(seed): every step applied, contrast last (mode 0) or second (mode 1)
PMD_GOLDEN = {
    (0, 7): [[0, 22, 50], [88, 49, 49], [164, 63, 38], [168, 5, 0], [121, 216, 0], [0, 231, 153], [0, 196, 218],
             [92, 17, 39], [136, 241, 65], [47, 59, 116], [142, 70, 129], [146, 99, 133], [235, 109, 13],
             [0, 133, 175], [64, 121, 0], [181, 144, 0], [0, 187, 143], [241, 0, 15], [32, 67, 211], [179, 216, 0],
             [169, 0, 89], [228, 36, 170], [119, 0, 164], [31, 0, 159], [0, 180, 114], [128, 178, 191],
             [18, 56, 0], [91, 0, 17], [0, 76, 166], [171, 5, 222], [200, 86, 0], [0, 57, 173]],
    (1, 16): [[49, 8, 67], [43, 45, 60], [144, 69, 194], [156, 148, 39], [66, 51, 126], [144, 58, 188],
              [145, 28, 19], [169, 164, 41], [36, 80, 80], [192, 97, 126], [117, 55, 49], [121, 37, 96],
              [191, 30, 180], [66, 70, 170], [63, 63, 93], [90, 190, 110], [183, 25, 130], [160, 157, 82],
              [32, 41, 4], [105, 139, 127], [42, 61, 182], [60, 135, 78], [190, 67, 144], [105, 13, 35],
              [79, 83, 103], [29, 190, 82], [186, 114, 83], [169, 121, 151], [144, 136, 24], [185, 61, 36],
              [26, 186, 74], [33, 21, 115]],
}


@pytest.mark.parametrize("mode,seed", list(PMD_GOLDEN))
def test_photometric_distortion_follows_mmseg(mode, seed):
    """Same random draws, same steps in the same order as mmseg: within mmseg's own uint8 truncation and
    8-bit HSV rounding of its output (a skipped or reordered step moves pixels by tens of levels)."""
    img = np.random.RandomState(100 + mode).randint(0, 256, (1, 32, 3)).astype(np.uint8)
    out, _ = PhotoMetricDistortion(channel_order="bgr")(img, None, LegacyRng(seed))
    assert out.dtype == np.float32
    diff = np.abs(out[0] - np.array(PMD_GOLDEN[(mode, seed)]))
    assert diff.max() <= 6 and diff.mean() <= 2, (diff.max(), diff.mean())
    # the same image given as RGB with channel_order="rgb" gives the same colours
    out_rgb, _ = PhotoMetricDistortion(channel_order="rgb")(img[..., ::-1], None, LegacyRng(seed))
    np.testing.assert_allclose(out_rgb[..., ::-1], out, atol=1e-4)


def test_photometric_steps_have_their_effect():
    class Draws:  # serves the coin flips / integers and the uniforms in the order the transform asks
        def __init__(self, ints, uniforms=()):
            self.ints, self.uniforms = list(ints), list(uniforms)

        def integers(self, lo, hi=None):
            return self.ints.pop(0)

        def uniform(self, lo, hi):
            return self.uniforms.pop(0)

    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.float32)
    # brightness +10, mode 0, saturation x0, no hue, contrast x2 last: grey = V, then doubled and clipped
    out, _ = PhotoMetricDistortion()(img, None, Draws([1, 0, 1, 0, 1], [10.0, 0.0, 2.0]))
    want = np.clip(2 * np.repeat(np.clip(img + 10, 0, 255).max(-1, keepdims=True), 3, -1), 0, 255)
    np.testing.assert_allclose(out, want, atol=1e-3)
    # mode 1: contrast x0.5 second, before saturation x1 and no hue
    out, _ = PhotoMetricDistortion()(img, None, Draws([0, 1, 1, 1, 0], [0.5, 1.0]))
    np.testing.assert_allclose(out, img * 0.5, atol=1e-3)
    # hue -10 OpenCV units (-20 degrees) on saturated colours, nothing else
    sat = np.array([[[255, 0, 0], [0, 200, 0], [30, 60, 250]]], np.float32)
    out, _ = PhotoMetricDistortion()(sat, None, Draws([0, 0, 0, 1, -10, 0]))
    np.testing.assert_allclose(rgb_to_hsv(out)[..., 0], np.mod(rgb_to_hsv(sat)[..., 0] - 10, 180), atol=0.05)
    np.testing.assert_allclose(rgb_to_hsv(out)[..., 1:], rgb_to_hsv(sat)[..., 1:], atol=0.05)

def test_photometric_distortion_multiband_range():
    band = np.random.default_rng(0).random((6, 6, 1), dtype=np.float32) * 255
    img = np.repeat(band, 5, axis=2)
    t = PhotoMetricDistortion()
    for s in range(10):
        out, _ = t(img, None, np.random.default_rng(s))
        assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
        np.testing.assert_array_equal(out, np.repeat(out[..., :1], 5, axis=2))  # same affine map per band


def test_normalize():
    img = np.full((2, 2, 3), 100, np.uint8)
    out, _ = Normalize(mean=[100, 50, 0], std=[1, 2, 4])(img, None, None)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [0.0, 25.0, 25.0])
    with pytest.raises(ValueError, match="C=5"):
        Normalize(mean=[0, 0, 0], std=[1, 1, 1])(np.zeros((2, 2, 5), np.float32), None, None)
    with pytest.raises(ValueError, match="std"):
        Normalize(mean=[0, 0], std=[1, 1, 1])


def test_pad():
    img, label = make_pair(h=10, w=13, c=2)
    out, lab = Pad(size=(16, 16), pad_val=7)(img, label, None)
    assert out.shape == (16, 16, 2) and out.dtype == np.uint8 and lab.dtype == label.dtype
    np.testing.assert_array_equal(out[:10, :13], img)
    assert (out[10:] == 7).all() and (out[:, 13:] == 7).all()
    assert (lab[10:] == 255).all() and (lab[:, 13:] == 255).all()
    np.testing.assert_array_equal(lab[:10, :13], label)
    out, lab = Pad(size_divisor=8)(img, label, None)
    assert out.shape == (16, 16, 2) and lab.shape == (16, 16)
    out, _ = Pad(size=(8, 20))(img, None, None)  # larger dimension is kept, not cropped
    assert out.shape == (10, 20, 2)
    out, _ = Pad(size_divisor=5)(np.zeros((10, 15, 1), np.float32), None, None)
    assert out.shape == (10, 15, 1)
    with pytest.raises(ValueError, match="exactly one"):
        Pad(size=(8, 8), size_divisor=4)


# --------------------------------------------------------------------------- builder


def test_build_transforms_errors_and_plain_data():
    with pytest.raises(ValueError, match="unknown transform type 'Blur'.*RandomFlip"):
        build_transforms([{"type": "Blur"}])
    with pytest.raises(ValueError, match="RandomFlip.*'p'"):
        build_transforms([{"type": "RandomFlip", "p": 0.5}])
    with pytest.raises(ValueError, match="type"):
        build_transforms([{"prob": 0.5}])
    with pytest.raises(ValueError, match="RandomAffine: prob"):
        build_transforms([{"type": "RandomAffine", "prob": 2}])
    specs = [{"type": "RandomCrop", "crop_size": [8, 8]}, {"type": "Pad", "size": [8, 8]}]
    pipe = build_transforms(specs)
    assert specs[0]["type"] == "RandomCrop" and isinstance(pipe, Compose) and len(pipe.transforms) == 2
    assert set(TRANSFORMS) >= {"RandomResize", "RandomCrop", "RandomFlip", "RandomRotate90", "RandomAffine",
                               "PhotoMetricDistortion", "RandomBrightnessContrast",
                               "Normalize", "Pad", "Resize"}
    assert "RandomCrop(crop_size=(8, 8)" in repr(pipe)
    assert build_transforms([])(*make_pair(), None)[0].shape == (24, 32, 3)
