"""Scenes for prediction: windowed raster reading, nodata, georeferencing, blended tiling, GeoTIFF writing.

A scene is read one window at a time and its class map is produced one band of rows at a time, so memory
depends on the window, the model and the scene width, never on the scene height or file size:

- :func:`open_raster` opens a GeoTIFF (strips or tiles, contiguous or planar, any compression tifffile can
  decode), a ``.npy`` raster (``(H, W)`` or ``(H, W, C)``, read by rows, never memory-mapped whole) or a
  Pillow image (read whole: these are small);
- :class:`TiledPredictor` runs the model on overlapping ``crop_size`` windows and blends their logits with a
  mean (mmseg ``slide_inference``) or a Hann weight, skipping windows with no valid pixel;
- :func:`write_geotiff` writes a tiled, zlib-compressed GeoTIFF from an iterator of row blocks, with the
  source's georeferencing tags copied (and nothing else: tifffile#42) and its own GDAL nodata tag.

Facts from spec ``geotiff.md``: the geo tags (ModelPixelScale 33550, ModelTiepoint 33922, ModelTransformation
34264 and its older code 33920, GeoKeyDirectory 34735, GeoDoubleParams 34736, GeoAsciiParams 34737), GDAL
nodata (42113, ASCII), the GeoKey linear units (ProjLinearUnitsGeoKey 3076; 9001 metre) and the model type
(GTModelTypeGeoKey 1024: 1 projected, 2 geographic). A pixel is nodata when every band equals the nodata
value (rasterio's dataset mask), when any band is NaN, or when its alpha is 0.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from iceseg.inference import _forward_padded, window_starts

GEO_TAGS = (33550, 33922, 33920, 34264, 34735, 34736, 34737)
NODATA_TAG = 42113
OUT_NODATA = 255  # class-map value of nodata pixels
SCENE_EXTS = (".tif", ".tiff", ".npy", ".png", ".jpg", ".jpeg")
_UNIT_M = {9001: 1.0, 9002: 0.3048, 9003: 1200 / 3937}  # GeoTIFF linear units: metre, foot, US survey foot
_COMPRESSION_NEEDS_CODECS = "imagecodecs"


# --------------------------------------------------------------------------- georeferencing


def geokeys(directory) -> dict[int, float | int]:
    """The short-valued keys of a GeoKeyDirectory (tag 34735): ``{key id: value}``.

    The directory is ``(version, revision, minor, count)`` then ``count`` entries ``(key, location, n, value)``;
    keys stored in another tag (``location != 0``) are left out. An empty or malformed directory gives ``{}``.
    """
    d = [int(v) for v in (directory or ())]
    if len(d) < 4:
        return {}
    return {d[i]: d[i + 3] for i in range(4, min(len(d), 4 + 4 * d[3]) - 3, 4) if d[i + 1] == 0}


def pixel_area_m2(tags: dict[int, tuple]) -> tuple[float | None, str]:
    """Ground area of one pixel in m², and why it is ``None`` when it is.

    Args:
        tags: ``{tag code: value}`` of the geo tags (values as tifffile decodes them).

    Returns:
        ``(area, note)``: ``area = sx * sy`` from ModelPixelScale, or ``|a e - b d|`` from a
        ModelTransformation, converted from the GeoKeys' linear unit; ``None`` for a raster without
        georeferencing, a geographic CRS (degrees: no constant pixel area) or an unknown linear unit.
    """
    keys = geokeys(tags.get(34735))
    if 33550 in tags:
        sx, sy = float(tags[33550][0]), float(tags[33550][1])
        area = abs(sx * sy)
    elif 34264 in tags or 33920 in tags:
        m = [float(v) for v in tags.get(34264, tags.get(33920))]
        area = abs(m[0] * m[5] - m[1] * m[4])
    else:
        return None, "no georeferencing (no ModelPixelScale or ModelTransformation tag)"
    if keys.get(1024) == 2:
        return None, "geographic CRS (degrees): pixels have no constant area"
    unit = keys.get(3076)
    if keys.get(1024) != 1 or unit not in _UNIT_M:
        return None, f"linear unit not known (GTModelType {keys.get(1024)}, ProjLinearUnits {unit})"
    return area * _UNIT_M[unit] ** 2, ""


# --------------------------------------------------------------------------- raster readers


class Raster:
    """A scene opened for windowed reading.

    Attributes:
        path: the file; height, width: pixels; bands: data bands ``C`` (an alpha band is not counted);
        dtype: stored numpy dtype; nodata: value (float, may be NaN) or None, with ``nodata_source``
        (``"--nodata"``, ``"GDAL_NODATA tag"`` or ``""``); alpha: the last stored band is alpha;
        geo: ``{tag code: (tifffile dtype, count, value)}`` of the geo tags found (empty if none).

    ``read(y, x, h, w)`` returns ``(img, valid)``: ``(h, w, C)`` array of the stored dtype and ``(h, w)`` bool.
    """

    def __init__(self, path: Path, height: int, width: int, bands: int, dtype, geo=None):
        self.path, self.height, self.width, self.bands, self.dtype = path, height, width, bands, np.dtype(dtype)
        self.nodata, self.nodata_source, self.alpha, self.geo = None, "", False, dict(geo or {})

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Window rows ``[y, y+h)``, columns ``[x, x+w)``: ``(h, w, C)`` stored dtype and the ``(h, w)`` valid mask."""
        arr = self._read(y, x, h, w)  # (h, w, C + alpha)
        valid = np.ones((h, w), bool)
        if self.alpha:
            valid &= arr[..., -1] > 0
            arr = arr[..., :-1]
        if arr.dtype.kind == "f":
            valid &= ~np.isnan(arr).any(axis=-1)  # also covers a NaN nodata value
        if self.nodata is not None and not math.isnan(self.nodata):
            if arr.dtype.kind == "f" or np.iinfo(arr.dtype).min <= self.nodata <= np.iinfo(arr.dtype).max:
                value = np.asarray(self.nodata).astype(arr.dtype)
                if value == self.nodata:  # a value the dtype cannot hold (0.5 in uint8) marks nothing
                    valid &= ~(arr == value).all(axis=-1)
        return arr, valid

    def close(self) -> None:
        """Release the file."""


def _pread(fd: int, offset: int, size: int, path: Path) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ValueError(f"{path}: truncated file (wanted {size} bytes at offset {offset}, got {len(data)})")
    return data


class _NpyRaster(Raster):
    """``.npy`` ``(H, W)`` or ``(H, W, C)`` in C order, read row by row with ``os.pread``."""

    def __init__(self, path: Path):
        try:
            m = np.load(path, mmap_mode="r", allow_pickle=False)  # header only: no data page is touched
            shape, dtype, offset, fortran = m.shape, m.dtype, m.offset, not m.flags.c_contiguous and m.ndim > 1
            del m
        except Exception as e:
            raise ValueError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
        if fortran or len(shape) not in (2, 3) or dtype.hasobject:
            raise ValueError(f"{path}: .npy rasters must be C-ordered (H, W) or (H, W, C) numbers, got shape {shape}"
                             + (" in Fortran order" if fortran else ""))
        super().__init__(path, shape[0], shape[1], shape[2] if len(shape) == 3 else 1, dtype)
        self._offset, self._fd = offset, os.open(path, os.O_RDONLY)
        self._row = self.width * self.bands * dtype.itemsize
        if os.fstat(self._fd).st_size < offset + self._row * self.height:
            os.close(self._fd)
            raise ValueError(f"{path}: truncated .npy ({os.path.getsize(path)} bytes, the header says "
                             f"{offset + self._row * self.height})")

    def _read(self, y, x, h, w):
        px = self.bands * self.dtype.itemsize
        rows = [_pread(self._fd, self._offset + r * self._row + x * px, w * px, self.path) for r in range(y, y + h)]
        return np.frombuffer(b"".join(rows), self.dtype).reshape(h, w, self.bands)  # (h, w, C)

    def close(self):
        os.close(self._fd)


class _PillowRaster(Raster):
    """A Pillow image (``.png``/``.jpg``), read whole; RGBA and LA keep their alpha band."""

    def __init__(self, path: Path):
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                mode, arr = im.mode, np.asarray(im)
        except Exception as e:
            raise ValueError(f"{path}: unreadable or corrupt image ({type(e).__name__}: {e})") from e
        arr = arr[..., None] if arr.ndim == 2 else arr  # (H, W, C)
        super().__init__(path, arr.shape[0], arr.shape[1], arr.shape[2], arr.dtype)
        self._arr, self.mode = arr, mode
        if mode in ("RGBA", "LA"):
            self.alpha, self.bands = True, arr.shape[2] - 1

    def _read(self, y, x, h, w):
        return self._arr[y:y + h, x:x + w]


class _TiffRaster(Raster):
    """A GeoTIFF read by segments: uncompressed data by rows (``os.pread``), compressed strips and tiles
    decoded one at a time (``TiffPage.decode``) through a small least-recently-used cache."""

    def __init__(self, path: Path, cache_mb: float = 64):
        import tifffile

        try:
            self._tif = tifffile.TiffFile(path)
            self._pages = [self._tif.pages[p.index] for p in self._tif.series[0].pages]  # band stacks: one page each
            page = self._pages[0]
        except Exception as e:
            raise ValueError(f"{path}: unreadable TIFF ({type(e).__name__}: {e})") from e
        if any((p.imagelength, p.imagewidth) != (page.imagelength, page.imagewidth) for p in self._pages):
            raise ValueError(f"{path}: pages of different sizes are not one raster")
        spp = sum(p.samplesperpixel for p in self._pages)
        if page.dtype is None or any(p.imagedepth > 1 for p in self._pages):
            raise ValueError(f"{path}: unsupported TIFF sample format or volume (bits {page.bitspersample})")
        geo = {code: (t.dtype, t.count, t.value) for code in GEO_TAGS if (t := page.tags.get(code)) is not None}
        super().__init__(path, page.imagelength, page.imagewidth, spp, page.dtype, geo)
        extra = page.tags.get(338)  # ExtraSamples: 1 associated, 2 unassociated alpha
        if extra is not None and len(self._pages) == 1 and np.atleast_1d(extra.value)[-1] in (1, 2):
            self.alpha, self.bands = True, spp - 1
        tag = page.tags.get(NODATA_TAG)
        if tag is not None:
            text = str(tag.value).strip().strip("\x00")
            try:
                self.nodata, self.nodata_source = float(text), "GDAL_NODATA tag"
            except ValueError as e:
                raise ValueError(f"{path}: GDAL_NODATA tag {text!r} is not a number (give --nodata V)") from e
        self._fd = os.open(path, os.O_RDONLY)
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, int(cache_mb * 2**20)
        size = os.fstat(self._fd).st_size
        for p in self._pages:
            end = max((o + n for o, n in zip(p.dataoffsets, p.databytecounts, strict=True)), default=0)
            if end > size:
                os.close(self._fd)
                raise ValueError(f"{path}: truncated TIFF (image data end at byte {end}, the file has {size})")
        self._decode_segment(self._pages[0], 0)  # fails now, not mid-scene, on a codec tifffile lacks

    def _decode_segment(self, page, index: int) -> np.ndarray:
        """Segment ``index`` of ``page`` as ``(rows, cols, samples)`` (tiles padded to the full tile size)."""
        key = (id(page), index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        raw = _pread(self._fd, page.dataoffsets[index], page.databytecounts[index], self.path)
        try:
            seg, _, _ = page.decode(raw, index, jpegtables=page.jpegtables)
        except Exception as e:
            name = getattr(page.compression, "name", page.compression)
            if _COMPRESSION_NEEDS_CODECS in str(e):
                raise ValueError(f"{self.path}: {name} compression (predictor {page.predictor}) needs the optional "
                                 "package imagecodecs: pip install imagecodecs") from e
            raise ValueError(f"{self.path}: cannot decode segment {index} ({name}: {type(e).__name__}: {e})") from e
        seg = np.asarray(seg)[0]  # (depth=1, rows, cols, samples) -> (rows, cols, samples)
        self._cache[key] = seg
        self._cache_bytes += seg.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return seg

    def _read_page(self, page, y, x, h, w) -> np.ndarray:
        spp, planar = page.samplesperpixel, page.planarconfig == 2
        nplanes, samples = (spp, 1) if planar else (1, spp)
        out = np.empty((h, w, spp), self.dtype)
        itemsize = self.dtype.itemsize
        direct = page.compression == 1 and page.predictor == 1 and not page.is_tiled and page.bitspersample % 8 == 0
        if page.is_tiled:
            th, tw = page.tilelength, page.tilewidth
            per_plane = math.ceil(self.height / th) * math.ceil(self.width / tw)
            across = math.ceil(self.width / tw)
        else:
            th, tw = min(page.rowsperstrip, self.height), self.width
            per_plane, across = math.ceil(self.height / th), 1
        dtype = self.dtype.newbyteorder(self._tif.byteorder)
        for s in range(nplanes):
            if direct:  # one pread per row: no strip is decoded whole
                row_bytes = self.width * samples * itemsize
                for r in range(y, y + h):
                    i = s * per_plane + r // th
                    off = page.dataoffsets[i] + (r % th) * row_bytes + x * samples * itemsize
                    row = np.frombuffer(_pread(self._fd, off, w * samples * itemsize, self.path), dtype)
                    out[r - y, :, s:s + samples] = row.reshape(w, samples)
                continue
            for ty in range(y // th, (y + h - 1) // th + 1):
                for tx in range(x // tw, (x + w - 1) // tw + 1):
                    seg = self._decode_segment(page, s * per_plane + ty * across + tx)  # (th, tw, samples)
                    y0, x0 = max(y, ty * th), max(x, tx * tw)
                    y1, x1 = min(y + h, (ty + 1) * th), min(x + w, (tx + 1) * tw)
                    out[y0 - y:y1 - y, x0 - x:x1 - x, s:s + samples] = \
                        seg[y0 - ty * th:y1 - ty * th, x0 - tx * tw:x1 - tx * tw]
        return out

    def _read(self, y, x, h, w):
        parts = [self._read_page(p, y, x, h, w) for p in self._pages]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)  # (h, w, C)

    def close(self):
        os.close(self._fd)
        self._tif.close()


def open_raster(path: str | Path, in_channels: int, nodata: float | None = None, cache_mb: float = 64) -> Raster:
    """Open a scene for windowed reading and check it against the model.

    Args:
        path: ``.tif/.tiff`` (tifffile), ``.npy`` or ``.png/.jpg/.jpeg``.
        in_channels: bands the model expects (``data.in_channels``); an extra alpha band is allowed.
        nodata: overrides the file's GDAL_NODATA tag (a pixel whose bands all equal it is nodata).
        cache_mb: decoded TIFF segments kept in memory.

    Returns:
        A :class:`Raster`.

    Raises:
        ValueError: naming the file: unknown extension, unreadable or truncated file, a compression that needs
            imagecodecs, or a band count other than ``in_channels``.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in SCENE_EXTS:
        raise ValueError(f"{path}: not a scene file (expected one of {', '.join(SCENE_EXTS)})")
    raster = (_TiffRaster(path, cache_mb) if ext in (".tif", ".tiff") else _NpyRaster(path) if ext == ".npy"
              else _PillowRaster(path))
    if raster.bands != in_channels:
        raster.close()
        raise ValueError(f"{path}: has {raster.bands} band(s){' plus alpha' if raster.alpha else ''}, the model "
                         f"expects {in_channels} (data.in_channels), in the order it was trained on")
    if nodata is not None:
        raster.nodata, raster.nodata_source = float(nodata), "--nodata"
    return raster


# --------------------------------------------------------------------------- tiled prediction


def hann_weight(h: int, w: int) -> torch.Tensor:
    """``(h, w)`` float32 product of two periodic Hann windows shifted by half a pixel: ``sin^2(pi (i + 0.5) / n)``,
    largest at the centre and positive at the borders (a pixel seen by one window keeps its logits)."""
    wy = torch.sin(math.pi * (torch.arange(h, dtype=torch.float64) + 0.5) / h) ** 2
    wx = torch.sin(math.pi * (torch.arange(w, dtype=torch.float64) + 0.5) / w) ** 2
    return (wy[:, None] * wx[None, :]).float()  # (h, w)


class TiledPredictor:
    """Overlapping-window prediction of a :class:`Raster`, yielding finished blocks of rows.

    Windows of ``crop_size`` (clipped to the scene) start every ``stride`` (:func:`window_starts`, mmseg's
    rule: the last window ends at the border). Each window is read, transformed by ``transform`` (per-pixel
    test transforms, e.g. Normalize), its nodata pixels set to 0, and run through ``model`` (padded to
    ``size_divisor``) in batches of ``batch_size``; its logits are added with weight 1 (``blend="mean"``:
    mmseg ``slide_inference``, the same numbers as ``iceseg.inference.slide_logits``) or :func:`hann_weight`
    (``"hann"``). Windows without a valid pixel are skipped. Rows above the next window row are final and are
    yielded as ``(y0, logits (K', h, W) float32, valid (h, W) bool)``; K' = 1 is a sigmoid logit.

    Memory: ``K' + 1`` float32 planes of ``crop_h x W`` plus one batch of windows.
    """

    def __init__(self, model, crop_size, stride, size_divisor: int = 1, blend: str = "hann", batch_size: int = 1,
                 transform=None, device=None, autocast=None, channels_last: bool = False):
        if blend not in ("mean", "hann"):
            raise ValueError(f"blend must be 'mean' or 'hann', not {blend!r}")
        self.model, self.crop_size, self.stride, self.size_divisor = model, tuple(crop_size), tuple(stride), size_divisor
        self.blend, self.batch_size, self.transform = blend, max(1, int(batch_size)), transform
        self.device = device if device is not None else torch.device("cpu")
        self.autocast, self.channels_last = autocast, channels_last
        self.windows_done = self.windows_skipped = 0

    def _grid(self, raster: Raster) -> tuple[int, int, list[int], list[int]]:
        """Window height and width (the crop clipped to the scene) and the window starts along y and x."""
        ch, cw = min(self.crop_size[0], raster.height), min(self.crop_size[1], raster.width)
        return ch, cw, window_starts(raster.height, ch, self.stride[0]), window_starts(raster.width, cw, self.stride[1])

    def windows(self, raster: Raster) -> list[tuple[int, int, int, int]]:
        """``(y, x, h, w)`` of every window, row by row."""
        ch, cw, ys, xs = self._grid(raster)
        return [(y, x, ch, cw) for y in ys for x in xs]

    def _run(self, batch: list) -> list[torch.Tensor]:
        x = torch.stack([t for t, _ in batch]).to(self.device)  # (B, C, h, w)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits = _forward_padded(self.model, x, self.size_divisor)  # (B, K', h, w)
        return list(logits.float().cpu())

    def __call__(self, raster: Raster, on_window=None):
        """Yield ``(y0, logits, valid)`` row blocks top to bottom; ``on_window(window, img, valid)`` sees each read.

        ``windows_done`` / ``windows_skipped`` count this call's windows run and left out."""
        H, W = raster.height, raster.width
        ch, cw, ys, xs = self._grid(raster)
        weight = torch.ones(ch, cw) if self.blend == "mean" else hann_weight(ch, cw)  # (h, w)
        acc = wsum = None  # (K', ch, W) and (ch, W) sums from rows top on, made at the first model output
        valid = np.zeros((ch, W), bool)
        top = 0
        self.windows_done = self.windows_skipped = 0
        for y in ys:
            if y > top:  # rows [top, y) are final: no later window reaches them
                yield from self._flush(acc, wsum, valid, top, y - top, W)
                keep = top + ch - y
                if acc is not None:
                    acc[:, :keep], acc[:, keep:] = acc[:, y - top:].clone(), 0
                    wsum[:keep], wsum[keep:] = wsum[y - top:].clone(), 0
                valid[:keep], valid[keep:] = valid[y - top:].copy(), False
                top = y
            pending = []
            for x in xs:
                win = (y, x, ch, cw)
                img, ok = raster.read(*win)
                if on_window is not None:
                    on_window(win, img, ok)
                valid[win[0] - top:win[0] - top + win[2], win[1]:win[1] + win[3]] = ok
                if not ok.any():
                    self.windows_skipped += 1
                    continue
                if self.transform is not None:
                    img, _ = self.transform(img, None, None)
                img = np.where(ok[..., None], np.asarray(img, np.float32), np.float32(0))
                pending.append((torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), win))  # (C, h, w)
                if len(pending) == self.batch_size:
                    acc, wsum = self._add(pending, acc, wsum, weight, top, W)
                    pending = []
            if pending:
                acc, wsum = self._add(pending, acc, wsum, weight, top, W)
        yield from self._flush(acc, wsum, valid, top, H - top, W)

    def _add(self, pending, acc, wsum, weight, top, W):
        for logit, (_, (y, x, h, w)) in zip(self._run(pending), pending, strict=True):
            if acc is None:
                acc, wsum = torch.zeros(logit.shape[0], weight.shape[0], W), torch.zeros(weight.shape[0], W)
            acc[:, y - top:y - top + h, x:x + w] += logit * weight
            wsum[y - top:y - top + h, x:x + w] += weight
            self.windows_done += 1
        return acc, wsum

    @staticmethod
    def _flush(acc, wsum, valid, top, n, W):
        for r in range(0, n, 64):  # hand out at most 64 rows at a time
            m = min(64, n - r)
            if acc is None:  # no window so far held a valid pixel
                yield top + r, torch.zeros(1, m, W), np.zeros((m, W), bool)
                continue
            seen = wsum[r:r + m] > 0
            logits = acc[:, r:r + m] / torch.where(seen, wsum[r:r + m], torch.ones(()))  # (K', m, W)
            yield top + r, logits, valid[r:r + m] & seen.numpy()


def logits_to_classes(logits: torch.Tensor) -> torch.Tensor:
    """``(K', h, w)`` logits -> ``(h, w)`` uint8 classes (K' = 1: ``logit > 0``, i.e. p > 0.5 strictly)."""
    if logits.shape[0] == 1:
        return (logits[0] > 0).to(torch.uint8)
    return logits.argmax(0).to(torch.uint8)


# --------------------------------------------------------------------------- writing


def write_geotiff(path: Path, blocks, height: int, width: int, bands: int, geo: dict, nodata: int | None,
                  tile: int = 256) -> None:
    """Write a uint8 ``(H, W)`` or ``(H, W, bands)`` GeoTIFF atomically from row blocks, tiled and zlib-compressed.

    Args:
        blocks: iterator of ``(h, W[, bands])`` uint8 arrays, top to bottom, each ``tile`` rows (the last fewer).
        geo: ``{code: (dtype, count, value)}`` geo tags to copy (:attr:`Raster.geo`); nothing else is copied.
        nodata: written as the GDAL_NODATA tag (42113), or None for none.

    The file appears under ``path`` only when complete (``<path>.tmp`` then ``os.replace``); it is a BigTIFF
    when the pixels might not fit the 32-bit offsets of a classic TIFF.
    """
    import tifffile

    def tiles():
        for block in blocks:
            for x in range(0, width, tile):
                yield np.ascontiguousarray(block[:, x:x + tile])

    extratags = [(code, dtype, count, value, True) for code, (dtype, count, value) in sorted(geo.items())]
    if nodata is not None:
        extratags.append((NODATA_TAG, 2, 0, str(nodata), True))  # ASCII
    shape = (height, width) if bands == 1 else (height, width, bands)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tifffile.imwrite(tmp, tiles(), shape=shape, dtype=np.uint8, tile=(tile, tile), compression="zlib",
                         photometric="minisblack", planarconfig="contig" if bands > 1 else None,
                         extratags=extratags, metadata=None, bigtiff=height * width * bands >= 2**32 - 2**25)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
