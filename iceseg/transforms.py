"""Paired image/label transforms for segmentation (mmseg 1.x and albumentations 2.0.8 semantics).

Every transform is a class with keyword-only constructor arguments and the call signature
``t(img, label, rng) -> (img, label)``:

- ``img``: ``(H, W, C)`` array, any ``C >= 1`` (RGB uint8, or float32 multi-band rasters).
- ``label``: ``(H, W)`` integer index map (uint8/int64, ``255`` = ignore), or ``None`` at test time.
- ``rng``: a ``np.random.Generator``; it is the only source of randomness, so a pipeline is
  deterministic given the generator state.

Geometric transforms keep the dtypes of ``img`` and ``label``; photometric ones compute in float32 and
return float32. Pipelines are built from plain data with :func:`build_transforms`, e.g.
``build_transforms([{"type": "RandomFlip", "prob": 0.5}])``.

Sources (facts only; the code is written from scratch, it does not use or copy mmcv/mmseg/albumentations):
- mmcv 2.1.0 ``mmcv/transforms/processing.py`` (``Resize``, ``RandomResize``, ``RandomFlip``, ``Pad``) and
  ``mmcv/image/geometric.py`` (``_scale_size``, ``rescale_size``, ``imrescale``, ``imresize``: cv2 backend).
- mmseg 1.2.2 ``mmseg/datasets/transforms/transforms.py`` (``RandomCrop``, ``PhotoMetricDistortion``) and
  ``mmseg/models/data_preprocessor.py`` / ``mmseg/utils/misc.py::stack_batch`` (normalise, pad).
- albumentations 2.0.8 ``augmentations/geometric/transforms.py::Affine``,
  ``augmentations/geometric/functional.py::create_affine_transformation_matrix`` / ``center`` / ``rot90``,
  ``augmentations/geometric/rotate.py::RandomRotate90``,
  ``augmentations/pixel/transforms.py::RandomBrightnessContrast``.
- OpenCV ``resize`` (INTER_LINEAR, INTER_NEAREST) and ``warpAffine`` rules; OpenCV's 8-bit HSV scale.

Intentional deviations (all documented on the class):
- Bilinear resizing uses ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
  antialias=False)``, the same half-pixel rule as cv2 ``INTER_LINEAR`` (float32 max |diff| 4e-5 on [0, 1]
  data); cv2 uses 11-bit fixed-point weights for uint8 images, so about 12 % of uint8 pixels differ from
  cv2 by 1 grey level. Label resizing reproduces cv2 ``INTER_NEAREST`` exactly (torch's float32
  ``mode="nearest"`` does not: it disagrees on 331 of 6368 size pairs tested).
- ``RandomAffine`` samples with an exact float64 inverse mapping; cv2 ``warpAffine`` uses fixed-point
  coordinates, so float results differ by ~1e-5 (uint8 and labels matched exactly in the checks made).
- ``PhotoMetricDistortion`` computes in float32 with the plain HSV formulas (mmseg truncates to uint8
  after every step and uses OpenCV's 8-bit HSV tables: a few grey levels apart). For ``C != 3`` only the
  brightness and contrast steps run (mmseg would fail on the HSV conversion).
- ``Resize``/``RandomResize`` default ``keep_ratio=True`` (mmcv ``Resize`` defaults to False; every
  mmseg config in this project passes True).

Dimension legend: ``H, W`` image height/width in pixels, ``C`` channels/bands.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------- helpers


def _check_pair(name: str, img: np.ndarray, label: np.ndarray | None) -> None:
    """Raise ValueError unless ``img`` is ``(H, W, C>=1)`` and ``label`` is None or ``(H, W)``."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] < 1:
        shape = getattr(img, "shape", type(img).__name__)
        raise ValueError(f"{name}: img must be a (H, W, C) numpy array with C >= 1, got {shape}")
    if label is not None:
        if not isinstance(label, np.ndarray) or label.ndim != 2:
            shape = getattr(label, "shape", type(label).__name__)
            raise ValueError(f"{name}: label must be a (H, W) numpy array or None, got {shape}")
        if label.shape != img.shape[:2]:
            raise ValueError(f"{name}: label shape {label.shape} differs from img shape {img.shape[:2]}")


def _pair(name: str, arg: str, value, *, symmetric: bool = False) -> tuple[float, float]:
    """``(lo, hi)`` from a 2-sequence, or from a number (``(-v, v)`` if symmetric else ``(v, v)``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = (-abs(value), abs(value)) if symmetric else (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        lo, hi = value
    else:
        raise ValueError(f"{name}: {arg} must be a number or a (low, high) pair, got {value!r}")
    lo, hi = float(lo), float(hi)
    if lo > hi:
        raise ValueError(f"{name}: {arg} = {value!r} has low > high")
    return lo, hi


def _int_pair(name: str, arg: str, value) -> tuple[int, int]:
    """Two positive ints from an int or a 2-sequence."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f"{name}: {arg} must be a positive int or a pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _check_prob(name: str, prob) -> float:
    if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"{name}: prob must be a number in [0, 1], got {prob!r}")
    return float(prob)


def _cast_like(out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast a float result back to ``dtype``; integer dtypes are rounded and clipped to their range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    return out.astype(dtype, copy=False)


def _float_work(img: np.ndarray) -> np.ndarray:
    """``img`` as float64 if it is float64, else float32 (contiguous)."""
    dtype = np.float64 if img.dtype == np.float64 else np.float32
    return np.ascontiguousarray(img, dtype=dtype)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with the cv2 ``INTER_LINEAR`` convention (half-pixel centres, no antialias).

    Source pixel of output pixel ``x``: ``(x + 0.5) * in_w / out_w - 0.5`` clamped to the image, as
    OpenCV ``resize`` and ``F.interpolate(align_corners=False)`` both compute it.

    Args:
        img: ``(H, W, C)`` array, any dtype, any ``C``.
        size: target ``(w, h)`` in pixels (mmcv/cv2 order).

    Returns:
        ``(h, w, C)`` array with the dtype of ``img`` (integers rounded and clipped). uint8 results can
        differ from cv2's fixed-point arithmetic by 1 grey level.
    """
    out_w, out_h = size
    H, W, C = img.shape
    if (out_h, out_w) == (H, W):
        return img.copy()
    x = torch.from_numpy(_float_work(img)).permute(2, 0, 1).unsqueeze(0)  # (1, C, H, W)
    x = x.contiguous(memory_format=torch.channels_last)  # the fast CPU kernel for HWC data
    y = F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=False)
    y = y[0].permute(1, 2, 0).contiguous()  # (h, w, C)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        y = y.round_().clamp_(float(info.min), float(info.max))
    return y.numpy().astype(img.dtype, copy=False)


def _nearest_index(src: int, dst: int) -> np.ndarray:
    """cv2 ``INTER_NEAREST`` source indices: ``min(floor(x * (1 / (dst / src))), src - 1)`` in float64."""
    ifx = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst) * ifx).astype(np.int64), src - 1)  # (dst,)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an index map with OpenCV's ``INTER_NEAREST`` rule.

    OpenCV picks source index ``floor(x * src / dst)`` (computed in double precision; no half-pixel
    shift). ``F.interpolate(mode="nearest")`` uses the same rule but in float32, so it can pick a
    neighbouring index on rare sizes; the gather below reproduces the double-precision arithmetic.

    Args:
        label: ``(H, W)`` integer array.
        size: target ``(w, h)``.

    Returns:
        ``(h, w)`` array, same dtype, every value taken from ``label``.
    """
    out_w, out_h = size
    H, W = label.shape
    rows, cols = _nearest_index(H, out_h), _nearest_index(W, out_w)
    return label[rows[:, None], cols[None, :]]  # (h, w)


def scale_size(size: tuple[int, int], factor: float | tuple[float, float]) -> tuple[int, int]:
    """mmcv ``_scale_size``: ``(int(w * fw + 0.5), int(h * fh + 0.5))`` (round half up)."""
    fw, fh = (factor, factor) if isinstance(factor, (int, float)) else factor
    w, h = size
    return int(w * float(fw) + 0.5), int(h * float(fh) + 0.5)


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size`` for a ``(w, h)`` target: fit the long side within ``max(scale)`` and the
    short side within ``min(scale)``, keeping the aspect ratio.

    ``factor = min(max(scale) / max(h, w), min(scale) / min(h, w))``; returns :func:`scale_size`
    ``(size, factor)``. Example: 1600x640 to (2048, 1024) gives factor 1.28 and 2048x819.
    """
    w, h = size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return scale_size(size, factor)


def _resize_pair(name: str, img, label, scale: tuple[int, int], keep_ratio: bool):
    H, W = img.shape[:2]
    new_w, new_h = rescale_size((W, H), scale) if keep_ratio else scale
    if new_w < 1 or new_h < 1:
        raise ValueError(f"{name}: resizing {W}x{H} to scale {scale} gives an empty {new_w}x{new_h} image")
    img = resize_image(img, (new_w, new_h))
    if label is not None:
        label = resize_label(label, (new_w, new_h))
    return img, label


# --------------------------------------------------------------------------- base + composition


class Transform:
    """Base class: subclasses implement ``__call__(img, label, rng) -> (img, label)``.

    ``repr`` lists the public attributes, so a printed pipeline shows its settings.
    """

    def __call__(self, img: np.ndarray, label: np.ndarray | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, passing the same ``rng`` to each.

    Args:
        transforms: list of callables with the ``(img, label, rng) -> (img, label)`` signature.

    Raises:
        ValueError: if an element is not callable.
    """

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
        inner = "".join(f"\n  {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


# --------------------------------------------------------------------------- geometric


class Resize(Transform):
    """Deterministic resize (mmcv ``Resize``, ``mmcv/transforms/processing.py``), cv2 backend semantics.

    Exactly one of ``scale``/``scale_factor``:
    - ``scale=(w, h)``: with ``keep_ratio`` the image is rescaled so it fits the long side within
      ``max(scale)`` and the short side within ``min(scale)`` (:func:`rescale_size`; 1600x640 at
      (2048, 1024) gives 2048x819); without, it is resized to exactly ``w x h``.
    - ``scale_factor=f`` (the mmseg TTA views): the target is ``scale_size((W, H), f)`` relative to the
      *input* image, then handled as ``scale``.

    Image bilinear (:func:`resize_image`), label nearest (:func:`resize_label`).

    Args:
        scale: ``(w, h)`` or an int (square).
        scale_factor: positive float, or ``(fw, fh)``.
        keep_ratio: keep the aspect ratio (default True; mmcv's default is False).

    Raises:
        ValueError: bad arguments, or a resize that would produce an empty image.
    """

    def __init__(self, *, scale=None, scale_factor=None, keep_ratio: bool = True):
        if (scale is None) == (scale_factor is None):
            raise ValueError("Resize: give exactly one of scale=(w, h) and scale_factor")
        self.scale = None if scale is None else _int_pair("Resize", "scale", scale)
        if scale_factor is not None:
            factors = scale_factor if isinstance(scale_factor, Sequence) else (scale_factor, scale_factor)
            if len(factors) != 2 or not all(isinstance(f, (int, float)) and f > 0 for f in factors):
                raise ValueError(f"Resize: scale_factor must be positive (or a positive pair), got {scale_factor!r}")
            scale_factor = tuple(float(f) for f in factors)
        self.scale_factor = scale_factor
        self.keep_ratio = bool(keep_ratio)

    def __call__(self, img, label, rng):
        _check_pair("Resize", img, label)
        H, W = img.shape[:2]
        scale = self.scale if self.scale is not None else scale_size((W, H), self.scale_factor)
        return _resize_pair("Resize", img, label, scale, self.keep_ratio)


class RandomResize(Transform):
    """Random rescale (mmcv ``RandomResize`` with ``ratio_range``, ``mmcv/transforms/processing.py``).

    Draws ``r ~ U(ratio_range)`` (``rng.random() * (hi - lo) + lo``), sets the target scale to
    ``(int(w * r), int(h * r))`` and resizes as :class:`Resize`. With ``keep_ratio`` an image of size
    ``W x H`` ends up with factor ``min(max(target) / max(W, H), min(target) / min(W, H))``.

    Args:
        scale: base ``(w, h)`` (mmcv order), e.g. ``(2048, 1024)``.
        ratio_range: ``(lo, hi)`` with ``0 < lo <= hi``.
        keep_ratio: see :class:`Resize`.

    Raises:
        ValueError: bad arguments, or a draw that would produce an empty image.
    """

    def __init__(self, *, scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio: bool = True):
        self.scale = _int_pair("RandomResize", "scale", scale)
        self.ratio_range = _pair("RandomResize", "ratio_range", ratio_range)
        if self.ratio_range[0] <= 0:
            raise ValueError(f"RandomResize: ratio_range must be positive, got {ratio_range!r}")
        self.keep_ratio = bool(keep_ratio)

    def __call__(self, img, label, rng):
        _check_pair("RandomResize", img, label)
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return _resize_pair("RandomResize", img, label, target, self.keep_ratio)


class RandomCrop(Transform):
    """Random crop with the category-ratio check (mmseg ``RandomCrop``,
    ``mmseg/datasets/transforms/transforms.py``).

    The offset is drawn uniformly in ``[0, max(H - h, 0)]`` x ``[0, max(W - w, 0)]`` (rows first). If
    ``cat_max_ratio < 1`` and a label is given, the crop is accepted when, ignoring ``ignore_index``, it
    holds more than one class and the most frequent class covers less than ``cat_max_ratio`` of the
    valid pixels; otherwise a new offset is drawn. At most 10 checks run; after 10 failures the 11th
    draw is used unchecked (without a label, e.g. at test time, no check runs). An image smaller than the crop is cropped to its own size in that
    direction (the result is then smaller than ``crop_size``).

    Args:
        crop_size: ``(h, w)`` or an int.
        cat_max_ratio: in ``(0, 1]``; 1 disables the check.
        ignore_index: label value excluded from the class count.

    Raises:
        ValueError: bad arguments.
    """

    def __init__(self, *, crop_size, cat_max_ratio: float = 1.0, ignore_index: int = 255):
        self.crop_size = _int_pair("RandomCrop", "crop_size", crop_size)
        if not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"RandomCrop: cat_max_ratio must be in (0, 1], got {cat_max_ratio!r}")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)

    def _draw(self, H: int, W: int, rng) -> tuple[int, int]:
        oy = int(rng.integers(0, max(H - self.crop_size[0], 0) + 1))
        ox = int(rng.integers(0, max(W - self.crop_size[1], 0) + 1))
        return oy, ox

    def _accept(self, crop: np.ndarray) -> bool:
        values, counts = np.unique(crop, return_counts=True)
        counts = counts[values != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, img, label, rng):
        _check_pair("RandomCrop", img, label)
        H, W = img.shape[:2]
        ch, cw = self.crop_size
        oy, ox = self._draw(H, W, rng)
        if self.cat_max_ratio < 1.0 and label is not None:
            for _ in range(10):
                if self._accept(label[oy:oy + ch, ox:ox + cw]):
                    break
                oy, ox = self._draw(H, W, rng)
        img = img[oy:oy + ch, ox:ox + cw].copy()
        if label is not None:
            label = label[oy:oy + ch, ox:ox + cw].copy()
        return img, label


class RandomFlip(Transform):
    """Random flip (mmcv ``RandomFlip``, ``mmcv/transforms/processing.py``).

    With one direction it flips with probability ``prob``. With a list of directions and a float
    ``prob``, each direction has probability ``prob / len(direction)``; a list ``prob`` gives one
    probability per direction (the rest is "no flip"). One choice per call, so two flips never
    combine; use two ``RandomFlip`` transforms for independent horizontal and vertical flips (the
    albumentations ``HorizontalFlip`` + ``VerticalFlip`` pair).

    Args:
        prob: float in [0, 1], or a list (one per direction, sum <= 1).
        direction: ``"horizontal"`` (left-right), ``"vertical"`` (up-down), ``"diagonal"`` (both), or a list.

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
        self.prob, self.direction = prob, direction
        self._dirs = dirs
        self._p = np.array(probs + [max(1.0 - sum(probs), 0.0)])
        self._p /= self._p.sum()

    def __call__(self, img, label, rng):
        _check_pair("RandomFlip", img, label)
        k = int(rng.choice(len(self._p), p=self._p))
        if k == len(self._dirs):  # no flip
            return img, label
        axes = self._AXES[self._dirs[k]]
        img = np.ascontiguousarray(np.flip(img, axis=axes))
        if label is not None:
            label = np.ascontiguousarray(np.flip(label, axis=axes))
        return img, label


class RandomRotate90(Transform):
    """Rotate by ``k * 90`` degrees counter-clockwise (albumentations ``RandomRotate90``,
    ``augmentations/geometric/rotate.py``).

    With probability ``prob``, draws ``k`` uniformly in {0, 1, 2, 3} (so k = 0, no change, is possible)
    and applies ``np.rot90(x, k)`` to image and label. Odd ``k`` swaps H and W: non-square images in a
    batch then need equal sizes.

    Args:
        prob: application probability in [0, 1].
    """

    def __init__(self, *, prob: float = 0.5):
        self.prob = _check_prob("RandomRotate90", prob)

    def __call__(self, img, label, rng):
        _check_pair("RandomRotate90", img, label)
        if rng.random() >= self.prob:
            return img, label
        k = int(rng.integers(0, 4))
        img = np.ascontiguousarray(np.rot90(img, k, axes=(0, 1)))
        if label is not None:
            label = np.ascontiguousarray(np.rot90(label, k, axes=(0, 1)))
        return img, label


def affine_matrix(height: int, width: int, *, scale_x: float = 1.0, scale_y: float = 1.0,
                  rotate: float = 0.0, shear_x: float = 0.0, shear_y: float = 0.0) -> np.ndarray:
    """Forward affine matrix of albumentations 2.0.8 ``create_affine_transformation_matrix`` (no translation).

    ``M = T(c) @ Shear @ Rot @ Scale @ T(-c)`` (applied right to left) with the centre
    ``c = (W/2 - 0.5, H/2 - 0.5)``, ``Scale = diag(sx, sy)``, ``Rot = [[cos a, sin a], [-sin a, cos a]]``
    for ``a = rotate mod 360`` degrees (counter-clockwise on screen, y pointing down) and
    ``Shear = [[1, tan(shx)], [tan(shy), 1]]``.

    Args:
        height, width: image size in pixels.
        scale_x, scale_y: scale factors.
        rotate: degrees.
        shear_x, shear_y: shear angles in degrees, as they enter the matrix (albumentations negates its
            sampled shear before building the matrix; :class:`RandomAffine` does the same).

    Returns:
        ``(3, 3)`` float64 matrix mapping source pixel ``(x, y, 1)`` to destination pixel coordinates.
    """
    cx, cy = width / 2 - 0.5, height / 2 - 0.5
    a = math.radians(rotate % 360)
    to_origin = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    scale = np.diag([scale_x, scale_y, 1.0])
    rot = np.array([[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    shear = np.array([[1.0, math.tan(math.radians(shear_x)), 0.0],
                      [math.tan(math.radians(shear_y)), 1.0, 0.0], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    return back @ shear @ rot @ scale @ to_origin


def _source_coords(matrix: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Source ``(x, y)`` (float64, ``(H, W)`` each) of every destination pixel under forward ``matrix``."""
    inv = np.linalg.inv(matrix)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)  # (H, W) each
    return inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]


def warp_affine(img: np.ndarray, matrix: np.ndarray, *, fill=0.0) -> np.ndarray:
    """Bilinear affine warp with a constant border (cv2 ``warpAffine`` INTER_LINEAR + BORDER_CONSTANT).

    Every output pixel reads its source position ``M^-1 (x, y)`` and blends the 4 neighbours; neighbours
    outside the image take the value ``fill`` (so edges blend towards ``fill`` as in OpenCV).

    Args:
        img: ``(H, W, C)`` array, any dtype.
        matrix: ``(3, 3)`` forward matrix (source -> destination pixel coordinates).
        fill: scalar or one value per channel.

    Returns:
        ``(H, W, C)`` array, dtype of ``img`` (integers rounded and clipped).
    """
    H, W, C = img.shape
    sx, sy = _source_coords(matrix, H, W)
    src = _float_work(img)
    fill_arr = np.asarray(fill, dtype=src.dtype).ravel()
    if fill_arr.size not in (1, C):
        raise ValueError(f"warp_affine: fill has {fill_arr.size} values, the image has C={C} channels")
    fill_vec = np.broadcast_to(fill_arr, (C,))
    src = src - fill_vec  # border contributes 0, fill is added back at the end
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    wx1, wy1 = (sx - x0).astype(src.dtype), (sy - y0).astype(src.dtype)
    out = np.zeros((H, W, C), dtype=src.dtype)
    for dy, wy in ((0, 1 - wy1), (1, wy1)):
        yy = y0 + dy
        for dx, wx in ((0, 1 - wx1), (1, wx1)):
            xx = x0 + dx
            valid = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            taps = src[np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]  # (H, W, C)
            out += (wy * wx * valid)[..., None] * taps
    return _cast_like(out + fill_vec, img.dtype)


def warp_affine_label(label: np.ndarray, matrix: np.ndarray, *, fill: int = 0) -> np.ndarray:
    """Nearest affine warp of an index map (cv2 ``warpAffine`` INTER_NEAREST + BORDER_CONSTANT).

    Source index ``floor(coord + 0.5)`` (round half up); positions outside the image get ``fill``.

    Args:
        label: ``(H, W)`` integer array.
        matrix: ``(3, 3)`` forward matrix.
        fill: border label value.

    Returns:
        ``(H, W)`` array, dtype of ``label``; values are from ``label`` or ``fill``.
    """
    H, W = label.shape
    sx, sy = _source_coords(matrix, H, W)
    ix, iy = np.floor(sx + 0.5).astype(np.int64), np.floor(sy + 0.5).astype(np.int64)
    valid = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    out = np.full((H, W), fill, dtype=label.dtype)
    out[valid] = label[iy[valid], ix[valid]]
    return out


class RandomAffine(Transform):
    """Random scale/rotate/shear about the image centre (albumentations 2.0.8 ``Affine`` defaults,
    ``augmentations/geometric/transforms.py``; spec unetpp_glacier_and_lossd.md §A2).

    With probability ``prob`` draws, in this order, ``shear_x, shear_y ~ U(shear)`` (both negated, as
    albumentations does), ``scale_x, scale_y ~ U(scale)`` independently (``keep_ratio=False``) and
    ``rotate ~ U(rotate)`` degrees, builds :func:`affine_matrix` (no translation, output size = input
    size) and warps the image bilinearly and the label with nearest neighbour, both with a constant
    border (``fill`` / ``fill_label``). The identity matrix returns the inputs unchanged.

    Deviation: sampling uses exact float64 inverse coordinates, while cv2 ``warpAffine`` works in fixed
    point, so images differ from albumentations' by fixed-point rounding.

    Args:
        prob: application probability.
        scale: ``(lo, hi)`` scale factors, or a number (fixed).
        rotate: ``(lo, hi)`` degrees, or a number.
        shear: ``(lo, hi)`` degrees, or a number.
        fill: image border value (scalar or per channel).
        fill_label: label border value (0 like albumentations' ``fill_mask``; use 255 to ignore it).

    Raises:
        ValueError: bad arguments.
    """

    def __init__(self, *, prob: float = 0.5, scale=(0.9, 1.1), rotate=(-15.0, 15.0), shear=(-10.0, 10.0),
                 fill=0.0, fill_label: int = 0):
        self.prob = _check_prob("RandomAffine", prob)
        self.scale = _pair("RandomAffine", "scale", scale)
        if self.scale[0] <= 0:
            raise ValueError(f"RandomAffine: scale must be positive, got {scale!r}")
        self.rotate = _pair("RandomAffine", "rotate", rotate)
        self.shear = _pair("RandomAffine", "shear", shear)
        if max(abs(s) for s in self.shear) >= 90:
            raise ValueError(f"RandomAffine: shear must be within (-90, 90) degrees, got {shear!r}")
        self.fill = fill
        self.fill_label = int(fill_label)

    def __call__(self, img, label, rng):
        _check_pair("RandomAffine", img, label)
        if rng.random() >= self.prob:
            return img, label
        shear_x, shear_y = -rng.uniform(*self.shear), -rng.uniform(*self.shear)
        scale_x, scale_y = rng.uniform(*self.scale), rng.uniform(*self.scale)
        rotate = rng.uniform(*self.rotate)
        H, W = img.shape[:2]
        matrix = affine_matrix(H, W, scale_x=scale_x, scale_y=scale_y, rotate=rotate,
                               shear_x=shear_x, shear_y=shear_y)
        if np.allclose(matrix, np.eye(3)):
            return img, label
        img = warp_affine(img, matrix, fill=self.fill)
        if label is not None:
            label = warp_affine_label(label, matrix, fill=self.fill_label)
        return img, label


# --------------------------------------------------------------------------- photometric

def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB -> HSV on OpenCV's 8-bit scale (what mmseg's ``PhotoMetricDistortion`` works in), in float.

    Args:
        rgb: ``(H, W, 3)`` values in [0, 255], channels R, G, B.

    Returns:
        ``(H, W, 3)`` float32: H in [0, 180) (degrees / 2), S and V in [0, 255]; H = 0 for greys.
    """
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = np.where(v > 0, 255.0 * diff / np.where(v > 0, v, 1), 0)
    safe = np.where(diff > 0, diff, 1)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe)) * 30.0
    h = np.where(diff > 0, np.mod(h, 180.0), 0)
    return np.stack([h, s, v], axis=-1).astype(np.float32)  # (H, W, 3)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (the standard six-sector formula), ``(H, W, 3)`` float32 RGB in [0, 255]."""
    h = np.mod(hsv[..., 0].astype(np.float32) / 30.0, 6.0)  # sector position in [0, 6)
    s, v = hsv[..., 1].astype(np.float32) / 255.0, hsv[..., 2].astype(np.float32)
    k = np.mod(np.array([5.0, 3.0, 1.0], np.float32) + h[..., None], 6.0)  # (H, W, 3) per R, G, B
    return v[..., None] * (1 - s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1))  # (H, W, 3)


class PhotoMetricDistortion(Transform):
    """mmseg ``PhotoMetricDistortion`` (``mmseg/datasets/transforms/transforms.py``) on 0..255 values, in float.

    Order (each step applied with probability 0.5, drawn as ``rng.integers(2)``):
    1. brightness: ``+ U(-brightness_delta, brightness_delta)``;
    2. ``mode = rng.integers(2)``; if ``mode == 1``, contrast ``* U(contrast_range)`` here;
    3. saturation: S ``* U(saturation_range)`` in HSV (3-channel images only);
    4. hue: H ``+= d`` with ``d = rng.integers(-hue_delta, hue_delta)`` (upper bound exclusive, as numpy
       ``randint`` in mmseg: [-18, 17] by default), modulo 180 (OpenCV hue units; 3-channel only);
    5. if ``mode == 0``, contrast here.
    (mmseg's comments call mode 0 "contrast first"; its code, followed here, does the opposite.)
    Every step clips to [0, 255]. The same random draws as mmseg, computed in float32: mmseg also
    truncates to uint8 after every step and converts HSV with OpenCV's 8-bit tables, so its output is
    within a few grey levels of this one. Images with ``C != 3`` (multi-band rasters) get only
    brightness and contrast, the same value for every band.

    Args:
        brightness_delta: max absolute brightness offset (grey levels).
        contrast_range: ``(lo, hi)`` contrast factors.
        saturation_range: ``(lo, hi)`` saturation factors.
        hue_delta: max hue shift in OpenCV hue units (2 degrees each).
        channel_order: ``"rgb"`` (this project's loaders) or ``"bgr"`` (mmseg/cv2 loading); only used to
            find the colours for HSV, so hue shifts have the same sign as in mmseg.

    Returns:
        float32 image in [0, 255]; the label is untouched.
    """

    def __init__(self, *, brightness_delta: float = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18, channel_order: str = "rgb"):
        if brightness_delta < 0 or hue_delta < 0:
            raise ValueError("PhotoMetricDistortion: brightness_delta and hue_delta must be >= 0, got "
                             f"{brightness_delta!r}, {hue_delta!r}")
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = _pair("PhotoMetricDistortion", "contrast_range", contrast_range)
        self.saturation_range = _pair("PhotoMetricDistortion", "saturation_range", saturation_range)
        self.hue_delta = int(hue_delta)
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"PhotoMetricDistortion: channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.channel_order = channel_order

    def _contrast(self, x, rng):
        return np.clip(x * np.float32(rng.uniform(*self.contrast_range)), 0, 255) if rng.integers(2) else x

    def _hsv_step(self, x, rng, channel: int):
        if not rng.integers(2):
            return x
        hsv = rgb_to_hsv(x if self.channel_order == "rgb" else x[..., ::-1])  # (H, W, 3)
        if channel == 1:
            hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(rng.uniform(*self.saturation_range)), 0, 255)
        else:
            delta = int(rng.integers(-self.hue_delta, self.hue_delta)) if self.hue_delta > 0 else 0
            hsv[..., 0] = np.mod(hsv[..., 0] + delta, 180)
        rgb = np.clip(hsv_to_rgb(hsv), 0, 255)
        return rgb if self.channel_order == "rgb" else np.ascontiguousarray(rgb[..., ::-1])

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
    """albumentations 2.0.8 ``RandomBrightnessContrast`` (``augmentations/pixel/transforms.py``) with
    ``brightness_by_max=True``.

    With probability ``prob``: ``alpha = 1 + U(contrast_limit)``, ``beta = U(brightness_limit)``, then
    ``out = clip(img * alpha + beta * max_value, 0, max_value)`` with the same alpha/beta for every
    channel. ``max_value`` is 1.0 for float images in [0, 1] (albumentations' value for float32) and
    255 for uint8 images.

    Args:
        prob: application probability.
        brightness_limit: ``b`` meaning ``(-b, b)``, or ``(lo, hi)``.
        contrast_limit: ``c`` meaning ``(-c, c)``, or ``(lo, hi)``.
        max_value: value range maximum.

    Returns:
        float32 image (also when not applied); the label is untouched.
    """

    def __init__(self, *, prob: float = 0.5, brightness_limit=0.2, contrast_limit=0.2, max_value: float = 1.0):
        self.prob = _check_prob("RandomBrightnessContrast", prob)
        self.brightness_limit = _pair("RandomBrightnessContrast", "brightness_limit", brightness_limit,
                                      symmetric=True)
        self.contrast_limit = _pair("RandomBrightnessContrast", "contrast_limit", contrast_limit, symmetric=True)
        if max_value <= 0:
            raise ValueError(f"RandomBrightnessContrast: max_value must be positive, got {max_value!r}")
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
    """Per-channel ``(img - mean) / std`` (mmseg ``SegDataPreProcessor``, ``mmseg/models/data_preprocessor.py``).

    mmseg first swaps BGR to RGB (``bgr_to_rgb=True``) and then uses RGB-ordered statistics; this project's
    loaders already give RGB, so pass RGB-ordered ``mean``/``std`` (ImageNet: (123.675, 116.28, 103.53),
    (58.395, 57.12, 57.375)).

    Args:
        mean: one value per channel.
        std: one positive value per channel.

    Returns:
        float32 ``(H, W, C)``.

    Raises:
        ValueError: ``mean``/``std`` lengths differ from each other or from the image's ``C``, or a std <= 0.
    """

    def __init__(self, *, mean, std):
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalize: mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize: std values must be positive, got {self.std}")
        self._mean = np.asarray(self.mean, dtype=np.float32)
        self._std = np.asarray(self.std, dtype=np.float32)

    def __call__(self, img, label, rng):
        _check_pair("Normalize", img, label)
        C = img.shape[2]
        if C != len(self.mean):
            raise ValueError(f"Normalize: image has C={C} channels but mean/std have {len(self.mean)} values")
        return (img.astype(np.float32) - self._mean) / self._std, label


class Pad(Transform):
    """Pad at the bottom and right (mmcv ``Pad``, ``mmcv/transforms/processing.py``; mmseg
    ``stack_batch`` pads the same way after normalisation).

    Exactly one of:
    - ``size=(h, w)``: pad up to ``h x w``; a dimension already larger is left as is (not cropped);
    - ``size_divisor=d``: pad H and W up to the next multiple of ``d``.

    Args:
        size: ``(h, w)`` or an int.
        size_divisor: positive int.
        pad_val: image fill, scalar or per channel (0: after :class:`Normalize` this is mmseg's choice).
        seg_pad_val: label fill (255 = ignore).

    Returns:
        Padded image (same dtype) and label (same dtype).

    Raises:
        ValueError: both or neither of ``size``/``size_divisor``, or non-positive values.
    """

    def __init__(self, *, size=None, size_divisor: int | None = None, pad_val=0, seg_pad_val: int = 255):
        if (size is None) == (size_divisor is None):
            raise ValueError("Pad: give exactly one of size=(h, w) and size_divisor")
        self.size = None if size is None else _int_pair("Pad", "size", size)
        if size_divisor is not None and (not isinstance(size_divisor, (int, np.integer)) or size_divisor < 1):
            raise ValueError(f"Pad: size_divisor must be a positive int, got {size_divisor!r}")
        self.size_divisor = size_divisor
        self.pad_val, self.seg_pad_val = pad_val, int(seg_pad_val)

    def __call__(self, img, label, rng):
        _check_pair("Pad", img, label)
        H, W, C = img.shape
        if self.size is not None:
            th, tw = max(self.size[0], H), max(self.size[1], W)
        else:
            d = self.size_divisor
            th, tw = -(-H // d) * d, -(-W // d) * d
        if (th, tw) == (H, W):
            return img, label
        pad_val = np.asarray(self.pad_val, dtype=img.dtype).ravel()
        if pad_val.size not in (1, C):
            raise ValueError(f"Pad: pad_val has {pad_val.size} values, the image has C={C} channels")
        out = np.empty((th, tw, C), dtype=img.dtype)
        out[...] = pad_val
        out[:H, :W] = img
        if label is not None:
            padded = np.full((th, tw), self.seg_pad_val, dtype=label.dtype)
            padded[:H, :W] = label
            label = padded
        return out, label


# --------------------------------------------------------------------------- builder

TRANSFORMS: dict[str, type] = {cls.__name__: cls for cls in (
    Resize, RandomResize, RandomCrop, RandomFlip, RandomRotate90, RandomAffine, PhotoMetricDistortion,
    RandomBrightnessContrast, Normalize, Pad)}


def build_transforms(specs: list[dict]) -> Compose:
    """Build a :class:`Compose` from plain-data specs such as ``{"type": "RandomFlip", "prob": 0.5}``.

    Args:
        specs: list of dicts; ``"type"`` names a class in ``TRANSFORMS``, the other keys are its keyword
            arguments (lists are accepted wherever a tuple is expected). The dicts are not modified.

    Returns:
        The composed pipeline.

    Raises:
        ValueError: a spec is not a dict or has no ``type``, the type is unknown (the message lists the
            valid types), or its arguments are rejected (the message names the transform and its
            accepted arguments).
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
