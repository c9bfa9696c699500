"""AutoICE / AI4Arctic ready-to-train (RTT) NetCDF scenes: reading, the seed's 18 channels, patch
sampling, scene lists, the submission file, and a synthetic scene writer in the exact schema.

Format (spec ``autoice.md`` §3.2): one NetCDF-4 (HDF5) file per Sentinel-1 scene,
``<YYYYMMDDThhmmss>_<dmi|cis>_prep.nc``, every variable an HDF5 dataset at the root:

- full 80 m grid ``(sar_lines, sar_samples)``: charts ``SIC``/``SOD``/``FLOE`` (uint8, 255 = masked,
  attribute ``chart_fill_value``), ``nersc_sar_primary`` (HH), ``nersc_sar_secondary`` (HV),
  ``sar_incidenceangle`` (float32, masked = 0, attribute ``variable_fill_value``), ``distance_map``;
- tie points ``(sar_sample_2dgrid_points, sar_line_2dgrid_points)`` = 21 x 21 float64:
  ``sar_grid2d_latitude``, ``sar_grid2d_longitude``;
- 2 km grid ``(2km_grid_lines, 2km_grid_samples)`` (about 1/25 of the 80 m grid) float32: 14 AMSR2
  ``btemp_{6_9,7_3,10_7,18_7,23_8,36_5,89_0}{h,v}`` and 6 ERA5 ``u10m_rotated, v10m_rotated, t2m,
  skt, tcwv, tclw``;
- global attributes ``scene_id, original_id, ice_service, flip, pixel_spacing``.

Test scenes keep their charts in ``<scene>_prep_reference.nc``; they are merged when present.

The seed's 18 input channels (:data:`CHANNELS`, geohai/autoice-challenge-geospatial-encoding
``loaders.py`` @ dcb9af0): HH, HV, incidence angle, sin/cos(lon), sin/cos(2 lat) from the tie-point
grids (nearest-upsampled to the 80 m grid, ``lon / 180`` and ``lat / 90`` then ``sin/cos(pi x)``),
distance map, AMSR2 18.7/36.5 GHz h/v, ERA5 u10, v10, t2m, skt, tcwv, tclw (2 km variables
nearest-upsampled). Values are used as stored (the RTT files are already standard-scaled); NaN and
``_FillValue`` inputs become 0 (the RTT mask value), ``scale_factor``/``add_offset`` are applied.
Nearest upsampling uses PyTorch's ``interpolate(mode="nearest")`` index rule, as the seed.

Intentional deviations from the seed:
    - A training patch's 2 km and tie-point values are the full-scene upsampled grid cropped at the
      patch (so patches and full-scene inference see identical inputs); the seed crops 31 2 km
      cells at ``int(row / 25)`` and stretches them to 768 px (about 0.9 %).
    - One patch per ``__getitem__`` (the DataLoader batches; the seed returned whole batches), drawn
      from ``default_rng([seed, epoch, index])`` so a resumed run draws the same patches.
    - Full-scene labels are uint8 ``(H, W)`` (255 = masked) to keep a 5000 x 5200 scene's three charts
      at 78 MB; training patches carry int64 labels.
    - ``downsample=f`` keeps every f-th line and sample (nearest, the challenge winner used f = 10);
      full-scene labels stay at 80 m and the evaluator upsamples predictions back (nearest).

Dimension legend: ``C`` = 18 channels, ``H, W`` scene lines / samples at 80 m, ``h2, w2`` 2 km grid,
``P`` patch size, ``f`` downsampling factor.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from iceseg.scene import Raster

CHARTS = ("SIC", "SOD", "FLOE")
CHART_CLASSES = {"SIC": 11, "SOD": 6, "FLOE": 7}  # valid classes 0..K-1 (starter kit utils.py), 255 = masked
SAR_VARS = ("nersc_sar_primary", "nersc_sar_secondary", "sar_incidenceangle")
GEO_VARS = ("sar_grid2d_latitude", "sar_grid2d_longitude")
AMSR2_ALL = tuple(f"btemp_{f}{p}" for f in ("6_9", "7_3", "10_7", "18_7", "23_8", "36_5", "89_0") for p in "hv")
ERA5_VARS = ("u10m_rotated", "v10m_rotated", "t2m", "skt", "tcwv", "tclw")
LOWRES_VARS = ("btemp_18_7h", "btemp_18_7v", "btemp_36_5h", "btemp_36_5v", *ERA5_VARS)  # seed channels 9-18
CHANNELS = ("HH", "HV", "incidence_angle", "sin_lon", "cos_lon", "sin_2lat", "cos_2lat", "distance_map",
            *LOWRES_VARS)
FULL_DIMS, TIE_DIMS, LOWRES_DIMS = ("sar_lines", "sar_samples"), ("sar_sample_2dgrid_points",
                                                                   "sar_line_2dgrid_points"), ("2km_grid_lines",
                                                                                               "2km_grid_samples")
TIE_POINTS = 21  # tie-point grid size per axis
LOWRES_FACTOR = 25  # 80 m pixels per 2 km cell
MASK = 255  # chart fill value
CHART_CLASS_NAMES = {  # spec autoice.md §3.4; the seed's extra SOD/FLOE output is the "mask slot"
    "SIC": [f"{10 * k}%" for k in range(11)],
    "SOD": ["open water", "new ice", "young ice", "thin first-year ice", "thick first-year ice", "old ice"],
    "FLOE": ["open water", "cake ice", "small floe", "medium floe", "big floe", "vast floe", "bergs"],
}
DEFAULTS = {"patch_size": 768, "patches_per_epoch": 9728, "min_valid": 0.3, "downsample": 1}
# patches_per_epoch: the seed's int(20 x 487 / 16) = 608 batches x 16


def require_h5py():
    """Import h5py or raise ImportError telling how to install it (AutoICE scenes only)."""
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading AutoICE / AI4Arctic NetCDF scenes needs h5py: pip install h5py") from e
    return h5py


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output position for PyTorch ``interpolate(mode="nearest")`` from n_in to n_out.

    Returns:
        ``(n_out,)`` int64 in ``[0, n_in)``: floor(i * n_in / n_out) with PyTorch's float rounding.
    """
    src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)  # (1, 1, n_in, 1)
    return F.interpolate(src, size=(n_out, 1), mode="nearest").view(-1).long().numpy()  # (n_out,)


def scene_file_name(entry: str) -> str:
    """List entry -> RTT file name: original S1 names (``S1A_EW_GRDM_1SDH_<time>_..._icechart_<svc>_...nc``,
    the seed's ``datalists/*.json``) become ``name[17:32] + "_" + name[77:80] + "_prep.nc"``; names
    without ``.nc`` get ``_prep.nc``; ``*_prep.nc`` entries pass through."""
    name = entry.strip()
    if name.startswith("S1") and "_icechart_" in name:
        return f"{name[17:32]}_{name[77:80]}_prep.nc"
    if not name.endswith(".nc"):
        return name + ("" if name.endswith("_prep") else "_prep") + ".nc"
    return name


def read_scene_list(root: str | Path, split: str) -> list[Path]:
    """Scene files of a split: ``<split>`` as a list file path, ``<root>/<split>.json|.txt`` (a JSON
    list or one name per line, RTT or original S1 names), or a folder ``<root>/<split>/*_prep.nc``.

    Raises:
        FileNotFoundError: no list/folder found, or a listed scene file is missing (names the list).
        ValueError: an empty list.
    """
    root = Path(root)
    tried = [Path(split), root / split, root / f"{split}.json", root / f"{split}.txt"]
    list_file = next((p for p in tried if p.is_file() and p.suffix in (".json", ".txt")), None)
    if list_file is None and (root / split).is_dir():
        files = sorted((root / split).glob("*_prep.nc"))
        if not files:
            raise ValueError(f"{root / split}: no *_prep.nc scenes")
        return files
    if list_file is None:
        raise FileNotFoundError(f"AutoICE split {split!r}: none of {', '.join(map(str, tried))} is a scene list "
                                f"(.json list or .txt, one name per line) and {root / split} is not a folder")
    text = list_file.read_text()
    entries = json.loads(text) if list_file.suffix == ".json" else [s for s in text.splitlines() if s.strip()]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{list_file}: expected a non-empty list of scene names")
    files = []
    for e in entries:
        name = scene_file_name(str(e))
        path = next((p for p in (root / name, list_file.parent / name) if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{list_file}: scene {e!r} not found as {root / name}")
        files.append(path)
    return files


# ----------------------------------------------------------------------------- reading


def _decode(ds, raw: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Apply ``_FillValue`` (-> ``fill``), ``scale_factor``, ``add_offset``; NaN -> ``fill``; float32 out
    (float64 stays float64, e.g. the lat/lon tie points)."""
    x = raw.astype(np.float64 if raw.dtype == np.float64 else np.float32)
    fv = ds.attrs.get("_FillValue")
    bad = ~np.isfinite(x)
    if fv is not None and np.isfinite(np.asarray(fv, dtype=np.float64)).all():
        bad |= raw == np.asarray(fv).astype(raw.dtype)
    x = x * x.dtype.type(ds.attrs.get("scale_factor", 1.0)) + x.dtype.type(ds.attrs.get("add_offset", 0.0))
    x[bad] = fill
    return x


def _decode_chart(ds, raw: np.ndarray) -> np.ndarray:
    """uint8 chart with every fill value (``_FillValue``, ``chart_fill_value``) mapped to 255."""
    out = raw.astype(np.uint8)
    for key in ("_FillValue", "chart_fill_value"):
        fv = ds.attrs.get(key)
        if fv is not None:
            out[raw == np.asarray(fv).astype(raw.dtype)] = MASK
    return out


def open_nc(path):
    """Open a NetCDF-4 file read-only with h5py; returns an ``h5py.File`` (a context manager).

    Raises:
        ValueError: the file is unreadable or truncated, naming it.
    """
    h5py = require_h5py()
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: unreadable or truncated NetCDF file ({e})") from e


class Scene:
    """One ``*_prep.nc`` scene (+ optional ``*_prep_reference.nc``), validated on construction.

    Files are opened per read (h5py handles do not survive DataLoader worker forks).

    Args:
        path: the ``*_prep.nc`` file.
        downsample: keep every f-th line/sample of the inputs (1 = 80 m).
        need_labels: require the three charts (in the file or its reference file).

    Raises:
        FileNotFoundError: missing file.
        ValueError: missing variable, wrong grid size or dtype (the message names the file).
    """

    def __init__(self, path: str | Path, downsample: int = 1, need_labels: bool = True):
        require_h5py()  # fail early with the install hint
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"AutoICE scene not found: {self.path}")
        if int(downsample) < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        self.f = int(downsample)
        ref = self.path.with_name(self.path.name[:-3] + "_reference.nc")
        self.reference = ref if ref.is_file() else None
        self.name = self.path.name[:-len("_prep.nc")] if self.path.name.endswith("_prep.nc") else self.path.stem
        with open_nc(self.path) as fh:
            missing = [v for v in (*SAR_VARS, "distance_map", *GEO_VARS, *LOWRES_VARS) if v not in fh]
            if missing:
                raise ValueError(f"{self.path}: missing variable(s) {missing} (AI4Arctic ready-to-train schema)")
            self.H, self.W = fh["nersc_sar_primary"].shape if fh["nersc_sar_primary"].ndim == 2 else (0, 0)
            for v in (*SAR_VARS, "distance_map"):
                if fh[v].shape != (self.H, self.W) or self.H < 2:
                    raise ValueError(f"{self.path}: {v} has shape {fh[v].shape}, expected the 2-D 80 m grid "
                                     f"{(self.H, self.W)} of nersc_sar_primary")
            for v in GEO_VARS:
                if fh[v].shape != (TIE_POINTS, TIE_POINTS):
                    raise ValueError(f"{self.path}: {v} has shape {fh[v].shape}, expected the "
                                     f"{TIE_POINTS}x{TIE_POINTS} tie-point grid")
            spacing = fh.attrs.get("pixel_spacing")
            self.pixel_spacing = float(spacing) if spacing is not None and float(spacing) > 0 else None
            self.h2, self.w2 = fh[LOWRES_VARS[0]].shape if fh[LOWRES_VARS[0]].ndim == 2 else (0, 0)
            ok = [math.floor(n / LOWRES_FACTOR) <= m <= math.ceil(n / LOWRES_FACTOR)
                  for n, m in ((self.H, self.h2), (self.W, self.w2))]
            if not all(ok) or any(fh[v].shape != (self.h2, self.w2) for v in LOWRES_VARS):
                shapes = {v: fh[v].shape for v in LOWRES_VARS}
                raise ValueError(f"{self.path}: 2 km variables must share one grid of about 1/{LOWRES_FACTOR} "
                                 f"of {(self.H, self.W)}, got {shapes}")
        self.label_file = None
        if need_labels:
            for cand in (self.reference, self.path):  # a reference file takes precedence
                if cand is not None:
                    with open_nc(cand) as fh:
                        if all(c in fh for c in CHARTS):
                            bad = {c: (fh[c].shape, str(fh[c].dtype)) for c in CHARTS
                                   if fh[c].shape != (self.H, self.W) or fh[c].dtype.kind not in "ui"}
                            if bad:
                                raise ValueError(f"{cand}: charts {bad} must be integer {(self.H, self.W)} grids")
                            self.label_file = cand
                            break
            if self.label_file is None:
                with open_nc(self.path) as fh:
                    missing = [c for c in CHARTS if c not in fh]
                raise ValueError(f"{self.path}: missing chart variable(s) {missing} and no "
                                 f"{self.path.name[:-3]}_reference.nc beside it holding SIC, SOD and FLOE")
        # input grid (after downsampling): every f-th line / sample
        self.rows, self.cols = np.arange(0, self.H, self.f), np.arange(0, self.W, self.f)
        self.size = (len(self.rows), len(self.cols))

    def read_charts(self, r0: int = 0, r1: int | None = None, c0: int = 0, c1: int | None = None,
                    step: int = 1, charts=CHARTS) -> dict:
        """Charts ``{name: (h, w) uint8}`` (255 = masked) of 80 m rows ``r0:r1:step``, cols ``c0:c1:step``."""
        with open_nc(self.label_file) as fh:
            return {c: _decode_chart(fh[c], fh[c][r0:r1:step, c0:c1:step]) for c in charts}

    def check_charts(self) -> None:
        """Raise ValueError naming the file when SIC is masked everywhere (no usable reference pixel)."""
        sic = self.read_charts(charts=("SIC",))["SIC"]
        if not (sic != MASK).any():
            raise ValueError(f"{self.label_file}: the SIC chart is masked (255) everywhere: no reference pixels")

    def read_inputs(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """The 18 channels of input-grid rows ``y0:y1`` and cols ``x0:x1`` (input grid = after downsampling).

        Returns:
            ``(18, y1 - y0, x1 - x0)`` float32 in :data:`CHANNELS` order.
        """
        y1 = self.size[0] if y1 is None else y1
        x1 = self.size[1] if x1 is None else x1
        rr, cc = self.rows[y0:y1], self.cols[x0:x1]  # 80 m line / sample of each output pixel
        f, r0, c0 = self.f, int(rr[0]), int(cc[0])
        out = np.empty((len(CHANNELS), len(rr), len(cc)), dtype=np.float32)
        with open_nc(self.path) as fh:
            for i, v in enumerate(SAR_VARS):
                out[i] = _decode(fh[v], fh[v][r0:int(rr[-1]) + 1:f, c0:int(cc[-1]) + 1:f])
            ti, tj = nearest_index(TIE_POINTS, self.H)[rr], nearest_index(TIE_POINTS, self.W)[cc]
            lat = _decode(fh["sar_grid2d_latitude"], fh["sar_grid2d_latitude"][()]).astype(np.float64)  # (21, 21)
            lon = _decode(fh["sar_grid2d_longitude"], fh["sar_grid2d_longitude"][()]).astype(np.float64)  # (21, 21)
            lat, lon = lat[np.ix_(ti, tj)] / 90.0, lon[np.ix_(ti, tj)] / 180.0  # the seed indexes (21, 21) as (lines, samples)
            out[3], out[4] = np.sin(np.pi * lon), np.cos(np.pi * lon)
            out[5], out[6] = np.sin(np.pi * lat), np.cos(np.pi * lat)
            out[7] = _decode(fh["distance_map"], fh["distance_map"][r0:int(rr[-1]) + 1:f, c0:int(cc[-1]) + 1:f])
            li, lj = nearest_index(self.h2, self.H)[rr], nearest_index(self.w2, self.W)[cc]
            a, b, c, d = int(li.min()), int(li.max()) + 1, int(lj.min()), int(lj.max()) + 1
            for k, v in enumerate(LOWRES_VARS):
                grid = _decode(fh[v], fh[v][a:b, c:d])  # (rows, cols) block of the 2 km grid
                out[8 + k] = grid[np.ix_(li - a, lj - c)]
        return out


class SceneRaster(Raster):
    """A ``*_prep.nc`` scene as an ``iceseg.scene.Raster`` for predict.py (no charts needed).

    ``read(y, x, h, w)`` gives the 18 :data:`CHANNELS` of an input-grid window (every ``downsample``-th
    80 m line and sample), ``(h, w, 18)`` float32, and its ``(h, w)`` valid mask: HH differs from the RTT
    fill value 0 (the starter kit's test mask ``x[0] == train_fill_value``). ``pixel_spacing``: the file's
    attribute in metres (80 m grid), or None.

    Raises:
        ValueError, FileNotFoundError: as :class:`Scene`.
    """

    def __init__(self, path: str | Path, downsample: int = 1):
        self.scene = Scene(path, downsample, need_labels=False)
        super().__init__(Path(path), *self.scene.size, len(CHANNELS), np.float32)
        self.pixel_spacing = self.scene.pixel_spacing
        self.nodata, self.nodata_source = 0.0, "HH = 0 (the ready-to-train mask value)"

    def _read(self, y, x, h, w):
        return self.scene.read_inputs(y, y + h, x, x + w).transpose(1, 2, 0)  # (h, w, 18)

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Input-grid window: ``(h, w, 18)`` float32 channels and the ``(h, w)`` bool mask HH != 0."""
        arr = self._read(y, x, h, w)
        return arr, arr[..., 0] != 0


# ----------------------------------------------------------------------------- datasets


class AutoICEPatches(torch.utils.data.Dataset):
    """Random training patches: a random scene and corner, accepted when more than ``min_valid`` of the
    patch has a valid SIC (seed ``loaders.py::random_crop``); otherwise another scene is drawn.

    Item: ``{"img": (18, P, P) float32, "label": {chart: (P, P) int64, 255 = masked}, "name": str}``.

    Args:
        scenes: validated :class:`Scene` objects.
        patch_size: ``P`` in input-grid pixels (768 at 80 m in the seed).
        length: patches per epoch (seed 608 x 16).
        min_valid: accept a patch when valid SIC pixels > ``min_valid * P * P`` (seed 0.3).
        seed: base seed; patch ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
        max_draws: give up (RuntimeError) after this many rejected draws for one item.

    Raises:
        ValueError: a scene smaller than the patch (names the file).
    """

    def __init__(self, scenes: list, patch_size: int, length: int, min_valid: float = 0.3, seed: int = 0,
                 max_draws: int = 200):
        self.scenes, self.P, self.length, self.min_valid = list(scenes), int(patch_size), int(length), min_valid
        self.seed, self.epoch, self.max_draws = seed, 0, max_draws
        for s in self.scenes:
            if min(s.size) < self.P:
                raise ValueError(f"{s.path}: input grid {s.size} (downsample {s.f}) is smaller than the patch "
                                 f"size {self.P}")
        self._checked = set()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's patch stream (train.py calls it with the sampler's ``set_epoch``)."""
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        P = self.P
        for _ in range(self.max_draws):
            s = self.scenes[int(rng.integers(len(self.scenes)))]
            if s.path not in self._checked:
                s.check_charts()
                self._checked.add(s.path)
            y, x = int(rng.integers(max(s.size[0] - P, 1))), int(rng.integers(max(s.size[1] - P, 1)))
            r0, c0, f = int(s.rows[y]), int(s.cols[x]), s.f
            charts = s.read_charts(r0, r0 + P * f, c0, c0 + P * f, f)
            if (charts["SIC"] != MASK).sum() > self.min_valid * P * P:
                img = torch.from_numpy(s.read_inputs(y, y + P, x, x + P))  # (18, P, P)
                label = {c: torch.from_numpy(v.astype(np.int64)) for c, v in charts.items()}
                return {"img": img, "label": label, "name": f"{s.name}@{y},{x}"}
        raise RuntimeError(f"AutoICE: no {P}x{P} patch with more than {self.min_valid:.0%} valid SIC in "
                           f"{self.max_draws} draws over {len(self.scenes)} scenes (last {s.path})")


class AutoICEScenes(torch.utils.data.Dataset):
    """Whole scenes for validation / test (one per item, no tiling here: the evaluator tiles).

    Item: ``{"img": (18, H', W') float32 (input grid), "label": {chart: (H, W) uint8 at 80 m, 255 =
    masked}, "name": scene id such as "20180325T194759_dmi"}``.

    Raises (on access):
        ValueError: the scene's SIC chart is masked everywhere (names the file).
    """

    def __init__(self, scenes: list):
        self.scenes = list(scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def set_epoch(self, epoch: int) -> None:
        """No randomness; present for train.py's interface."""

    def __getitem__(self, i: int) -> dict:
        s = self.scenes[i]
        label = s.read_charts()
        if not (label["SIC"] != MASK).any():
            raise ValueError(f"{s.label_file}: the SIC chart is masked (255) everywhere: no reference pixels")
        return {"img": torch.from_numpy(s.read_inputs()), "name": s.name,
                "label": {c: torch.from_numpy(v) for c, v in label.items()}}


def build_autoice_dataset(cfg, split: str, pipeline: list, seed: int = 0):
    """``DATASETS["AutoICE"]``: patches for ``cfg.train_split``, whole scenes for any other split.

    Options in ``cfg.kwargs`` (defaults :data:`DEFAULTS`): ``patch_size`` (input-grid px),
    ``patches_per_epoch``, ``min_valid`` (fraction), ``downsample`` (factor f).

    Raises:
        ImportError: h5py missing. ValueError: unknown option, a transforms pipeline, ``in_channels``
        other than 18, or a bad scene. FileNotFoundError: no scene list / scene file.
    """
    require_h5py()
    opts = dict(getattr(cfg, "kwargs", {}) or {})
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"AutoICE: unknown data.kwargs {unknown}; valid: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **opts}
    if pipeline:
        raise ValueError("AutoICE: data pipelines are not supported (the seed uses no augmentation); "
                         "set data.train_pipeline and data.test_pipeline to []")
    if cfg.in_channels != len(CHANNELS):
        raise ValueError(f"AutoICE builds {len(CHANNELS)} channels, data.in_channels is {cfg.in_channels}")
    scenes = [Scene(p, opts["downsample"]) for p in read_scene_list(cfg.root, split)]
    if split == cfg.train_split:
        return AutoICEPatches(scenes, opts["patch_size"], opts["patches_per_epoch"], opts["min_valid"], seed)
    return AutoICEScenes(scenes)


# ----------------------------------------------------------------------------- NetCDF-4 writing (h5py)

_NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable."


class NetCDFWriter:
    """Minimal NetCDF-4 writer on h5py (netCDF-C / xarray readable): dimensions are HDF5 dimension
    scales named as netCDF-C does, variables are root datasets with the scales attached.

    Use as a context manager: ``with NetCDFWriter(path, attrs) as w: w.variable(name, dims, data)``.
    """

    def __init__(self, path: str | Path, attrs: dict | None = None):
        h5py = require_h5py()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = h5py.File(self.path, "w", track_order=True)
        self.dims: dict[str, int] = {}
        for k, v in (attrs or {}).items():
            self.fh.attrs[k] = v

    def dimension(self, name: str, size: int) -> None:
        """Create dimension ``name`` of ``size`` (no coordinate variable). Raises ValueError on a size clash."""
        if name in self.dims:
            if self.dims[name] != size:
                raise ValueError(f"{self.path}: dimension {name} is {self.dims[name]}, not {size}")
            return
        ds = self.fh.create_dataset(name, shape=(size,), dtype="f4")
        ds.make_scale(_NOT_A_VARIABLE + b"%10d" % size)
        ds.attrs["_Netcdf4Dimid"] = np.int32(len(self.dims))
        self.dims[name] = size

    def variable(self, name: str, dims: tuple, data: np.ndarray, attrs: dict | None = None,
                 fillvalue=None, compress: bool = True) -> None:
        """Write ``data`` (shape matching ``dims``) as variable ``name`` with ``attrs``."""
        data = np.asarray(data)
        for d, n in zip(dims, data.shape, strict=True):
            self.dimension(d, n)
        kw = {"compression": "gzip", "compression_opts": 1, "shuffle": True} if compress and data.size > 4096 else {}
        ds = self.fh.create_dataset(name, data=data, fillvalue=fillvalue, **kw)
        if fillvalue is not None:
            ds.attrs["_FillValue"] = np.asarray(fillvalue, dtype=data.dtype)
        for k, v in (attrs or {}).items():
            ds.attrs[k] = v
        for i, d in enumerate(dims):
            ds.dims[i].attach_scale(self.fh[d])

    def blank(self, name: str, dims: tuple, shape: tuple, dtype, fillvalue=None):
        """Create variable ``name`` of ``shape`` (gzip, chunked by rows) and return its ``h5py.Dataset`` for
        writes by slices (``ds[r0:r1] = block``): a chart written one band of rows at a time."""
        for d, n in zip(dims, shape, strict=True):
            self.dimension(d, n)
        chunks = (min(256, shape[0]), *shape[1:])
        ds = self.fh.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fillvalue,
                                    compression="gzip", compression_opts=1, shuffle=True)
        for i, d in enumerate(dims):
            ds.dims[i].attach_scale(self.fh[d])
        return ds

    def close(self) -> None:
        """Flush and close the file."""
        self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_submission_chart(writer: NetCDFWriter, scene: str, chart: str, data) -> None:
    """Add one chart in the AutoICE submission layout: uint8 ``{scene}_{chart}`` with dimensions
    ``{scene}_{chart}_dim0/1`` (starter-kit ``test_upload``; ``scene`` like "20180325T194759_dmi").

    ``data``: the ``(H, W)`` chart, or its shape: then the empty variable's ``h5py.Dataset`` is returned
    for writes by rows."""
    name = f"{scene}_{chart}"
    dims = (f"{name}_dim0", f"{name}_dim1")
    if isinstance(data, tuple):
        return writer.blank(name, dims, data, np.uint8)
    writer.variable(name, dims, np.asarray(data, dtype=np.uint8))
    return None


def merge_submissions(path: str | Path, parts: list, delete: bool = False) -> None:
    """Write the charts of submission files ``parts`` into one submission ``path`` (atomically: a
    temporary file, then a rename), copying 1024 rows at a time; ``delete`` removes the parts after."""
    h5py = require_h5py()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with NetCDFWriter(tmp) as w:
            for p in parts:
                with h5py.File(p, "r") as fh:
                    for k, src in fh.items():
                        if src.ndim == 2:
                            scene, chart = k.rsplit("_", 1)
                            dst = write_submission_chart(w, scene, chart, src.shape)
                            for r in range(0, src.shape[0], 1024):
                                dst[r:r + 1024] = src[r:r + 1024]
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    if delete:
        for p in parts:
            Path(p).unlink()


# ----------------------------------------------------------------------------- synthetic scenes


def _smooth_field(rng, h: int, w: int, cells: int = 4) -> np.ndarray:
    """A smooth random ``(h, w)`` float32 field: bilinear upsampling of a ``cells x cells`` grid."""
    g = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
    return F.interpolate(g, size=(h, w), mode="bilinear", align_corners=True)[0, 0].numpy()


def write_synthetic_scene(path: str | Path, height: int = 400, width: int = 440, seed: int = 0,
                          service: str = "dmi", labels: str = "inline", regions: int = 10,
                          drop: tuple = ()) -> Path:
    """Write a synthetic RTT scene in the exact AI4Arctic schema (dims, names, dtypes, fill values).

    Content: Voronoi "chart polygons" with SIC 0-10 and matching SOD/FLOE (some polygons masked 255 as
    ambiguous), a land disc (charts 255, SAR 0), HH/HV that rise with SIC and ice type plus speckle,
    an incidence-angle ramp, a banded distance map, 21 x 21 Arctic lat/lon tie points, and smooth
    AMSR2/ERA5 fields on the 2 km grid (``floor(H / 25) x floor(W / 25)``) correlated with SIC. All
    inputs are roughly standard-scaled like the RTT files.

    Args:
        path: output ``*_prep.nc`` path.
        height, width: 80 m grid size ``H, W`` (>= 50).
        seed: RNG seed (the content depends only on it and the size).
        service: "dmi" or "cis" (global attribute ``ice_service``).
        labels: "inline" (charts in the file), "reference" (in ``*_prep_reference.nc`` beside it, as
            the test release) or "none".
        regions: number of chart polygons.
        drop: variable names to leave out (to test error messages).

    Returns:
        ``path`` as a Path.
    """
    rng = np.random.default_rng(seed)
    H, W = int(height), int(width)
    if H < 50 or W < 50:
        raise ValueError(f"write_synthetic_scene: size {H}x{W} too small (>= 50)")
    h2, w2 = H // LOWRES_FACTOR, W // LOWRES_FACTOR
    # chart polygons: Voronoi cells computed on a 1/8 grid and upsampled (nearest)
    hs, ws = -(-H // 8), -(-W // 8)
    centres = rng.uniform(0, 1, (regions, 2)) * (hs, ws)
    yy, xx = np.mgrid[0:hs, 0:ws]
    region = np.argmin((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, axis=-1)
    region = np.repeat(np.repeat(region, 8, 0), 8, 1)[:H, :W]
    sic_r = rng.integers(0, 11, regions)
    sic_r[: max(1, regions // 4)] = 0  # some open water
    sod_r = np.where(sic_r == 0, 0, rng.integers(1, 6, regions))
    floe_r = np.where(sic_r == 0, 0, rng.integers(1, 7, regions))
    amb = rng.uniform(size=regions) < 0.15
    sic, sod, floe = sic_r[region], np.where(amb, MASK, sod_r)[region], np.where(amb, MASK, floe_r)[region]
    cy, cx, rad = rng.uniform(0, H), rng.uniform(0, W), 0.18 * min(H, W)
    dist = np.hypot(*np.mgrid[0:H, 0:W] - np.array([cy, cx])[:, None, None]) - rad  # px from the land edge
    land = dist < 0
    sic, sod, floe = (np.where(land, MASK, a).astype(np.uint8) for a in (sic, sod, floe))
    speckle = rng.standard_normal((2, H, W)).astype(np.float32)
    hh = -1.0 + 0.12 * sic + 0.25 * np.where(sod == MASK, 2, sod) + 0.4 * speckle[0]
    hv = -1.2 + 0.15 * sic + 0.20 * np.where(floe == MASK, 3, floe) + 0.4 * speckle[1]
    ia = np.broadcast_to(((18.0 + 28.0 * np.arange(W) / W) - 33.998) / 8.322, (H, W))
    band = np.clip(np.floor(np.log2(np.maximum(dist * 0.08, 0.25)) + 3), 0, 10)  # 0 = land, 10 = > 128 km
    sar = {"nersc_sar_primary": hh, "nersc_sar_secondary": hv, "sar_incidenceangle": ia}
    sar = {k: np.where(land, 0, v).astype(np.float32) for k, v in sar.items()}
    distance = ((band - 5.0) / 3.0).astype(np.float32)
    t = np.linspace(0, 1, TIE_POINTS)
    lat0, lon0 = rng.uniform(62, 80), rng.uniform(-70, -10)
    lat = lat0 + 3.5 * t[:, None] + 0.3 * t[None, :]  # (line points, sample points), as the seed reads them
    lon = lon0 + 1.0 * t[:, None] + 6.0 * t[None, :]
    sic_low = F.interpolate(torch.from_numpy(np.where(land, 0, sic).astype(np.float32))[None, None],
                            size=(h2, w2), mode="area")[0, 0].numpy()
    low = {}
    for v in (*AMSR2_ALL, *ERA5_VARS):
        gain = (1.0 if v.endswith("h") else 0.5) if v.startswith("btemp") else 0.1
        low[v] = (0.15 * (sic_low - 5) * gain + 0.5 * _smooth_field(rng, h2, w2)).astype(np.float32)
    base = Path(path)
    name = base.name[:-len("_prep.nc")] if base.name.endswith("_prep.nc") else base.stem
    attrs = {"scene_id": base.name, "original_id": f"S1A_EW_GRDM_1SDH_{name[:15]}_synthetic_icechart_{service}",
             "ice_service": service, "flip": np.int64(0), "pixel_spacing": np.int64(80)}
    chart_vars = {"SIC": sic, "SOD": sod, "FLOE": floe}
    with NetCDFWriter(base, attrs) as w:
        if labels == "inline":
            for c, v in chart_vars.items():
                if c not in drop:
                    w.variable(c, FULL_DIMS, v, {"chart_fill_value": np.uint8(MASK)})
        for v, data in sar.items():
            if v not in drop:
                w.variable(v, FULL_DIMS, data, {"variable_fill_value": np.float32(0)}, fillvalue=np.float32(np.nan))
        if "distance_map" not in drop:
            w.variable("distance_map", FULL_DIMS, distance,
                       {"long_name": "Distance to land zones numbered with ids ranging from 0 to N"},
                       fillvalue=np.float32(np.nan))
        for v, data in (("sar_grid2d_latitude", lat), ("sar_grid2d_longitude", lon)):
            if v not in drop:
                w.variable(v, TIE_DIMS, data.astype(np.float64), fillvalue=np.float64(np.nan))
        for v, data in low.items():
            if v not in drop:
                w.variable(v, LOWRES_DIMS, data, fillvalue=np.float32(np.nan))
    if labels == "reference":
        ref = base.with_name(base.name[:-3] + "_reference.nc")
        with NetCDFWriter(ref, {"scene_id": base.name}) as w:
            for c, v in chart_vars.items():
                if c not in drop:
                    w.variable(c, FULL_DIMS, v, {"chart_fill_value": np.uint8(MASK)})
    return base


def make_synthetic_dataset(root: str | Path, n_train: int = 4, n_val: int = 2, size: tuple = (160, 192),
                           seed: int = 0) -> Path:
    """Write ``n_train + n_val`` synthetic scenes and ``train.json`` / ``val.json`` lists under ``root``
    (skipped when ``root/train.json`` exists). Validation scenes keep their charts in
    ``*_prep_reference.nc`` files, as the test release does."""
    root = Path(root)
    if (root / "train.json").is_file():
        return root
    names = []
    for i in range(n_train + n_val):
        service = "dmi" if i % 2 == 0 else "cis"
        name = f"2021{1 + i // 28:02d}{1 + i % 28:02d}T1200{i % 60:02d}_{service}_prep.nc"
        write_synthetic_scene(root / name, size[0] + 8 * i, size[1] + 4 * i, seed=seed + i, service=service,
                              labels="inline" if i < n_train else "reference")
        names.append(name)
    (root / "val.json").write_text(json.dumps(names[n_train:], indent=1))
    (root / "train.json").write_text(json.dumps(names[:n_train], indent=1))  # written last: marks completion
    return root
