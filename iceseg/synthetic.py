"""Synthetic river-ice scenes written in the NWPU_YRCC2 layout that IceSegNet reads.

The real NWPU_YRCC2 set (UAV photos of the Yellow River in winter, 1600x640 W x H) is only
available from Baidu Netdisk, so tests, demos and train smoke runs use small procedurally drawn
scenes instead. Each scene shows a meandering river channel crossing the frame between land banks,
bands of shore ice attached to the banks, and drift-ice floes on the open water, with textures,
illumination changes, blur and sensor noise so that colour alone does not solve the task.

Layout and encoding (spec ``icesegnet.md`` §6.1, IceSegNet's "NWPU_YRCC2_JPG1"):

    root/train/00000.jpg         RGB JPEG (quality 90)
    root/train_labels/00000.png  single-channel uint8 index map, same stem
    root/val/ ... root/val_labels/ ...   (and root/test/, root/test_labels/ when num_test > 0)
    root/class_dict.csv          name,r,g,b visualisation palette, one row per class (row i = value i+1)
    root/README.txt              says the data are synthetic and how they were generated
    root/synthetic.json          generator parameters (used to make the call idempotent)

Raw label values are 1-based, as the dataset's ``reduce_zero_label=True`` expects:

    0 = unlabelled (a one-pixel seam along part of the bank in about half the images; -> 255 ignore)
    1 = land ("land": others / bank)              -> class 0, palette (0, 0, 0)
    2 = water ("water")                           -> class 1, palette (0, 255, 0)
    3 = shore ice ("shore ice")                   -> class 2, palette (0, 255, 255)
    4 = drift ice ("streaming", 流冰)              -> class 3, palette (255, 0, 255)

Everything is vectorised numpy: smooth noise comes from bilinearly upsampled random grids
(value noise) summed over octaves; only the drift-ice floes are drawn in a short Python loop over
floes (each floe is vectorised over its bounding box).
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil

import numpy as np
from PIL import Image

_FORMAT_VERSION = 1
_JPEG_QUALITY = 90
_SPLITS = ("train", "val", "test")
# (name, r, g, b) in reduced index order; raw PNG value = row index + 1 (spec §6.1 palette).
_CLASS_DICT = (
    ("land", 0, 0, 0),
    ("water", 0, 255, 0),
    ("shore ice", 0, 255, 255),
    ("streaming", 255, 0, 255),
)
_IGNORE, _LAND, _WATER, _SHORE, _DRIFT = 0, 1, 2, 3, 4
_MANIFEST = "synthetic.json"


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field: a normal grid with spacing ``cell`` px, smoothstep-bilinearly upsampled.

    Returns:
        float64 array of ``shape`` (H, W); roughly zero mean, not normalised.
    """
    H, W = shape
    cell = max(float(cell), 1.0)
    gh, gw = int(H / cell) + 3, int(W / cell) + 3
    grid = rng.standard_normal((gh, gw))
    ys = np.arange(H) / cell + rng.uniform(0.0, 1.0)  # (H,)
    xs = np.arange(W) / cell + rng.uniform(0.0, 1.0)  # (W,)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    ty, tx = ys - y0, xs - x0
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)  # smoothstep weights
    ty, tx = ty[:, None], tx[None, :]  # (H, 1), (1, W)
    Y0, X0 = y0[:, None], x0[None, :]
    top = grid[Y0, X0] * (1 - tx) + grid[Y0, X0 + 1] * tx  # (H, W)
    bottom = grid[Y0 + 1, X0] * (1 - tx) + grid[Y0 + 1, X0 + 1] * tx  # (H, W)
    return top * (1 - ty) + bottom * ty


def _fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell: float, octaves: int = 3, gain: float = 0.5
) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers (cell halved, amplitude times ``gain`` per octave).

    Returns:
        float64 array (H, W) standardised to zero mean and unit standard deviation.
    """
    out = np.zeros(shape)
    amp = 1.0
    for k in range(octaves):
        out += amp * _value_noise(rng, shape, cell / 2**k)
        amp *= gain
    return (out - out.mean()) / (out.std() + 1e-12)


def _blur(img: np.ndarray, passes: int) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur applied ``passes`` times to a (H, W, C) float image (edge padding)."""
    for _ in range(passes):
        p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
        img = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
        p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
        img = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    return img


def _draw_floes(
    rng: np.random.Generator, water: np.ndarray, angle: float, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw irregular, flow-elongated drift-ice floes with soft edges over the water area.

    Each floe is a star-shaped blob r < R(theta) = R0 * (1 + sum_m a_m cos(m theta + phi_m)),
    stretched along the flow direction ``angle``; alpha ramps from 0 to 1 over ``soft`` px across
    the outline (alpha 0.5 on the outline itself).

    Returns:
        alpha: float64 (H, W) in [0, 1], the strongest floe coverage per pixel (not yet masked by water).
        tone: float64 (H, W), grey level 0..255 of the floe that owns the pixel (0 where none).
    """
    H, W = water.shape
    alpha = np.zeros((H, W))
    tone = np.zeros((H, W))
    widx = np.flatnonzero(water)
    if widx.size == 0:
        return alpha, tone
    target = rng.uniform(0.08, 0.5) * widx.size  # drift-ice area to reach, px
    r_max = rng.uniform(7.0, 22.0) * s
    r_min = 1.5 * s
    max_floes = 400
    # floes cluster into streams: sample centres with a smooth log-normal density over the water
    weight = np.exp(1.0 * _fractal_noise(rng, (H, W), 25 * s, 2)).ravel()[widx]
    centres = widx[rng.choice(widx.size, size=max_floes, p=weight / weight.sum())]
    jitter = 0.8 * s * _fractal_noise(rng, (H, W), 2 * s, 2)  # ragged outlines
    radii = np.exp(rng.uniform(math.log(r_min), math.log(r_max), size=max_floes))
    base_tone = rng.uniform(150.0, 205.0)
    covered = 0.0
    for k in range(max_floes):
        if covered >= target:
            break
        cy, cx = divmod(int(centres[k]), W)
        R0 = radii[k]
        stretch = rng.uniform(1.0, 2.2)
        a = angle + rng.uniform(-0.5, 0.5)
        soft = rng.uniform(1.0, 2.5) * s
        harm = rng.uniform(0.0, 1.0, size=8) * (0.25 / np.arange(2, 10) ** 0.9)  # a_m for m = 2..9
        phase = rng.uniform(0.0, 2 * math.pi, size=8)
        ext = int(math.ceil(R0 * stretch * 1.6 + soft + 1))
        y0, y1 = max(cy - ext, 0), min(cy + ext + 1, H)
        x0, x1 = max(cx - ext, 0), min(cx + ext + 1, W)
        dy = np.arange(y0, y1)[:, None] - cy  # (h, 1)
        dx = np.arange(x0, x1)[None, :] - cx  # (1, w)
        p = (dx * math.cos(a) + dy * math.sin(a)) / stretch  # (h, w), along flow, squeezed
        q = -dx * math.sin(a) + dy * math.cos(a)  # (h, w), across flow
        r = np.hypot(p, q)
        theta = np.arctan2(q, p)
        m = np.arange(2, 10)[:, None, None]  # (8, 1, 1)
        shape = 1.0 + (harm[:, None, None] * np.cos(m * theta[None] + phase[:, None, None])).sum(0)  # (h, w)
        outline = R0 * shape + jitter[y0:y1, x0:x1] * min(1.0, R0 / (4 * s))
        a_k = np.clip((outline - r) / soft + 0.5, 0.0, 1.0)  # (h, w)
        win_a, win_t = alpha[y0:y1, x0:x1], tone[y0:y1, x0:x1]
        was_ice = win_a >= 0.5
        upd = a_k > win_a
        win_a[upd] = a_k[upd]
        win_t[upd] = np.clip(base_tone + rng.normal(0.0, 12.0), 120.0, 230.0)
        covered += int(((win_a >= 0.5) & ~was_ice & water[y0:y1, x0:x1]).sum())
    return alpha, tone


def _render_scene(rng: np.random.Generator, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one river-ice scene.

    Returns:
        image: uint8 (H, W, 3) RGB.
        label: uint8 (H, W), raw values 0 (ignore), 1 land, 2 water, 3 shore ice, 4 drift ice.
    """
    s = min(H, W / 2.5) / 160.0  # pixel scale relative to the default 160 x 400 frame
    shp = (H, W)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)  # (H, W) each

    # --- geometry: river frame (u along flow, v across), meandering centre line, varying width
    angle = rng.uniform(-0.35, 0.35) + (math.pi if rng.random() < 0.5 else 0.0)
    ca, sa = math.cos(angle), math.sin(angle)
    u = (xx - W / 2) * ca + (yy - H / 2) * sa
    v = -(xx - W / 2) * sa + (yy - H / 2) * ca
    centre = rng.uniform(-0.15, 0.15) * H
    for _ in range(2):
        centre = centre + rng.uniform(0.03, 0.12) * H * np.sin(
            2 * math.pi * u / (rng.uniform(0.6, 2.0) * W) + rng.uniform(0, 2 * math.pi)
        )
    hw0 = rng.uniform(0.22, 0.38) * H
    half_width = hw0 * (
        1 + 0.2 * np.sin(2 * math.pi * u / (rng.uniform(0.8, 2.5) * W) + rng.uniform(0, 6.3))
    )
    d = v - centre  # signed offset from the centre line, px
    bank_noise = 2.0 * s * _fractal_noise(rng, shp, 14 * s) + 0.7 * s * _fractal_noise(rng, shp, 3 * s, 2)
    dist_in = half_width - np.abs(d) + bank_noise  # > 0 inside the channel, ~px to the bank
    river = dist_in > 0

    # --- shore ice: a band of varying width along each bank, jagged outer edge
    widths = []
    for _side in range(2):
        base = 0.0 if rng.random() < 0.12 else rng.uniform(0.08, 0.5) * hw0
        wave = np.sin(2 * math.pi * u / (rng.uniform(0.4, 1.5) * W) + rng.uniform(0, 6.3))
        widths.append(base * (1 + 0.5 * wave))
    shore_w = np.where(d >= 0, widths[0], widths[1])
    edge_noise = 3.0 * s * _fractal_noise(rng, shp, 7 * s) + 1.2 * s * _fractal_noise(rng, shp, 2 * s, 2)
    shore_edge = shore_w + edge_noise  # distance from the bank to the ice edge, px
    shore = river & (dist_in < shore_edge)
    water = river & ~shore

    # --- drift ice: discrete floes plus, in some scenes, fields of slush / pancake ice
    floe_alpha, floe_tone = _draw_floes(rng, water, angle, s)
    if rng.random() < 0.4:
        slush = _fractal_noise(rng, shp, 10 * s, 3)
        thr = rng.uniform(0.8, 1.6)
        slush_alpha = np.clip((slush - thr) / 0.25 + 0.5, 0.0, 1.0)
        slush_tone = rng.uniform(140.0, 185.0)
        take = slush_alpha > floe_alpha
        floe_alpha = np.where(take, slush_alpha, floe_alpha)
        floe_tone = np.where(take, slush_tone, floe_tone)
    floe_alpha = floe_alpha * water
    drift = floe_alpha >= 0.5

    # --- label (exactly the drawn regions)
    label = np.full(shp, _LAND, np.uint8)
    label[river] = _WATER
    label[shore] = _SHORE
    label[drift] = _DRIFT
    if rng.random() < 0.5:  # thin unlabelled seam on part of the bank, like hand-annotation gaps
        seam = (np.abs(dist_in) < 0.5) & (_value_noise(rng, shp, 40 * s) > 0.3)
        label[seam] = _IGNORE

    # --- colours (float RGB, 0..255 scale)
    tex = _fractal_noise(rng, shp, 20 * s, 4)
    warm = rng.uniform(0.0, 1.0)  # 0 grey soil/rock .. 1 brown soil
    land_base = rng.uniform(80.0, 140.0) * np.array([1 + 0.15 * warm, 1 + 0.02 * warm, 1 - 0.2 * warm])
    land = land_base * (1 + 0.16 * tex)[..., None] + (10 * _fractal_noise(rng, shp, 2 * s, 2))[..., None]
    if rng.random() < 0.5:  # field furrows / tracks
        beta, period = rng.uniform(0, math.pi), rng.uniform(5, 12) * s
        land += (7 * np.sin(2 * math.pi * (xx * math.cos(beta) + yy * math.sin(beta)) / period))[..., None]
    snow_alpha = np.clip((_fractal_noise(rng, shp, 14 * s, 3) - rng.uniform(0.5, 1.8)) / 0.3, 0.0, 1.0)
    snow = np.array([212.0, 214.0, 220.0]) + (8 * tex)[..., None]
    land = land * (1 - snow_alpha[..., None]) + snow * snow_alpha[..., None]
    land *= np.where((dist_in > -4 * s) & ~river, 0.8, 1.0)[..., None]  # wet, darker bank strip

    tint = rng.uniform(-1.0, 1.0)  # -1 muddy brown .. 1 bluish
    water_base = rng.uniform(35.0, 75.0) * np.array([1 - 0.08 * tint, 1.0, 1 + 0.1 * tint])
    ripple_len = rng.uniform(3.0, 7.0) * s
    ripples = np.sin(2 * math.pi * (u / ripple_len + 0.8 * _fractal_noise(rng, shp, 16 * s, 2)))
    water_col = (
        water_base
        + (rng.uniform(5, 11) * ripples + 7 * _fractal_noise(rng, shp, 30 * s, 2))[..., None]
        + (35.0 * (_fractal_noise(rng, shp, 1.5 * s, 1) > 2.3))[..., None]  # specular glints
    )

    shore_grey = rng.uniform(190.0, 235.0)
    shore_col = np.array([shore_grey, shore_grey + 2, shore_grey + 6]) + (
        9 * _fractal_noise(rng, shp, 8 * s, 3)
    )[..., None]
    cracks = (np.abs(_value_noise(rng, shp, 10 * s)) < 0.04) | (np.abs(_value_noise(rng, shp, 25 * s)) < 0.03)
    shore_col -= (45.0 * cracks)[..., None]
    shore_col -= (18.0 * (shore_edge - dist_in < 2 * s))[..., None]  # wet grey rim at the ice edge

    drift_col = (
        floe_tone[..., None] + np.array([0.0, 1.0, 4.0]) + (9 * _fractal_noise(rng, shp, 4 * s, 2))[..., None]
    )

    img = np.where(river[..., None], np.where(shore[..., None], shore_col, water_col), land)
    fa = floe_alpha[..., None]
    img = img * (1 - fa) + drift_col * fa

    # --- camera: illumination gradient, colour cast, blur, noise
    gain = rng.uniform(0.75, 1.15) * (
        1 + rng.uniform(-0.15, 0.15) * (xx / W - 0.5) + rng.uniform(-0.15, 0.15) * (yy / H - 0.5)
    )
    img = img * gain[..., None] * rng.uniform(0.93, 1.07, size=3)
    img = _blur(img, int(rng.integers(1, 3)))
    img = img + rng.normal(0.0, rng.uniform(2.0, 6.0), size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


def _expected_files(root: pathlib.Path, counts: dict[str, int]) -> list[pathlib.Path]:
    files = [root / "class_dict.csv", root / "README.txt"]
    for split, n in counts.items():
        for i in range(n):
            files += [root / split / f"{i:05d}.jpg", root / f"{split}_labels" / f"{i:05d}.png"]
    return files


def make_river_ice_dataset(
    root: str | pathlib.Path,
    num_train: int = 24,
    num_val: int = 6,
    num_test: int = 0,
    size: tuple[int, int] = (160, 400),
    seed: int = 0,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write a small synthetic river-ice dataset in the exact NWPU_YRCC2 layout (spec §6.1).

    Classes, with raw PNG values (``reduce_zero_label=True`` maps 0 -> 255 ignore and v -> v - 1):
    1 ``land`` (others / bank), 2 ``water``, 3 ``shore ice``, 4 ``streaming`` (drift ice);
    0 = unlabelled, used only on a one-pixel seam along part of the bank in some images.

    Files: ``root/{train,val[,test]}/NNNNN.jpg`` (RGB, JPEG quality 90) paired by stem with
    ``root/{split}_labels/NNNNN.png`` (single-channel uint8 index map, same H x W), plus
    ``root/class_dict.csv`` (``name,r,g,b``; row i is raw value i + 1), ``root/README.txt`` and
    ``root/synthetic.json`` (the parameters). Test folders are written only when ``num_test > 0``.

    Image ``i`` of split ``k`` (train 0, val 1, test 2) is drawn from
    ``numpy.random.default_rng([seed, k, i])``, so the output is byte-identical for the same
    arguments and a scene does not depend on how many other scenes are requested.

    The call is idempotent: if ``root`` already holds a complete dataset written with the same
    parameters (checked via ``synthetic.json`` and the file list), it returns without writing.
    An interrupted run with the same parameters is completed by rewriting.

    Args:
        root: output folder; created if missing.
        num_train: number of training pairs, >= 1.
        num_val: number of validation pairs, >= 0.
        num_test: number of test pairs, >= 0.
        size: ``(H, W)`` in pixels, each >= 32. The default keeps NWPU's 1600 x 640 (W x H)
            2.5 : 1 aspect ratio.
        seed: non-negative integer seed.
        overwrite: if True, delete the generator's own outputs in ``root`` (split folders,
            ``class_dict.csv``, ``README.txt``, ``synthetic.json``) and write afresh. Other files in
            ``root`` are left alone.

    Returns:
        ``root`` as a ``pathlib.Path``.

    Raises:
        ValueError: if a count, ``size`` or ``seed`` is out of range or of the wrong type.
        FileExistsError: if ``root`` is not empty and does not hold this generator's output for the
            same parameters, and ``overwrite`` is False.
    """
    for name, val, lo in (("num_train", num_train, 1), ("num_val", num_val, 0), ("num_test", num_test, 0)):
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise ValueError(f"make_river_ice_dataset: {name} must be an int >= {lo}, got {val!r}")
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in size)
    ):
        raise ValueError(f"make_river_ice_dataset: size must be (H, W) with two ints >= 32, got {size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"make_river_ice_dataset: seed must be a non-negative int, got {seed!r}")

    root = pathlib.Path(root)
    H, W = int(size[0]), int(size[1])
    counts = {"train": num_train, "val": num_val, "test": num_test}
    params = {
        "generator": "iceseg.synthetic.make_river_ice_dataset",
        "format_version": _FORMAT_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "size_hw": [H, W],
        "jpeg_quality": _JPEG_QUALITY,
    }
    manifest = root / _MANIFEST
    owned = [root / n for n in ("class_dict.csv", "README.txt", _MANIFEST)]
    owned += [root / f"{sp}{suffix}" for sp in _SPLITS for suffix in ("", "_labels")]

    if root.exists() and not root.is_dir():
        raise FileExistsError(f"make_river_ice_dataset: {root} exists and is not a directory")
    if root.is_dir() and not overwrite:
        old = None
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError):
                old = None
        same = isinstance(old, dict) and {k: old.get(k) for k in params} == params
        if same and old.get("complete") and all(f.is_file() for f in _expected_files(root, counts)):
            return root
        if not same and any(root.iterdir()):
            raise FileExistsError(
                f"make_river_ice_dataset: {root} is not empty and does not hold a synthetic dataset "
                f"with parameters {params}; pass overwrite=True or use an empty folder"
            )
    for path in owned:  # overwrite, or an incomplete run with the same parameters
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    root.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({**params, "complete": False}, indent=2) + "\n")
    with open(root / "class_dict.csv", "w", newline="\n") as f:
        f.write("name,r,g,b\n")
        for name, r, g, b in _CLASS_DICT:
            f.write(f"{name},{r},{g},{b}\n")
    split_lines = ", ".join(f"{sp} {n}" for sp, n in counts.items() if n > 0)
    (root / "README.txt").write_text(
        "SYNTHETIC river-ice segmentation data (not real imagery).\n"
        "Generated by iceseg.synthetic.make_river_ice_dataset in the NWPU_YRCC2 layout used by IceSegNet.\n"
        f"Parameters: seed={seed}, size (H, W)=({H}, {W}), pairs: {split_lines}, "
        f"JPEG quality {_JPEG_QUALITY}, format version {_FORMAT_VERSION}.\n"
        "Image i of split k (train 0, val 1, test 2) is drawn from numpy.random.default_rng([seed, k, i]):\n"
        "a meandering river channel between land banks, shore-ice bands along the banks, drift-ice floes\n"
        "on the water, value-noise textures, illumination gradient, blur and Gaussian noise.\n"
        "Labels (<split>_labels/*.png, uint8, same stem as the .jpg): 0 unlabelled (thin bank seam),\n"
        "1 land, 2 water, 3 shore ice, 4 streaming (drift ice). With reduce_zero_label: 0 -> 255, v -> v-1.\n"
        "class_dict.csv gives the visualisation palette; row i corresponds to raw label value i+1.\n"
    )
    for k, split in enumerate(_SPLITS):
        if counts[split] == 0:
            continue
        (root / split).mkdir()
        (root / f"{split}_labels").mkdir()
        for i in range(counts[split]):
            image, label = _render_scene(np.random.default_rng([seed, k, i]), H, W)
            Image.fromarray(image).save(root / split / f"{i:05d}.jpg", quality=_JPEG_QUALITY)
            Image.fromarray(label).save(root / f"{split}_labels" / f"{i:05d}.png")
    manifest.write_text(json.dumps({**params, "complete": True}, indent=2) + "\n")
    return root


def make_glacier_dataset(
    root: str | pathlib.Path, num_tiles: int = 12, size: int = 64, seed: int = 0, overwrite: bool = False
) -> pathlib.Path:
    """Write synthetic 5-band glacier tiles in the GlacierHack layout read by ``iceseg.data.glacier``.

    Files: ``root/masked_<id>.npy`` float32 ``(size, size, 5)`` (bands B2, B3, B4, B6, B10 as in
    GlacierHack 2025, each divided by its per-tile maximum, so values lie in [0, 1]) and
    ``root/<id>.tif`` uint8 masks with 0 = background, 255 = glacier (the seed's encoding).
    Clean ice is bright in the visible bands and dark in SWIR (B6); debris-covered ice looks like
    rock in the visible bands but stays cold in the thermal band (B10), so all bands matter.
    Tile ``i`` draws from ``numpy.random.default_rng([seed, 3, i])``; a complete folder written with
    the same parameters (``synthetic.json``) is left as is unless ``overwrite``.

    Args:
        root: output folder.
        num_tiles: number of tiles, >= 2.
        size: tile edge in pixels, a multiple of 32 (U-Net++ needs it) and >= 32.
        seed: non-negative integer seed.
        overwrite: rewrite even when a matching dataset exists.

    Returns:
        ``root`` as a ``pathlib.Path``.

    Raises:
        ValueError: a count, size or seed out of range.
    """
    import tifffile

    if num_tiles < 2 or size < 32 or size % 32 or seed < 0:
        raise ValueError(f"make_glacier_dataset: need num_tiles >= 2, size a multiple of 32, seed >= 0; got "
                         f"{num_tiles}, {size}, {seed}")
    root = pathlib.Path(root)
    params = {"generator": "iceseg.synthetic.make_glacier_dataset", "num_tiles": num_tiles, "size": size,
              "seed": seed, "complete": True}
    manifest = root / _MANIFEST
    if not overwrite and manifest.is_file() and json.loads(manifest.read_text()) == params:
        return root
    root.mkdir(parents=True, exist_ok=True)
    for i in range(num_tiles):
        rng = np.random.default_rng([seed, 3, i])
        ice = _fractal_noise(rng, (size, size), size / 2) + np.linspace(-1, 1, size)[:, None] * rng.uniform(-1, 1)
        mask = ice > rng.uniform(-0.5, 0.5)  # (H, W) glacier
        debris = mask & (_fractal_noise(rng, (size, size), size / 4) > 0.8)
        tex = _fractal_noise(rng, (size, size), 6)
        vis = np.where(mask & ~debris, 0.65, 0.25) + 0.06 * tex  # visible reflectance
        swir = np.where(mask & ~debris, 0.08, 0.3) + 0.05 * _fractal_noise(rng, (size, size), 6)
        thermal = np.where(mask, 0.45, 0.75) + 0.08 * _fractal_noise(rng, (size, size), 12)
        bands = [vis * f for f in (1.0, 0.97, 0.93)] + [swir, thermal]
        x = np.stack(bands, axis=-1) + 0.03 * rng.standard_normal((size, size, 5))  # (H, W, 5)
        x = np.clip(x, 0.0, None)
        x = (x / np.maximum(x.max(axis=(0, 1), keepdims=True), 1e-12)).astype(np.float32)
        np.save(root / f"masked_{i:04d}.npy", x)
        tifffile.imwrite(root / f"{i:04d}.tif", (mask * 255).astype(np.uint8))
    manifest.write_text(json.dumps(params, indent=2) + "\n")
    return root
