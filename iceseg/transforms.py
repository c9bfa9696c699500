"""Paired image/label transforms for segmentation, with mmseg 1.x and albumentations 2.0.8 semantics.

Every transform is a class with keyword-only constructor arguments, called as
``t(img, label, rng) -> (img, label)``:

- ``img``: ``(H, W, C)`` array, any ``C >= 1`` (RGB uint8, or float32 multi-band rasters);
- ``label``: ``(H, W)`` integer index map (``255`` = ignore), or ``None`` at test time;
- ``rng``: a ``np.random.Generator``, the only source of randomness (a pipeline is deterministic given it).

Geometric transforms keep the dtypes of ``img`` and ``label``; photometric ones compute in float32 and
return float32. Pipelines are built from plain data: ``build_transforms([{"type": "RandomFlip"}])``.

The arithmetic is plain float (bilinear resampling by ``torch.nn.functional.interpolate``/``grid_sample``,
the textbook HSV formulas); it follows the random draws and the geometry of the sources below, not their
integer rounding. Sources (facts only): mmcv 2.1.0 ``mmcv/transforms/processing.py`` and
``mmcv/image/geometric.py``; mmseg 1.2.2 ``mmseg/datasets/transforms/transforms.py`` and
``mmseg/models/data_preprocessor.py``; albumentations 2.0.8 ``augmentations/geometric/transforms.py::Affine``,
``augmentations/geometric/functional.py::create_affine_transformation_matrix``,
``augmentations/geometric/rotate.py::RandomRotate90``, ``augmentations/pixel/transforms.py::RandomBrightnessContrast``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- argument checks


def _check_pair(name: str, img: np.ndarray, label: np.ndarray | None) -> None:
    """Raise ValueError unless ``img`` is ``(H, W, C>=1)`` and ``label`` is None or ``(H, W)``."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] < 1:
        raise ValueError(f"{name}: img must be a (H, W, C) numpy array with C >= 1, "
                         f"got {getattr(img, 'shape', type(img).__name__)}")
    if label is not None and (not isinstance(label, np.ndarray) or label.shape != img.shape[:2]):
        raise ValueError(f"{name}: label shape {getattr(label, 'shape', type(label).__name__)} "
                         f"differs from img shape {img.shape[:2]}")


def _pair(name: str, arg: str, value, *, symmetric: bool = False) -> tuple[float, float]:
    """``(lo, hi)`` from a 2-sequence or a number (``(-v, v)`` if ``symmetric`` else ``(v, v)``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (-abs(value), abs(value)) if symmetric else (value, value)
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value)
    if not ok or value[0] > value[1]:
        raise ValueError(f"{name}: {arg} must be a number or a (low, high) pair with low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def _int_pair(name: str, arg: str, value) -> tuple[int, int]:
    """Two positive ints from an int or a 2-sequence."""
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    if not (isinstance(value, Sequence) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f"{name}: {arg} must be a positive int or a pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _check_prob(name: str, prob) -> float:
    if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"{name}: prob must be a number in [0, 1], got {prob!r}")
    return float(prob)


def _cast_like(out: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A float tensor as a numpy array of ``dtype``; integer dtypes are rounded and clipped to their range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = out.round().clamp(float(info.min), float(info.max))
    return out.numpy().astype(dtype, copy=False)


# --------------------------------------------------------------------------- resizing


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing (cv2 ``INTER_LINEAR``'s geometry).

    Args:
        img: ``(H, W, C)`` array, any dtype, any ``C``.
        size: target ``(w, h)`` in pixels (mmcv/cv2 order).

    Returns:
        ``(h, w, C)`` array with the dtype of ``img`` (integers rounded and clipped).
    """
    out_w, out_h = size
    if (out_h, out_w) == img.shape[:2]:
        return img.copy()
    work = torch.float64 if img.dtype == np.float64 else torch.float32
    x = torch.from_numpy(np.ascontiguousarray(img)).to(work).permute(2, 0, 1)[None]  # (1, C, H, W)
    x = x.contiguous(memory_format=torch.channels_last)  # the fast CPU kernel for HWC data
    y = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=False)
    return _cast_like(y[0].permute(1, 2, 0), img.dtype)  # (h, w, C)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an index map: source index ``floor(x * src / dst)`` (cv2 ``INTER_NEAREST``).

    The index is computed in float64, so every size pair picks the same pixels as OpenCV
    (``F.interpolate(mode="nearest")`` computes it in float32 and can pick a neighbour).

    Args:
        label: ``(H, W)`` integer array.
        size: target ``(w, h)``.

    Returns:
        ``(h, w)`` array, same dtype, every value taken from ``label``.
    """
    (out_w, out_h), (H, W) = size, label.shape
    rows = np.minimum(np.floor(np.arange(out_h) * (H / out_h)).astype(np.int64), H - 1)  # (h,)
    cols = np.minimum(np.floor(np.arange(out_w) * (W / out_w)).astype(np.int64), W - 1)  # (w,)
    return label[rows[:, None], cols[None, :]]  # (h, w)


def scale_size(size: tuple[int, int], factor: float | tuple[float, float]) -> tuple[int, int]:
    """mmcv ``_scale_size``: ``(int(w * fw + 0.5), int(h * fh + 0.5))`` for ``size = (w, h)``."""
    fw, fh = (factor, factor) if isinstance(factor, (int, float)) else factor
    return int(size[0] * float(fw) + 0.5), int(size[1] * float(fh) + 0.5)


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: ``(w, h)`` scaled to fit the long side in ``max(scale)`` and the short side in
    ``min(scale)``, aspect kept (1600x640 to (2048, 1024): factor 1.28, 2048x819)."""
    w, h = size
    return scale_size(size, min(max(scale) / max(h, w), min(scale) / min(h, w)))


# --------------------------------------------------------------------------- base + composition


class Transform:
    """Base class: subclasses implement ``__call__(img, label, rng) -> (img, label)``; ``repr`` shows the settings."""

    def __call__(self, img: np.ndarray, label: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order with the same ``rng``; raises ValueError for an element that is not callable."""

    def __init__(self, transforms: list):
        for i, t in enumerate(transforms):
            if not callable(t):
                raise ValueError(f"Compose: element {i} ({t!r}) is not callable")
        self.transforms = list(transforms)

    def __call__(self, img, label, rng):
        _check_pair("Compose", img, label)
        for t in self.transforms:
            img, label = t(img, label, rng)
        return img, label

    def __repr__(self) -> str:
        return "Compose([" + "".join(f"\n  {t!r}," for t in self.transforms) + "\n])"


# --------------------------------------------------------------------------- geometric


class Resize(Transform):
    """Deterministic resize (mmcv ``Resize``); image bilinear (:func:`resize_image`), label nearest.

    Exactly one of ``scale=(w, h)`` (with ``keep_ratio``: :func:`rescale_size`; without: exactly ``w x h``)
    and ``scale_factor=f`` or ``(fw, fh)`` (the mmseg TTA views: ``scale_size((W, H), f)`` of the input).
    ``keep_ratio`` defaults to True (mmcv's default is False; every mmseg config here passes True).

    Raises:
        ValueError: bad arguments, or a resize that would give an empty image.
    """

    def __init__(self, *, scale=None, scale_factor=None, keep_ratio: bool = True):
        if (scale is None) == (scale_factor is None):
            raise ValueError("Resize: give exactly one of scale=(w, h) and scale_factor")
        self.scale = None if scale is None else _int_pair("Resize", "scale", scale)
        if scale_factor is not None:
            factors = tuple(scale_factor) if isinstance(scale_factor, Sequence) else (scale_factor,) * 2
            if len(factors) != 2 or not all(isinstance(f, (int, float)) and f > 0 for f in factors):
                raise ValueError(f"Resize: scale_factor must be positive (or a positive pair), got {scale_factor!r}")
            scale_factor = tuple(float(f) for f in factors)
        self.scale_factor, self.keep_ratio = scale_factor, bool(keep_ratio)

    def _target(self, img: np.ndarray, rng) -> tuple[int, int]:
        H, W = img.shape[:2]
        return self.scale if self.scale is not None else scale_size((W, H), self.scale_factor)

    def __call__(self, img, label, rng):
        name = type(self).__name__
        _check_pair(name, img, label)
        H, W = img.shape[:2]
        scale = self._target(img, rng)
        new_w, new_h = rescale_size((W, H), scale) if self.keep_ratio else scale
        if new_w < 1 or new_h < 1:
            raise ValueError(f"{name}: resizing {W}x{H} to scale {scale} gives an empty {new_w}x{new_h} image")
        return resize_image(img, (new_w, new_h)), None if label is None else resize_label(label, (new_w, new_h))


class RandomResize(Resize):
    """Random rescale (mmcv ``RandomResize`` with ``ratio_range``).

    Draws ``r = rng.random() * (hi - lo) + lo``, targets ``(int(w * r), int(h * r))`` for ``scale = (w, h)``
    and resizes as :class:`Resize` (``keep_ratio``: factor ``min(max(target) / max(W, H), min(target) / min(W, H))``).

    Raises:
        ValueError: bad arguments (``ratio_range`` must be positive), or a draw giving an empty image.
    """

    def __init__(self, *, scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio: bool = True):
        self.scale = _int_pair("RandomResize", "scale", scale)
        self.ratio_range = _pair("RandomResize", "ratio_range", ratio_range)
        if self.ratio_range[0] <= 0:
            raise ValueError(f"RandomResize: ratio_range must be positive, got {ratio_range!r}")
        self.keep_ratio = bool(keep_ratio)

    def _target(self, img, rng):
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        return int(self.scale[0] * ratio), int(self.scale[1] * ratio)


class RandomCrop(Transform):
    """Random crop with mmseg's category-ratio check (mmseg ``RandomCrop``).

    The offset is uniform in ``[0, max(H - h, 0)] x [0, max(W - w, 0)]`` (rows drawn first). With
    ``cat_max_ratio < 1`` and a label, a crop is accepted when, ``ignore_index`` excluded, it holds more than
    one class and the largest covers less than ``cat_max_ratio`` of the valid pixels; after 10 rejected
    checks the 11th draw is used unchecked. An image smaller than ``crop_size = (h, w)`` keeps its size
    in that direction.

    Raises:
        ValueError: bad arguments.
    """

    def __init__(self, *, crop_size, cat_max_ratio: float = 1.0, ignore_index: int = 255):
        self.crop_size = _int_pair("RandomCrop", "crop_size", crop_size)
        if not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"RandomCrop: cat_max_ratio must be in (0, 1], got {cat_max_ratio!r}")
        self.cat_max_ratio, self.ignore_index = float(cat_max_ratio), int(ignore_index)

    def __call__(self, img, label, rng):
        _check_pair("RandomCrop", img, label)
        (H, W), (ch, cw) = img.shape[:2], self.crop_size
        for check in range(11):
            oy = int(rng.integers(0, max(H - ch, 0) + 1))
            ox = int(rng.integers(0, max(W - cw, 0) + 1))
            if self.cat_max_ratio >= 1.0 or label is None or check == 10:
                break
            values, counts = np.unique(label[oy:oy + ch, ox:ox + cw], return_counts=True)
            counts = counts[values != self.ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        crop = (slice(oy, oy + ch), slice(ox, ox + cw))
        return img[crop].copy(), None if label is None else label[crop].copy()


class RandomFlip(Transform):
    """Random flip (mmcv ``RandomFlip``): ``direction`` ``"horizontal"``, ``"vertical"``, ``"diagonal"`` (both) or a list.

    One choice per call: a float ``prob`` is split evenly over the listed directions, a list ``prob`` gives
    one probability per direction (sum <= 1); the rest is "no flip". Independent horizontal and vertical
    flips (albumentations' ``HorizontalFlip`` + ``VerticalFlip``) are two ``RandomFlip`` transforms.

    Raises:
        ValueError: bad arguments.
    """

    _AXES = {"horizontal": (1,), "vertical": (0,), "diagonal": (0, 1)}

    def __init__(self, *, prob=0.5, direction="horizontal"):
        dirs = [direction] if isinstance(direction, str) else list(direction)
        if not dirs or any(d not in self._AXES for d in dirs):
            raise ValueError(f"RandomFlip: direction must be one or a list of {sorted(self._AXES)}, got {direction!r}")
        if isinstance(prob, (list, tuple)):
            probs = [_check_prob("RandomFlip", p) for p in prob]
            if len(probs) != len(dirs) or sum(probs) > 1.0 + 1e-9:
                raise ValueError(f"RandomFlip: a list prob needs one entry per direction and sum <= 1, got {prob!r}")
        else:
            probs = [_check_prob("RandomFlip", prob) / len(dirs)] * len(dirs)
        self.prob, self.direction, self._dirs = prob, direction, dirs
        self._p = np.array(probs + [max(1.0 - sum(probs), 0.0)])
        self._p /= self._p.sum()

    def __call__(self, img, label, rng):
        _check_pair("RandomFlip", img, label)
        k = int(rng.choice(len(self._p), p=self._p))
        if k == len(self._dirs):  # no flip
            return img, label
        axes = self._AXES[self._dirs[k]]
        img = np.ascontiguousarray(np.flip(img, axis=axes))
        return img, None if label is None else np.ascontiguousarray(np.flip(label, axis=axes))


class RandomRotate90(Transform):
    """With probability ``prob``, ``np.rot90(x, k)`` (counter-clockwise) with ``k`` uniform in {0, 1, 2, 3}
    (albumentations ``RandomRotate90``; k = 0 is possible). Odd ``k`` swaps H and W."""

    def __init__(self, *, prob: float = 0.5):
        self.prob = _check_prob("RandomRotate90", prob)

    def __call__(self, img, label, rng):
        _check_pair("RandomRotate90", img, label)
        if rng.random() >= self.prob:
            return img, label
        k = int(rng.integers(0, 4))
        img = np.ascontiguousarray(np.rot90(img, k, axes=(0, 1)))
        return img, None if label is None else np.ascontiguousarray(np.rot90(label, k, axes=(0, 1)))


def affine_matrix(height: int, width: int, *, scale_x: float = 1.0, scale_y: float = 1.0,
                  rotate: float = 0.0, shear_x: float = 0.0, shear_y: float = 0.0) -> np.ndarray:
    """Forward affine matrix of albumentations 2.0.8 ``create_affine_transformation_matrix`` (no translation).

    ``M = T(c) @ Shear @ Rot @ Scale @ T(-c)`` about ``c = (W/2 - 0.5, H/2 - 0.5)``, with
    ``Scale = diag(sx, sy)``, ``Rot = [[cos a, sin a], [-sin a, cos a]]`` for ``a = rotate`` degrees
    (counter-clockwise on screen, y down) and ``Shear = [[1, tan(shear_x)], [tan(shear_y), 1]]`` (degrees,
    as they enter the matrix: :class:`RandomAffine` negates its draws, as albumentations does).

    Returns:
        ``(3, 3)`` float64 matrix mapping source pixel ``(x, y, 1)`` to destination pixel coordinates.
    """
    cx, cy = width / 2 - 0.5, height / 2 - 0.5
    a, tx, ty = math.radians(rotate % 360), math.tan(math.radians(shear_x)), math.tan(math.radians(shear_y))
    to_origin, back = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]]), np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1.0]])
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1.0]])
    shear = np.array([[1, tx, 0], [ty, 1, 0], [0, 0, 1.0]])
    return back @ shear @ rot @ np.diag([scale_x, scale_y, 1.0]) @ to_origin


def _warp(x: torch.Tensor, matrix: np.ndarray, mode: str) -> torch.Tensor:
    """``grid_sample`` of ``x`` ``(1, C, H, W)`` float64 at the sources ``M^-1 (x, y)`` of every output pixel;
    samples outside the image read 0."""
    H, W = x.shape[-2:]
    inv = torch.from_numpy(np.linalg.inv(matrix))
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]  # (H, W) source columns
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    grid = torch.stack([(2 * sx + 1) / W - 1, (2 * sy + 1) / H - 1], dim=-1)[None]  # (1, H, W, 2), align_corners=False
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def warp_affine(img: np.ndarray, matrix: np.ndarray, *, fill=0.0) -> np.ndarray:
    """Bilinear affine warp with a constant border (cv2 ``warpAffine`` INTER_LINEAR + BORDER_CONSTANT geometry).

    Args:
        img: ``(H, W, C)`` array, any dtype.
        matrix: ``(3, 3)`` forward matrix (source -> destination pixel coordinates).
        fill: border value, scalar or one per channel; edge pixels blend towards it.

    Returns:
        ``(H, W, C)`` array, dtype of ``img`` (integers rounded and clipped).

    Raises:
        ValueError: ``fill`` has neither 1 nor ``C`` values.
    """
    C = img.shape[2]
    fill_vec = torch.tensor(np.asarray(fill, dtype=np.float64).ravel())
    if fill_vec.numel() not in (1, C):
        raise ValueError(f"warp_affine: fill has {fill_vec.numel()} values, the image has C={C} channels")
    x = torch.from_numpy(np.ascontiguousarray(img)).double() - fill_vec  # (H, W, C); the border reads fill
    out = _warp(x.permute(2, 0, 1)[None], matrix, "bilinear")[0].permute(1, 2, 0) + fill_vec  # (H, W, C)
    return _cast_like(out, img.dtype)


def warp_affine_label(label: np.ndarray, matrix: np.ndarray, *, fill: int = 0) -> np.ndarray:
    """Nearest affine warp of an ``(H, W)`` integer index map; pixels whose source lies outside get ``fill``.

    Returns:
        ``(H, W)`` array, dtype of ``label``; every value is from ``label`` or ``fill``.
    """
    x = torch.from_numpy(label.astype(np.float64) - fill)[None, None]  # (1, 1, H, W), exact for integers
    return (_warp(x, matrix, "nearest")[0, 0] + fill).numpy().astype(label.dtype)


class RandomAffine(Transform):
    """Random scale/rotate/shear about the image centre (albumentations 2.0.8 ``Affine``; spec
    unetpp_glacier_and_lossd.md §A2).

    With probability ``prob`` draws, in this order, ``shear_x, shear_y ~ U(shear)`` (both negated, as
    albumentations does), ``scale_x, scale_y ~ U(scale)`` and ``rotate ~ U(rotate)`` degrees, then warps
    the image bilinearly and the label with nearest neighbour (:func:`affine_matrix`, output size = input
    size, constant borders ``fill`` / ``fill_label``; 255 ignores the border). The identity returns the inputs.

    Raises:
        ValueError: bad arguments (``scale`` must be positive, ``shear`` within (-90, 90) degrees).
    """

    def __init__(self, *, prob: float = 0.5, scale=(0.9, 1.1), rotate=(-15.0, 15.0), shear=(-10.0, 10.0),
                 fill=0.0, fill_label: int = 0):
        self.prob = _check_prob("RandomAffine", prob)
        self.scale = _pair("RandomAffine", "scale", scale)
        self.rotate = _pair("RandomAffine", "rotate", rotate)
        self.shear = _pair("RandomAffine", "shear", shear)
        if self.scale[0] <= 0 or max(abs(s) for s in self.shear) >= 90:
            raise ValueError(f"RandomAffine: scale must be positive and shear within (-90, 90) degrees, "
                             f"got scale={scale!r}, shear={shear!r}")
        self.fill, self.fill_label = fill, int(fill_label)

    def __call__(self, img, label, rng):
        _check_pair("RandomAffine", img, label)
        if rng.random() >= self.prob:
            return img, label
        shear_x, shear_y = -rng.uniform(*self.shear), -rng.uniform(*self.shear)
        scale_x, scale_y = rng.uniform(*self.scale), rng.uniform(*self.scale)
        matrix = affine_matrix(*img.shape[:2], scale_x=scale_x, scale_y=scale_y, rotate=rng.uniform(*self.rotate),
                               shear_x=shear_x, shear_y=shear_y)
        if np.allclose(matrix, np.eye(3)):
            return img, label
        img = warp_affine(img, matrix, fill=self.fill)
        return img, None if label is None else warp_affine_label(label, matrix, fill=self.fill_label)


# --------------------------------------------------------------------------- photometric

def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB -> HSV on OpenCV's 8-bit scale (the one mmseg's ``PhotoMetricDistortion`` works in), in float.

    Args:
        rgb: ``(H, W, 3)`` values in [0, 255], channels R, G, B.

    Returns:
        ``(H, W, 3)`` float32: H in [0, 180) (degrees / 2; 0 for greys), S and V in [0, 255].
    """
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = np.where(v > 0, 255.0 * diff / np.where(v > 0, v, 1), 0)
    safe = np.where(diff > 0, diff, 1)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe)) * 30.0
    return np.stack([np.where(diff > 0, np.mod(h, 180.0), 0), s, v], axis=-1).astype(np.float32)  # (H, W, 3)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (the six-sector formula): ``(H, W, 3)`` float32 RGB in [0, 255]."""
    h = np.mod(hsv[..., 0].astype(np.float32) / 30.0, 6.0)  # sector position in [0, 6)
    s, v = hsv[..., 1].astype(np.float32) / 255.0, hsv[..., 2].astype(np.float32)
    k = np.mod(np.array([5.0, 3.0, 1.0], np.float32) + h[..., None], 6.0)  # (H, W, 3) per R, G, B
    return v[..., None] * (1 - s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1))  # (H, W, 3)


class PhotoMetricDistortion(Transform):
    """mmseg ``PhotoMetricDistortion`` on 0..255 values, in float32.

    Steps, each applied when ``rng.integers(2)`` gives 1: brightness ``+ U(-brightness_delta, brightness_delta)``;
    then ``mode = rng.integers(2)``: mode 1 applies contrast ``* U(contrast_range)`` here, mode 0 after hue
    (mmseg's comment says the opposite, its code does this); saturation (S ``* U(saturation_range)``) and hue
    (H ``+ rng.integers(-hue_delta, hue_delta)`` modulo 180, OpenCV hue units) in HSV. Every step clips to
    [0, 255]. Same draws as mmseg; mmseg also truncates to uint8 after each step, so its output lies a few
    grey levels away. Images with ``C != 3`` get only brightness and contrast, the same for every band.

    Args:
        brightness_delta: max absolute brightness offset (grey levels, >= 0).
        contrast_range, saturation_range: ``(lo, hi)`` factors.
        hue_delta: max hue shift in OpenCV hue units (2 degrees each, >= 0).
        channel_order: ``"rgb"`` (this project's loaders) or ``"bgr"`` (cv2 loading): which channels are R, G, B.

    Returns:
        float32 image in [0, 255]; the label is untouched.

    Raises:
        ValueError: bad arguments.
    """

    def __init__(self, *, brightness_delta: float = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18, channel_order: str = "rgb"):
        if brightness_delta < 0 or hue_delta < 0 or channel_order not in ("rgb", "bgr"):
            raise ValueError("PhotoMetricDistortion: brightness_delta and hue_delta must be >= 0 and channel_order "
                             f"'rgb' or 'bgr', got {brightness_delta!r}, {hue_delta!r}, {channel_order!r}")
        self.brightness_delta, self.hue_delta = float(brightness_delta), int(hue_delta)
        self.contrast_range = _pair("PhotoMetricDistortion", "contrast_range", contrast_range)
        self.saturation_range = _pair("PhotoMetricDistortion", "saturation_range", saturation_range)
        self.channel_order = channel_order

    def _contrast(self, x, rng):
        return np.clip(x * np.float32(rng.uniform(*self.contrast_range)), 0, 255) if rng.integers(2) else x

    def _hsv_step(self, x, rng, channel: int):
        if not rng.integers(2):
            return x
        order = slice(None) if self.channel_order == "rgb" else slice(None, None, -1)
        hsv = rgb_to_hsv(x[..., order])  # (H, W, 3)
        if channel == 1:
            hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(rng.uniform(*self.saturation_range)), 0, 255)
        else:
            delta = int(rng.integers(-self.hue_delta, self.hue_delta)) if self.hue_delta > 0 else 0
            hsv[..., 0] = np.mod(hsv[..., 0] + delta, 180)
        return np.ascontiguousarray(np.clip(hsv_to_rgb(hsv), 0, 255)[..., order])

    def __call__(self, img, label, rng):
        _check_pair("PhotoMetricDistortion", img, label)
        x = img.astype(np.float32)
        if rng.integers(2):
            x = np.clip(x + np.float32(rng.uniform(-self.brightness_delta, self.brightness_delta)), 0, 255)
        mode = int(rng.integers(2))
        if mode == 1:
            x = self._contrast(x, rng)
        if x.shape[2] == 3:
            x = self._hsv_step(x, rng, channel=1)  # saturation
            x = self._hsv_step(x, rng, channel=0)  # hue
        if mode == 0:
            x = self._contrast(x, rng)
        return x.astype(np.float32, copy=False), label


class RandomBrightnessContrast(Transform):
    """albumentations 2.0.8 ``RandomBrightnessContrast`` with ``brightness_by_max=True``.

    With probability ``prob``: ``clip(img * (1 + U(contrast_limit)) + U(brightness_limit) * max_value, 0,
    max_value)``, the same draws for every channel. A limit ``v`` means ``(-v, v)``. ``max_value`` is 1.0 for
    float images in [0, 1] and 255 for uint8 ones.

    Returns:
        float32 image (also when not applied); the label is untouched.

    Raises:
        ValueError: bad arguments.
    """

    def __init__(self, *, prob: float = 0.5, brightness_limit=0.2, contrast_limit=0.2, max_value: float = 1.0):
        name = "RandomBrightnessContrast"
        self.prob = _check_prob(name, prob)
        self.brightness_limit = _pair(name, "brightness_limit", brightness_limit, symmetric=True)
        self.contrast_limit = _pair(name, "contrast_limit", contrast_limit, symmetric=True)
        if max_value <= 0:
            raise ValueError(f"{name}: max_value must be positive, got {max_value!r}")
        self.max_value = float(max_value)

    def __call__(self, img, label, rng):
        _check_pair("RandomBrightnessContrast", img, label)
        x = img.astype(np.float32)
        if rng.random() >= self.prob:
            return x, label
        alpha = 1.0 + rng.uniform(*self.contrast_limit)
        beta = rng.uniform(*self.brightness_limit)
        x = x * np.float32(alpha) + np.float32(beta * self.max_value)
        return np.clip(x, 0.0, self.max_value, out=x), label


class Normalize(Transform):
    """Per-channel ``(img - mean) / std`` to float32 (mmseg ``SegDataPreProcessor``).

    mmseg swaps BGR to RGB first; this project's loaders give RGB, so ``mean``/``std`` are RGB-ordered
    (ImageNet: (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)).

    Raises:
        ValueError: ``mean``/``std`` lengths differ from each other or from the image's ``C``, or a std <= 0.
    """

    def __init__(self, *, mean, std):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize: mean and std need the same length and std > 0, got {self.mean}, {self.std}")
        self._mean, self._std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)

    def __call__(self, img, label, rng):
        _check_pair("Normalize", img, label)
        if img.shape[2] != len(self.mean):
            raise ValueError(f"Normalize: image has C={img.shape[2]} channels but mean/std have {len(self.mean)} values")
        return (img.astype(np.float32) - self._mean) / self._std, label


class Pad(Transform):
    """Pad at the bottom and right (mmcv ``Pad``; mmseg ``stack_batch`` pads the same way).

    Exactly one of ``size=(h, w)`` (pad up to it; a larger dimension is kept, not cropped) and
    ``size_divisor=d`` (pad H and W up to multiples of ``d``). ``pad_val`` fills the image (scalar or per
    channel), ``seg_pad_val`` the label (255 = ignore). Dtypes are kept.

    Raises:
        ValueError: both or neither of ``size``/``size_divisor``, non-positive values, or a ``pad_val`` with
            neither 1 nor ``C`` values.
    """

    def __init__(self, *, size=None, size_divisor: int | None = None, pad_val=0, seg_pad_val: int = 255):
        if (size is None) == (size_divisor is None):
            raise ValueError("Pad: give exactly one of size=(h, w) and size_divisor")
        self.size = None if size is None else _int_pair("Pad", "size", size)
        if size_divisor is not None and (not isinstance(size_divisor, (int, np.integer)) or size_divisor < 1):
            raise ValueError(f"Pad: size_divisor must be a positive int, got {size_divisor!r}")
        self.size_divisor, self.pad_val, self.seg_pad_val = size_divisor, pad_val, int(seg_pad_val)

    def __call__(self, img, label, rng):
        _check_pair("Pad", img, label)
        H, W, C = img.shape
        if self.size is not None:
            th, tw = max(self.size[0], H), max(self.size[1], W)
        else:
            th, tw = -(-H // self.size_divisor) * self.size_divisor, -(-W // self.size_divisor) * self.size_divisor
        if (th, tw) == (H, W):
            return img, label
        pad_val = np.asarray(self.pad_val, dtype=img.dtype).ravel()
        if pad_val.size not in (1, C):
            raise ValueError(f"Pad: pad_val has {pad_val.size} values, the image has C={C} channels")
        out = np.empty((th, tw, C), dtype=img.dtype)
        out[...] = pad_val
        out[:H, :W] = img
        if label is not None:
            label = np.pad(label, ((0, th - H), (0, tw - W)), constant_values=self.seg_pad_val)
        return out, label


# --------------------------------------------------------------------------- builder

TRANSFORMS: dict[str, type] = {cls.__name__: cls for cls in (
    Resize, RandomResize, RandomCrop, RandomFlip, RandomRotate90, RandomAffine, PhotoMetricDistortion,
    RandomBrightnessContrast, Normalize, Pad)}


def build_transforms(specs: list[dict]) -> Compose:
    """A :class:`Compose` from plain-data specs such as ``{"type": "RandomFlip", "prob": 0.5}``.

    ``"type"`` names a class in ``TRANSFORMS``; the other keys are its keyword arguments (lists are
    accepted where a tuple is expected). The dicts are not modified.

    Raises:
        ValueError: a spec is not a dict with a ``type``, the type is unknown (the valid ones are listed),
            or its arguments are rejected (the transform's accepted arguments are listed).
    """
    transforms = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "type" not in spec:
            raise ValueError(f"build_transforms: spec #{i} must be a dict with a 'type' key, got {spec!r}")
        kwargs = dict(spec)
        name = kwargs.pop("type")
        if name not in TRANSFORMS:
            raise ValueError(f"build_transforms: unknown transform type {name!r} (spec #{i}); "
                             f"valid types: {sorted(TRANSFORMS)}")
        cls = TRANSFORMS[name]
        try:
            transforms.append(cls(**kwargs))
        except TypeError as e:
            accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
            raise ValueError(f"build_transforms: bad arguments for {name} (spec #{i}): {e}; "
                             f"accepted: {accepted}") from e
    return Compose(transforms)
