"""Predict class maps and coverage figures for unlabelled scenes: tiled, georeferenced, bounded memory.

    python predict.py --config icesegnet_yrcc2 --checkpoint best.pt scenes/*.tif --out preds/
    torchrun --standalone --nproc_per_node=2 predict.py --config unetpp_glacier --checkpoint best.pt tiles/ --out preds/

Inputs: GeoTIFFs (uint8/uint16/int16/float32, strips or tiles, contiguous or planar), ``.npy`` rasters
``(H, W[, C])``, ``.png/.jpg`` images, or folders of them; the bands must be those the config was trained
on, in the same order, and the config's test pipeline (per-pixel transforms such as Normalize) is applied.
An AutoICE config (``eval.evaluator = "autoice"``) takes AI4Arctic ``*_prep.nc`` scenes instead.
Without ``--config`` the checkpoint's own config is used. ``--checkpoint`` also takes a ``.pt2`` program of
``dev/export.py`` (its weights and config inside; float32, CPU, windows padded to its multiple of 32). Scenes are cut into ``eval.crop_size`` windows
every ``eval.stride`` whose logits are blended (``--blend hann|mean``, default ``eval.blend``).

Per scene ``<stem>`` in ``--out``: ``<stem>_pred.tif`` (uint8 classes, 255 = nodata, the input's
georeferencing), ``<stem>_probs.tif`` with ``--probs`` (one uint8 band per class, probability x 255),
``<stem>_pred.png`` (colour map) and ``<stem>_overlay.png`` (colours over the image), both at most
``--preview`` pixels on the long side, and ``<stem>_coverage.json``; for all scenes ``coverage.json`` and
``coverage.csv``. An AutoICE scene ``<scene>_prep.nc`` gives ``<scene>_charts.nc`` (its SIC, SOD and FLOE
charts at 80 m in the challenge's submission layout, 255 = masked), ``<scene>_{SIC,SOD,FLOE}.png`` and
``<scene>_coverage.json``, and all AutoICE scenes together ``submission.nc``. Every file is written to a
temporary name and renamed when complete.

Nodata: ``--nodata V`` or the GeoTIFF's GDAL_NODATA tag (a pixel whose bands all equal it), NaN in any band,
or an alpha band equal to 0; in AutoICE scenes, HH = 0. Nodata pixels are 255 in the map and left out of the coverage; windows without
a valid pixel are not run. Other options: ``--batch-size N`` windows per forward, ``--amp none|bf16|fp16``,
``--skip-existing`` (resume a batch), ``--rgb-bands 2,1,0`` (overlay bands), ``--cache-mb`` (decoded TIFF
segments kept), and the ``--section.key=value`` overrides of train.py.
"""

import argparse
import csv
import io
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import configs
from iceseg import dist
from iceseg.autoice.data import (
    CHART_CLASS_NAMES,
    CHARTS,
    MASK,
    NetCDFWriter,
    SceneRaster,
    merge_submissions,
    write_submission_chart,
)
from iceseg.autoice.evaluate import (
    StackedTasks,
    autoice_tasks,
    chart_picture,
    task_values,
    to_charts,
)
from iceseg.checkpoint import load_checkpoint, unwrap_state_dict
from iceseg.evaluation import colourise, default_palette, with_legend
from iceseg.export import load_program
from iceseg.inference import autocast_dtype
from iceseg.scene import (
    OUT_NODATA,
    SCENE_EXTS,
    TiledPredictor,
    logits_to_classes,
    open_raster,
    pixel_area_m2,
    write_geotiff,
)
from iceseg.segmentor import build_inference_model
from iceseg.transforms import build_transforms

PIXELWISE = ("Normalize",)  # test transforms that keep the geometry (a scene is never resized or padded)
ROWS = 256  # output tile size: rows per block of the second pass
AUTOICE_SUFFIX = "_prep.nc"  # AI4Arctic ready-to-train scenes (their *_prep_reference.nc charts are not inputs)


def scene_stem(p: Path) -> str:
    """Output name stem: the file stem, or the AutoICE scene name of ``<scene>_prep.nc``."""
    return p.name[:-len(AUTOICE_SUFFIX)] if p.name.endswith(AUTOICE_SUFFIX) else p.stem


def is_scene_file(p: Path) -> bool:
    """An image/raster file of ``SCENE_EXTS`` or an AutoICE ``*_prep.nc`` scene."""
    return p.suffix.lower() in SCENE_EXTS or p.name.endswith(AUTOICE_SUFFIX)


def list_scenes(inputs: list[str]) -> list[Path]:
    """Files and folders (their scene files, sorted, not recursive) -> scene paths; raises on a missing path,
    an empty folder, a non-scene file or two scenes with one stem (their outputs would collide)."""
    exts = ", ".join((*SCENE_EXTS, AUTOICE_SUFFIX))
    scenes = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if is_scene_file(f) and f.is_file())
            if not found:
                raise ValueError(f"{p}: folder holds no scene files ({exts})")
            scenes += found
        elif p.is_file():
            if not is_scene_file(p):
                raise ValueError(f"{p}: not a scene file (expected one of {exts})")
            scenes.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    stems = {}
    for p in scenes:
        stem = scene_stem(p)
        if stem in stems:
            raise ValueError(f"{p} and {stems[stem]} share the stem {stem!r}: their outputs would collide")
        stems[stem] = p
    return scenes


def check_out_dir(out: Path) -> None:
    """Create ``out`` and prove it is writable; raises OSError naming it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"{out}: output folder cannot be written ({e.strerror or e})") from e


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``<path>.tmp`` and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def coverage(path: Path, raster, counts: np.ndarray, names: list[str], ice: list[int], river: list[int]) -> dict:
    """The coverage record of one scene (``coverage.json``'s ``scenes`` entries): strict JSON, no NaN.

    ``counts``: ``(K,)`` pixels per class over valid pixels. ``fraction`` = pixels / valid pixels (None when no
    pixel is valid), ``area_km2`` = pixels x pixel area / 1e6 (None without a projected pixel size).
    """
    valid = int(counts.sum())
    area, note = pixel_area_m2({code: value for code, (_, _, value) in raster.geo.items()})

    def entry(n: int) -> dict:
        return {"pixels": n, "fraction": n / valid if valid else None,
                "area_km2": n * area / 1e6 if area is not None else None}

    rec = {"file": str(path), "height": raster.height, "width": raster.width, "valid_pixels": valid,
           "nodata_pixels": raster.height * raster.width - valid, "pixel_area_m2": area,
           "area_note": note, "nodata_source": raster.nodata_source,
           "classes": [{"name": n, "index": i, **entry(int(counts[i]))} for i, n in enumerate(names)]}
    if ice and river:
        n_ice, n_river = int(counts[ice].sum()), int(counts[river].sum())
        rec["totals"] = {"ice": {**entry(n_ice), "fraction_of_river": n_ice / n_river if n_river else None},
                         "river": entry(n_river)}
    return rec


def write_reports(out: Path, records: list[dict]) -> None:
    """``coverage.json`` (``{"scenes": [...]}``) and ``coverage.csv`` (one row per scene and class or total)."""
    atomic_write(out / "coverage.json", json.dumps({"scenes": records}, indent=2, allow_nan=False).encode())
    buf = io.StringIO()
    fields = ["file", "height", "width", "valid_pixels", "pixel_area_m2", "class", "index", "pixels", "fraction",
              "area_km2", "fraction_of_river", "area_note"]
    w = csv.DictWriter(buf, fields, lineterminator="\n")
    w.writeheader()
    for r in records:
        base = {k: r[k] for k in ("file", "height", "width", "valid_pixels", "pixel_area_m2", "area_note")}
        for c in r["classes"]:
            w.writerow({**base, "class": c["name"], **{k: c[k] for k in ("index", "pixels", "fraction", "area_km2")}})
        for name, t in r.get("totals", {}).items():
            w.writerow({**base, "class": f"total {name}", **t})
    atomic_write(out / "coverage.csv", buf.getvalue().encode())


def stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` float bands -> uint8 with a 2-98 % percentile stretch per band over valid pixels."""
    out = np.zeros(rgb.shape, np.uint8)
    if valid.any():
        lo, hi = np.percentile(rgb[valid], [2, 98], axis=0)  # (3,) each
        scaled = np.nan_to_num((rgb - lo) / np.maximum(hi - lo, 1e-12))  # NaN (nodata) -> 0
        out = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return out


def open_scene(path: Path, cfg, args):
    """The scene as a Raster: a ``SceneRaster`` for AutoICE configs, else :func:`open_raster`.

    Raises:
        ValueError: naming the file: a scene of the other kind than the config predicts, a bad band count, or
            what the readers raise.
    """
    autoice = cfg.eval.evaluator == "autoice"
    if path.name.endswith(AUTOICE_SUFFIX) != autoice:
        raise ValueError(f"{path}: an AutoICE scene, but config {cfg.name!r} is not an AutoICE config" if not autoice
                         else f"{path}: config {cfg.name!r} is an AutoICE config: it predicts {AUTOICE_SUFFIX} scenes")
    if not autoice:
        return open_raster(path, cfg.data.in_channels, args.nodata, args.cache_mb)
    raster = SceneRaster(path, int(cfg.data.kwargs.get("downsample", 1)))
    if raster.bands != cfg.data.in_channels:
        raise ValueError(f"{path}: gives {raster.bands} AutoICE channels, the model expects {cfg.data.in_channels} "
                         "(data.in_channels)")
    return raster


class Progress:
    """A scene's progress line every 10 s (windows done of total, empty ones, ETA) and its closing line."""

    def __init__(self, stem: str, predictor, total: int, log):
        self.stem, self.predictor, self.total, self.log = stem, predictor, total, log
        self.t0 = self.last = time.time()

    def tick(self) -> None:
        p, now = self.predictor, time.time()
        if now - self.last > 10:
            done, el = p.windows_done + p.windows_skipped, now - self.t0
            self.log(f"{self.stem}: {done}/{self.total} windows ({p.windows_skipped} empty), {el:.0f} s, "
                     f"ETA {el / max(done, 1) * (self.total - done):.0f} s")
            self.last = now

    def finish(self, H: int, W: int, valid: int) -> None:
        el = time.time() - self.t0
        self.log(f"{self.stem}: {H}x{W} px, {self.predictor.windows_done} windows run, {self.predictor.windows_skipped} "
                 f"empty, {el:.1f} s ({H * W / 1e6 / max(el, 1e-9):.2f} Mpx/s), valid {valid} px"
                 + ("" if valid else " -- warning: the scene is all nodata"))


def check_program(path, meta: dict, crop_size, amp: str, device: str) -> None:
    """Refuse what an exported program (``iceseg.export``) cannot run: autocast (it was traced in float32), a
    CUDA device (it was traced on the CPU), and for a fixed-size program a crop of another size. Raises
    ValueError naming ``path``."""
    if amp != "none":
        raise ValueError(f"{path}: an exported program runs in float32, as it was traced; drop --amp {amp} "
                         "(or eval.amp), or predict from the train.py checkpoint")
    if device.startswith("cuda"):
        raise ValueError(f"{path}: an exported program runs on the CPU here (it was traced there); "
                         "pass --train.device=cpu or predict from the train.py checkpoint")
    if meta["input_hw"] is not None and list(crop_size) != list(meta["input_hw"]):
        raise ValueError(f"{path}: exported for {tuple(meta['input_hw'])} windows only; eval.crop_size is "
                         f"{tuple(crop_size)}")


def check_window(path: Path, raster, crop_size, size_divisor: int, meta: dict) -> None:
    """With an exported program: the scene's windows (the crop clipped to the scene, padded to
    ``size_divisor``) must be sizes the program accepts (at least ``min_hw``; exactly ``input_hw`` for a
    fixed-size program). Raises ValueError naming the scene."""
    h, w = (-(-min(c, n) // size_divisor) * size_divisor
            for c, n in zip(crop_size, (raster.height, raster.width), strict=True))
    fixed, lo = meta["input_hw"], meta["min_hw"]
    if fixed and [h, w] != list(fixed):
        raise ValueError(f"{path}: its {h}x{w} windows are not the {fixed[0]}x{fixed[1]} the exported program was "
                         "traced for; predict it from the train.py checkpoint")
    if h < lo[0] or w < lo[1]:
        raise ValueError(f"{path}: its {h}x{w} windows are smaller than the exported program accepts "
                         f"({lo[0]}x{lo[1]} or more); predict it from the train.py checkpoint")


def predict_scene(path: Path, args, cfg, predictor, out: Path, log) -> dict:
    """Predict one scene and write its files; returns its coverage record."""
    E = cfg.eval
    K = max(cfg.model.num_classes, 2)
    names = list(E.class_names) or [f"class {i}" for i in range(K)]
    palette = np.array(E.palette, np.uint8) if E.palette else default_palette(K)
    raster = open_scene(path, cfg, args)
    stem, H, W = path.stem, raster.height, raster.width
    f = max(1, math.ceil(max(H, W) / args.preview))
    ph, pw = -(-H // f), -(-W // f)
    rgb_bands = args.rgb_bands if args.rgb_bands else list(range(min(3, raster.bands)))
    preview_img = np.zeros((ph, pw, len(rgb_bands)), np.float32)

    def on_window(win, img, ok):  # overlay preview: every f-th pixel of the windows as they are read
        y, x, h, w = win
        rows, cols = np.arange(-(-y // f) * f, y + h, f), np.arange(-(-x // f) * f, x + w, f)
        preview_img[(rows // f)[:, None], (cols // f)[None, :]] = img[(rows - y)[:, None], (cols - x)[None, :]][
            ..., rgb_bands]

    raw_cls = out / f".{stem}_pred.raw.tmp"
    raw_probs = out / f".{stem}_probs.raw.tmp"
    progress = Progress(stem, predictor, len(predictor.windows(raster)), log)
    try:
        with open(raw_cls, "wb") as fc, (open(raw_probs, "wb") if args.probs else open(os.devnull, "wb")) as fp:
            for _, logits, valid in predictor(raster, on_window):
                cls = logits_to_classes(logits).numpy()
                cls[~valid] = OUT_NODATA
                fc.write(cls.tobytes())
                if args.probs:
                    p = torch.sigmoid(logits) if logits.shape[0] == 1 else logits.softmax(0)
                    p = torch.cat([1 - p, p]) if p.shape[0] == 1 else p  # (K, h, W)
                    if p.shape[0] != K:  # a scene whose windows were all empty: no model output at all
                        p = torch.zeros(K, *p.shape[1:])
                    q = (p * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (h, W, K)
                    q[~valid] = 0
                    fp.write(q.tobytes())
                progress.tick()
        counts = np.zeros(256, np.int64)
        cls_preview = np.full((ph, pw), OUT_NODATA, np.uint8)

        def class_blocks():
            with open(raw_cls, "rb") as fc:
                for y in range(0, H, ROWS):
                    block = np.frombuffer(fc.read(min(ROWS, H - y) * W), np.uint8).reshape(-1, W)
                    counts[:] += np.bincount(block.ravel(), minlength=256)
                    rows = np.arange(-(-y // f) * f, y + len(block), f)
                    cls_preview[rows // f] = block[rows - y][:, ::f]
                    yield block

        write_geotiff(out / f"{stem}_pred.tif", class_blocks(), H, W, 1, raster.geo, OUT_NODATA)
        if args.probs:
            def prob_blocks():
                with open(raw_probs, "rb") as fp:
                    for y in range(0, H, ROWS):
                        yield np.frombuffer(fp.read(min(ROWS, H - y) * W * K), np.uint8).reshape(-1, W, K)

            write_geotiff(out / f"{stem}_probs.tif", prob_blocks(), H, W, K, raster.geo, None)
    finally:
        raster.close()
        for tmp in (raw_cls, raw_probs):
            tmp.unlink(missing_ok=True)
    ok = cls_preview != OUT_NODATA
    colour = colourise(cls_preview, palette)
    colour[~ok] = 0
    base = stretch(preview_img[..., :3] if preview_img.shape[-1] >= 3 else np.repeat(preview_img[..., :1], 3, -1), ok)
    overlay = np.where(ok[..., None], (0.5 * base + 0.5 * colour).astype(np.uint8), base)
    shown = ", ".join(map(str, rgb_bands)) + (" (grey)" if len(rgb_bands) == 1 else "")
    nodata = "; black: nodata" if not ok.all() else ""
    for name, arr in (("pred", colour), ("overlay", overlay)):
        note = (f"image bands {shown} as RGB, each stretched{nodata}" if name == "overlay" else nodata[2:])
        buf = io.BytesIO()
        Image.fromarray(with_legend(arr, names, palette[:len(names)], note)).save(buf, format="PNG")
        atomic_write(out / f"{stem}_{name}.png", buf.getvalue())
    rec = coverage(path, raster, counts[:K], names, list(cfg.eval.ice_classes), list(cfg.eval.river_classes))
    atomic_write(out / f"{stem}_coverage.json", json.dumps(rec, indent=2, allow_nan=False).encode())
    progress.finish(H, W, rec["valid_pixels"])
    return rec


def autoice_coverage(path: Path, raster, counts: dict, tasks: dict) -> dict:
    """The coverage record of an AutoICE scene: per chart and class at 80 m (``classes`` entries carry
    ``chart``), total ice (SIC >= 10 %) and the SIC-weighted ice area; the pixel area is the file's
    ``pixel_spacing`` squared. ``counts``: ``{chart: (256,) pixels per value}``, 255 = masked."""
    H, W = raster.scene.H, raster.scene.W
    valid = H * W - int(counts["SIC"][MASK])
    area = raster.pixel_spacing ** 2 if raster.pixel_spacing else None
    note = ("pixel_spacing attribute of the file, squared; the SAR grid is not map-projected, so areas are "
            "approximate" if area else "the file has no pixel_spacing attribute: no areas")

    def entry(n):
        return {"pixels": n, "fraction": n / valid if valid else None,
                "area_km2": n * area / 1e6 if area is not None else None}

    classes = []
    for c in CHARTS:
        names = CHART_CLASS_NAMES[c]
        for i in range(11 if tasks[c] == 1 else tasks[c]):
            label = names[i] if i < len(names) else "mask slot"  # the seed's extra output
            classes.append({"name": f"{c} {label}", "chart": c, "index": i, **entry(int(counts[c][i]))})
    sic = counts["SIC"][:11].astype(np.float64)
    weighted = float((sic * np.arange(11) / 10).sum())  # pixels x concentration
    return {"file": str(path), "height": H, "width": W, "valid_pixels": valid, "nodata_pixels": H * W - valid,
            "pixel_area_m2": area, "area_note": note, "nodata_source": raster.nodata_source, "classes": classes,
            "totals": {"ice": entry(int(sic[1:].sum())),
                       "ice_sic_weighted": {"pixels": None, "fraction": weighted / valid if valid else None,
                                            "area_km2": weighted * area / 1e6 if area is not None else None}}}


def predict_autoice_scene(path: Path, args, cfg, predictor, out: Path, log) -> dict:
    """Predict the SIC, SOD and FLOE charts of one AutoICE scene and write its files; returns its coverage record.

    Window outputs on the input grid (every ``data.kwargs.downsample``-th pixel) are blended, turned into chart
    classes (SIC rounded and clipped to 0..10) and replicated back to the 80 m grid one band of rows at a time,
    as the AutoICE evaluator writes its submission; masked (HH = 0) pixels are 255.
    """
    tasks = autoice_tasks(cfg)
    raster = open_scene(path, cfg, args)
    name, H, W, f = raster.scene.name, raster.scene.H, raster.scene.W, raster.scene.f
    ff = max(1, math.ceil(max(H, W) / args.preview))
    previews = {c: np.full((-(-H // ff), -(-W // ff)), MASK, np.uint8) for c in CHARTS}
    counts = {c: np.zeros(256, np.int64) for c in CHARTS}
    cols = np.arange(W) // f  # input-grid column of each 80 m column
    progress = Progress(name, predictor, len(predictor.windows(raster)), log)
    tmp = out / f".{name}_charts.nc.tmp"
    try:
        with NetCDFWriter(tmp) as w:
            charts = {c: write_submission_chart(w, name, c, (H, W)) for c in CHARTS}
            for y0, logits, valid in predictor(raster):
                r0, r1 = y0 * f, min((y0 + len(valid)) * f, H)  # 80 m rows of these input rows
                rows = np.arange(r0, r1) // f - y0
                ok = valid[rows][:, cols]  # (r1 - r0, W)
                values = to_charts(task_values(logits, tasks), tasks) if valid.any() else None
                keep = np.arange(-(-r0 // ff) * ff, r1, ff)  # 80 m rows of the previews
                for c in CHARTS:
                    block = np.where(ok, values[c][rows][:, cols], MASK).astype(np.uint8) if values else \
                        np.full(ok.shape, MASK, np.uint8)
                    charts[c][r0:r1] = block
                    counts[c] += np.bincount(block.ravel(), minlength=256)
                    previews[c][keep // ff] = block[keep - r0][:, ::ff]
                progress.tick()
        os.replace(tmp, out / f"{name}_charts.nc")
    finally:
        raster.close()
        tmp.unlink(missing_ok=True)
    for c, img in previews.items():
        rgb = chart_picture(c, img)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        atomic_write(out / f"{name}_{c}.png", buf.getvalue())
    rec = autoice_coverage(path, raster, counts, tasks)
    atomic_write(out / f"{name}_coverage.json", json.dumps(rec, indent=2, allow_nan=False).encode())
    progress.finish(H, W, rec["valid_pixels"])
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="scene files or folders")
    parser.add_argument("--config", default=None, help="named config (default: the checkpoint's own)")
    parser.add_argument("--checkpoint", required=True, help="train.py checkpoint, or a .pt2 of dev/export.py")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--nodata", type=float, default=None, help="input nodata value (overrides the file's)")
    parser.add_argument("--probs", action="store_true", help="also write per-class probabilities")
    parser.add_argument("--blend", choices=["hann", "mean"], default=None, help="default: eval.blend")
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None,
                        help="autocast of the model (default: eval.amp, or none when it is '')")
    parser.add_argument("--skip-existing", action="store_true", help="keep scenes whose outputs exist")
    parser.add_argument("--rgb-bands", default="", help="band indices of the overlay's R,G,B (default 0,1,2)")
    parser.add_argument("--preview", type=int, default=2048, help="long side of the PNG previews in pixels")
    parser.add_argument("--cache-mb", type=float, default=64, help="decoded TIFF segments kept in memory")
    args, overrides = parser.parse_known_args()
    args.rgb_bands = [int(b) for b in args.rgb_bands.split(",")] if args.rgb_bands else []

    program = None
    if str(args.checkpoint).endswith(".pt2"):  # a torch.export program of dev/export.py: weights + config
        program, stored_cfg, export_meta = load_program(args.checkpoint)
        ckpt = {"config": stored_cfg}
    else:
        ckpt = load_checkpoint(args.checkpoint, map_location="cpu", fallback=False)
    if args.config:
        cfg = configs.get_config(args.config)
    elif isinstance(ckpt.get("config"), dict):
        cfg = configs.from_dict(ckpt["config"])
    else:
        raise ValueError(f"{args.checkpoint}: stores no config; give --config NAME")
    for o in configs.apply_overrides(cfg, overrides):
        dist.print0(f"override: {o}")
    D, E = cfg.data, cfg.eval
    stored = ckpt.get("config", {})
    for key, ours in (("model.name", cfg.model.name), ("model.num_classes", cfg.model.num_classes),
                      ("data.in_channels", D.in_channels)):
        section, field = key.split(".")
        theirs = stored.get(section, {}).get(field, ours) if isinstance(stored, dict) else ours
        if theirs != ours:
            raise ValueError(f"{args.checkpoint} was trained with config {stored.get('name')!r} ({key} = {theirs!r}); "
                             f"config {cfg.name!r} has {ours!r}: pass --config {stored.get('name')}")
    bad = [t.get("type") for t in D.test_pipeline if t.get("type") not in PIXELWISE]
    if bad:
        raise ValueError(f"config {cfg.name!r}: data.test_pipeline has {bad}; predict.py applies per-pixel "
                         f"transforms only ({', '.join(PIXELWISE)}): scenes are never resized or padded")
    if any(s > c for s, c in zip(E.stride, E.crop_size, strict=True)):
        raise ValueError(f"eval.stride {tuple(E.stride)} is larger than eval.crop_size {tuple(E.crop_size)}: "
                         "pixels between windows would get no prediction")
    if args.rgb_bands and max(args.rgb_bands) >= D.in_channels:
        raise ValueError(f"--rgb-bands {args.rgb_bands}: the model has {D.in_channels} bands")
    autoice = E.evaluator == "autoice"
    if autoice and args.probs:
        raise ValueError(f"--probs: config {cfg.name!r} predicts AutoICE charts (SIC is a regression): no "
                         "class probabilities to write")
    if autoice and args.nodata is not None:
        raise ValueError(f"--nodata: config {cfg.name!r} predicts AutoICE scenes, whose nodata is HH = 0 (the "
                         "ready-to-train mask value)")
    scenes = list_scenes(args.inputs)
    out = Path(args.out)
    check_out_dir(out)
    size_divisor = E.size_divisor
    amp_name = args.amp or E.amp or "none"  # --amp, else eval.amp (no autocast when "")
    if program is not None:
        check_program(args.checkpoint, export_meta, E.crop_size, amp_name, cfg.train.device)
        size_divisor = math.lcm(size_divisor, export_meta["multiple"])
    problems = []
    for path in scenes:  # headers of every scene first: all bad files reported at once, before any model runs
        try:
            raster = open_scene(path, cfg, args)
            raster.close()
            if program is not None:
                check_window(path, raster, E.crop_size, size_divisor, export_meta)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ValueError("\n".join(problems) if len(problems) == 1 else
                         f"{len(problems)} of {len(scenes)} scenes cannot be read:\n  " + "\n  ".join(problems))

    rank, world, device = dist.init_distributed("cpu" if program is not None else cfg.train.device)
    amp = autocast_dtype(amp_name, device)
    if program is not None:
        model = program
    else:
        model = build_inference_model(cfg, unwrap_state_dict(ckpt), device, str(args.checkpoint),
                                      ckpt.get("config"), amp)  # bf16/fp16 weights under that autocast
    if E.resize:
        dist.print0(f"note: eval.resize {tuple(E.resize)} resizes whole {cfg.data.dataset} images in test.py; "
                    "predict.py runs at the scene's own pixel size")
    if autoice:
        model = StackedTasks(model, autoice_tasks(cfg))
    predictor = TiledPredictor(model, E.crop_size, E.stride, size_divisor, args.blend or E.blend, args.batch_size,
                               build_transforms(D.test_pipeline), device, amp,
                               cfg.train.channels_last and program is None)

    def log(msg):
        print(f"[rank {rank}] {msg}" if world > 1 else msg, flush=True)

    failed = []
    for i in range(rank, len(scenes), world):
        path, stem = scenes[i], scene_stem(scenes[i])
        if args.skip_existing and all((out / f"{stem}{s}").is_file()
                                      for s in ("_charts.nc" if autoice else "_pred.tif", "_coverage.json")):
            log(f"{stem}: outputs exist, skipped")
            continue
        try:
            (predict_autoice_scene if autoice else predict_scene)(path, args, cfg, predictor, out, log)
        except (ValueError, OSError) as e:
            log(f"error: {e}")
            failed.append(str(path))
    dist.barrier()
    if rank == 0:
        records = []
        for path in scenes:
            side = out / f"{scene_stem(path)}_coverage.json"
            if side.is_file():
                records.append(json.loads(side.read_text()))
        write_reports(out, records)
        charts = [out / f"{scene_stem(p)}_charts.nc" for p in scenes]
        if autoice and any(c.is_file() for c in charts):
            merge_submissions(out / "submission.nc", [c for c in charts if c.is_file()])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{len(records)} of {len(scenes)} scenes in {out}/ (coverage.json, coverage.csv"
              f"{', submission.nc' if autoice else ''}); "
              f"peak RSS {peak:.0f} MiB")
    dist.cleanup()
    if failed:
        sys.exit(f"error: {len(failed)} scene(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ImportError, KeyError, ValueError, TypeError, RuntimeError, OSError) as e:
        dist.fail(f"error: {e.args[0] if e.args else e}")  # once per job; the process group destroyed first
