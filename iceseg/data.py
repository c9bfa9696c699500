"""Segmentation datasets: image/label folders paired by file stem, and the named datasets.

Images: ``.jpg/.jpeg/.png/.bmp`` (Pillow, read in their stored mode, EXIF orientation applied as
OpenCV/mmcv do; ``data.image_mode`` converts), multi-band ``.tif/.tiff`` (tifffile; the band axis
is the one the file declares) and ``.npy`` rasters ``(H, W, C)``; see :func:`read_image`.
Labels: single-channel index maps (``.png/.tif/.tiff/.npy``) or RGB colour PNGs decoded through a
palette (``class_dict.csv``: ``name,r,g,b``). Label processing follows mmseg's
``LoadAnnotations``: ``reduce_zero_label`` (0 -> ignore, v -> v-1) first, then ``label_map``.

Named datasets (``DATASETS``):
- ``NWPU_YRCC2``: river ice, 4 classes, ``train/ train_labels/ val/ val_labels/ [test/ test_labels/]``,
  raw label values 1..4 with 0 = unlabelled, spec icesegnet.md §6.1. The encoding is never assumed
  (§8.7): ``data.label_encoding`` "auto" reads the labels of every split once and picks the one of
  one_based (1..C, 0 = unlabelled), zero_based (0..C-1, 255 = unlabelled) or colour (RGB matched to
  the class names through ``class_dict.csv``) that fits every value; ambiguity is an error.
- ``NWPU_YRCC_EX``: 3 classes, same layout, also ``trainannot/ valannot/ testannot/`` (§6.2).
- ``Glacier``: ``masked_<id>.npy`` (H, W, 5) + ``<id>.tif`` masks (0/1 or 0/255) in one folder,
  with a seeded 80/20 split equal to the seed's ``train_test_split(random_state=42)`` on the sorted
  listing (spec unetpp_glacier_and_lossd.md §A2).
- ``Folder``: any ``<root>/<split>`` + ``<root>/<split>_labels`` folder pair.

Every problem found in the files raises an error that names the file and the problem; nothing is
skipped silently.
"""

import contextlib
import csv
import functools
import math
import multiprocessing
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from iceseg.inference import window_starts
from iceseg.transforms import build_transforms

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".npy")
LABEL_EXTS = (".png", ".tif", ".tiff", ".npy")

NWPU_YRCC2_CLASSES = ("land", "water", "shore ice", "streaming")
NWPU_YRCC2_PALETTE = ((0, 0, 0), (0, 255, 0), (0, 255, 255), (255, 0, 255))
NWPU_YRCC_CLASSES = ("others", "water", "shore ice")
NWPU_YRCC_PALETTE = ((0, 255, 255), (0, 255, 0), (255, 0, 255))
GLACIER_CLASSES = ("background", "glacier")

NWPU_HELP = (
    "The NWPU river-ice datasets are published by Northwestern Polytechnical University through Baidu "
    "Netdisk (link and extraction code in the ICENETv2 / IceSegNet READMEs); they cannot be downloaded "
    "automatically. To try the pipeline without them, run `python train.py --config demo` (synthetic "
    "river-ice scenes in the same layout).")


# --------------------------------------------------------------------------- file readers

TIFF_DAMAGE = ("offset", "reshape", "ByteCounts", "StripOffsets", "tag list", "circular reference")


def _read_tiff(path: Path) -> tuple[np.ndarray, str]:
    """Read the first series of a TIFF with tifffile, raising on damage tifffile only logs.

    Returns:
        ``(array, axes)``: the series as stored and its tifffile axes string, e.g. ``"YX"``,
        ``"YXS"`` (samples last: planar configuration contig), ``"SYX"`` (planar configuration
        separate) or ``"QYX"``/``"IYX"`` (a stack of single-band pages).

    Raises:
        ValueError: tifffile logged a structural problem (any message containing a word of
            ``TIFF_DAMAGE``; metadata warnings such as GeoTIFF tags are let through), quoted.
    """
    import logging

    import tifffile

    problems: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda rec: problems.append(rec.getMessage())
    logging.getLogger("tifffile").addHandler(handler)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr, axes = series.asarray(), series.axes
    finally:
        logging.getLogger("tifffile").removeHandler(handler)
    damage = [m for m in problems if any(w in m for w in TIFF_DAMAGE)]
    if damage:
        raise ValueError(f"truncated or corrupt TIFF: {damage[0]}")
    return arr, axes


def _load_array(path: Path, what: str, pil_read) -> tuple[np.ndarray, str]:
    """Read ``.npy`` (no pickles), ``.tif/.tiff`` (tifffile) or a Pillow image (through ``pil_read``).

    Returns:
        ``(array, layout)``: layout is ``"npy"``, the TIFF series axes, or the Pillow mode as stored.

    Raises:
        ValueError: the file cannot be read, naming it and ``what`` it was meant to be.
    """
    try:
        ext = path.suffix.lower()
        if ext == ".npy":
            return np.load(path, allow_pickle=False), "npy"
        if ext in (".tif", ".tiff"):
            return _read_tiff(path)
        with Image.open(path) as im:
            return np.asarray(pil_read(im)), im.mode
    except Exception as e:
        raise ValueError(f"{path}: unreadable or corrupt {what} ({type(e).__name__}: {e})") from e


IMAGE_MODES = ("", "RGB", "L")


def read_image(path: str | Path, in_channels: int | None = None, image_mode: str = "") -> np.ndarray:
    """Read an image or raster as ``(H, W, C)``, following the layout the file declares (no guessing).

    Layouts: ``.npy`` is always ``(H, W, C)`` (2-D: ``(H, W, 1)``), never transposed. ``.tif/.tiff``
    follows tifffile's series axes: samples last (``...S``, planar configuration contig) is
    ``(H, W, C)``; planar-separate ``SYX`` or a stack of single-band pages (``QYX``, ``IYX``, ...;
    what ``tifffile.imwrite`` writes for a ``(C, H, W)`` array) is ``(C, H, W)`` and is transposed;
    ``YX`` is ``(H, W, 1)``. Pillow images (``.jpg/.jpeg/.png/.bmp``) are read as stored, EXIF
    orientation applied: mode L -> ``(H, W, 1)``, RGB -> 3 bands, RGBA -> 4, palette ``P`` decoded
    to RGB (RGBA when it has transparency); they are converted only when ``image_mode`` says so.

    Args:
        path: image file.
        in_channels: expected band count C; None skips the check.
        image_mode: Pillow files only: ``""`` as stored, ``"RGB"`` or ``"L"`` (``Image.convert``).

    Returns:
        ``(H, W, C)`` array, dtype as stored (uint8 for Pillow images).

    Raises:
        ValueError: unknown ``image_mode``; unreadable/corrupt file; not 2-D/3-D or TIFF axes that
            are not a raster; C differs from ``in_channels`` (the message names the file, the stored
            shape, the ``(H, W, C)`` reading and, for Pillow images, the ``image_mode`` that converts).
    """
    path = Path(path)
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"data.image_mode must be '', 'RGB' or 'L', not {image_mode!r}")

    def pil_read(im):
        im = ImageOps.exif_transpose(im)
        if image_mode:
            return im.convert(image_mode)
        return im.convert("RGBA" if "transparency" in im.info else "RGB") if im.mode == "P" else im

    arr, layout = _load_array(path, "image", pil_read)
    kind = "npy" if layout == "npy" else "tif" if path.suffix.lower() in (".tif", ".tiff") else "pil"
    stored = arr.shape
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    elif kind == "tif" and arr.ndim == 3 and layout.endswith("YX"):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    elif kind == "tif" and arr.ndim == 3 and not layout.endswith("S"):
        raise ValueError(f"{path}: TIFF series with axes {layout} and shape {stored} is not a (Y, X[, band]) raster")
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D or 3-D image, got shape {stored}"
                         + (f" (TIFF axes {layout})" if kind == "tif" else ""))
    if in_channels is not None and arr.shape[2] != in_channels:
        if kind == "npy":
            how = ".npy rasters are (H, W, C), never transposed"
        elif kind == "tif":
            how = (f"TIFF axes {layout}: samples last (...S) is (H, W, C), planar or a page stack (...YX) is "
                   "(C, H, W); write (H, W, C) with photometric='minisblack', planarconfig='contig'")
        else:
            fix = {3: "RGB", 1: "L"}.get(in_channels)
            how = (f"Pillow mode {layout}" + (f" converted to {image_mode}" if image_mode else " as stored")
                   + (f"; --data.image_mode={fix} converts" if fix and fix != image_mode
                      else "; no data.image_mode gives that band count"))
        raise ValueError(f"{path}: has {arr.shape[2]} channels, the config expects {in_channels} (data.in_channels); "
                         f"stored shape {stored} read as (H, W, C) = {arr.shape} ({how})")
    return arr


def _raw_label(path: Path) -> np.ndarray:
    """Read a label file as stored: ``(H, W)`` integer values, or ``(H, W, 3)`` uint8 RGB (RGBA drops alpha).

    Raises:
        ValueError: unreadable file, not a 2-D map or 3-channel image, or non-integer values.
    """
    arr, _ = _load_array(path, "label", lambda im: im.convert("RGB") if im.mode == "RGBA" else im)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]  # (H, W, 1) -> (H, W)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D label map, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
        raise ValueError(f"{path}: label has non-integer values (dtype {arr.dtype})")
    return arr


def _is_grey(rgb: np.ndarray) -> bool:
    """True when an ``(H, W, 3)`` image has R == G == B everywhere (grey values stored as RGB)."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all())


def read_label(path: str | Path, palette: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Read a label map as ``(H, W)`` integers.

    Args:
        path: index map (``.png/.tif/.tiff/.npy``; palette-mode PNGs give their indices), or an
            RGB colour PNG, decoded to class indices through ``palette``.
        palette: ``(K, 3)`` RGB class colours, used only for 3-channel labels.

    Returns:
        ``(label, from_colour)``: ``(H, W)`` int64 raw values, and True when they were decoded
        from colours (then they are palette row indices).

    Raises:
        ValueError: unreadable file, a colour label without palette, a colour not in the
            palette (the message lists a few offending colours), or non-integer values.
    """
    path = Path(path)
    arr = _raw_label(path)
    if arr.ndim == 3:
        if palette is not None:
            return decode_colour_label(arr, palette, path), True
        if not _is_grey(arr):
            raise ValueError(f"{path}: colour label but no palette (give the dataset a class_dict.csv)")
        arr = arr[..., 0]  # grey values stored as RGB
    return arr.astype(np.int64), False


def decode_colour_label(rgb: np.ndarray, palette: np.ndarray, path: str | Path = "") -> np.ndarray:
    """Map an ``(H, W, 3)`` RGB label to ``(H, W)`` int64 palette indices.

    Raises:
        ValueError: a pixel colour is not in the palette (names the file and up to 5 colours).
    """
    palette = np.asarray(palette, dtype=np.int64)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(pal_codes)
    pos = np.clip(np.searchsorted(pal_codes[order], codes), 0, len(order) - 1)
    found = pal_codes[order][pos] == codes
    if not found.all():
        bad = np.unique(codes[~found])[:5]
        cols = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in bad.tolist()]
        raise ValueError(f"{path}: {int((~found).sum())} label pixels have colours outside the palette, "
                         f"e.g. {cols}")
    return order[pos]


def read_class_dict(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a ``class_dict.csv`` (``name,r,g,b`` with a header) into names and a ``(K, 3)`` palette."""
    path = Path(path)
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows or len(rows[0]) < 4:
        raise ValueError(f"{path}: expected a header and rows 'name,r,g,b'")
    try:
        names = [r[0] for r in rows[1:]]
        palette = np.array([[int(v) for v in r[1:4]] for r in rows[1:]], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{path}: bad colour value ({e})") from e
    return names, palette


# --------------------------------------------------------------------------- label encodings (spec icesegnet.md §8.7)

LABEL_ENCODINGS = ("one_based", "zero_based", "colour")
VOID_NAMES = ("void", "unlabelled", "unlabeled", "ignore")


def _name_key(name: str) -> str:
    """Class-name key for matching: case-insensitive, '_' equals ' ', surrounding/repeated blanks dropped."""
    return " ".join(name.replace("_", " ").lower().split())


def _fmt(values) -> str:
    """A value list for messages, shortened beyond 12 entries."""
    v = [int(x) for x in values]
    return str(v) if len(v) <= 12 else f"[{', '.join(map(str, v[:6]))}, ..., {v[-1]}] ({len(v)} values)"


def class_dict_palette(path: str | Path, classes, ignore_index: int = 255) -> tuple[np.ndarray, dict]:
    """Match a ``class_dict.csv`` to a dataset's class names and reorder its palette into class order.

    Names match case-insensitively, with ``_`` and blanks alike. Rows named void / unlabelled /
    unlabeled / ignore are appended after the classes and map to ``ignore_index``.

    Args:
        path: ``class_dict.csv`` (``name,r,g,b`` with a header).
        classes: the dataset's class names in index order (C names).

    Returns:
        ``(palette, void_map)``: ``(C + V, 3)`` int64 RGB with row c the colour of ``classes[c]``
        (then the V void rows), and ``{C + j: ignore_index}`` for the void rows (a ``label_map``).

    Raises:
        FileNotFoundError: no ``path``.
        ValueError: a malformed csv, a name listed twice, or a class missing from / extra in the
            csv (the message lists the missing and extra names and the expected names).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; colour labels need a class_dict.csv with rows name,r,g,b "
                                f"for the classes {list(classes)}")
    names, colours = read_class_dict(path)
    rows: dict[str, int] = {}
    for i, n in enumerate(names):
        if _name_key(n) in rows:
            raise ValueError(f"{path}: class name {n.strip()!r} is listed twice")
        rows[_name_key(n)] = i
    wanted = {_name_key(c) for c in classes}
    missing = [c for c in classes if _name_key(c) not in rows]
    extra = [names[i].strip() for k, i in rows.items() if k not in wanted and k not in VOID_NAMES]
    if missing or extra:
        raise ValueError(f"{path}: class names do not match the dataset: missing {missing}, extra {extra}; expected "
                         f"{list(classes)} (matched by name, any case and row order; rows named "
                         f"{'/'.join(VOID_NAMES)} map to ignore)")
    void = [i for k, i in rows.items() if k in VOID_NAMES]
    order = [rows[_name_key(c)] for c in classes] + void
    return colours[order], {len(classes) + j: ignore_index for j in range(len(void))}


def remap_label(label: np.ndarray, reduce_zero_label: bool, label_map: dict) -> np.ndarray:
    """Apply ``reduce_zero_label`` (0 -> 255, v -> v-1, 255 stays 255; mmseg) and then ``label_map``.

    Args:
        label: int64 raw values, any shape (a label map or a list of unique values).
        reduce_zero_label: shift 1-based values to 0-based.
        label_map: ``{value after the shift: class}``.

    Returns:
        int64 array of the same shape.
    """
    if reduce_zero_label:
        label = np.where(label == 0, 255, label - 1)
        label[label == 254] = 255
    if label_map:
        out = label.copy()
        for raw, new in label_map.items():
            out[label == raw] = new
        label = out
    return label


def label_mapping_note(encoding: str, num_classes: int, ignore_index: int = 255, label_map: dict | None = None) -> str:
    """One-line description of an encoding of ``LABEL_ENCODINGS``, e.g. ``"raw 1..4 -> classes 0..3, raw 0 ->
    ignore 255"`` (then the ``label_map``), for logs and error messages."""
    c = num_classes - 1
    note = {"one_based": f"raw 1..{c + 1} -> classes 0..{c}, raw 0 -> ignore 255",
            "zero_based": f"raw 0..{c} -> classes 0..{c}, raw {ignore_index} -> ignore",
            "colour": f"class_dict.csv colours -> classes 0..{c} by name, void rows -> ignore {ignore_index}"}[encoding]
    return note + (f", then label_map {label_map}" + (" (keys after the shift)" if encoding == "one_based" else "")
                   if label_map else "")


@functools.lru_cache(maxsize=None)
def _label_summary(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[int, ...]]:
    """One label file as :func:`detect_label_encoding` needs it: ``("colour", ())``, or ``("index" | "grey",
    raw values)`` (grey: stored as RGB with R = G = B). Cached by path and file stats, so the train and val
    datasets of one run read each label file once.

    Raises:
        ValueError: as :func:`_raw_label` (not cached).
    """
    arr = _raw_label(Path(path))  # (H, W) or (H, W, 3)
    if arr.ndim == 3 and not _is_grey(arr):
        return "colour", ()
    kind = "index" if arr.ndim == 2 else "grey"
    arr = arr[..., 0] if arr.ndim == 3 else arr  # grey values stored as RGB: (H, W, 3) -> (H, W)
    values = np.flatnonzero(np.bincount(arr.ravel())) if arr.dtype in (np.uint8, np.uint16) else np.unique(arr)
    return kind, tuple(int(v) for v in values.tolist())


def detect_label_encoding(ann_paths, num_classes: int, ignore_index: int = 255, label_map: dict | None = None) -> str:
    """Choose the label encoding of a split from its files (spec icesegnet.md §8.7: no blind -1 shift).

    Reads every label once: 3-channel labels with a non-grey pixel are colour labels; otherwise the
    union of the raw values decides. ``one_based`` (raw 1..C, 0 = unlabelled) or ``zero_based``
    (raw 0..C-1, ``ignore_index`` = unlabelled) is chosen when it is the only one under which every
    value, after ``label_map``, is a class 0..C-1 or ignore (e.g. raw C present: one_based).
    Without a ``label_map`` every value zero_based accepts one_based accepts too, so a 0-based map
    (0..C-1) is never chosen silently: it stops with the ambiguity error and its override.

    Args:
        ann_paths: label files (every split of the dataset, so that all splits share one encoding).
        num_classes: C.
        ignore_index: the ignore value (255).
        label_map: ``{value after the shift: class}``, applied after the shift as in the dataset.

    Returns:
        ``"one_based"``, ``"zero_based"`` or ``"colour"``.

    Raises:
        ValueError: one line naming a label file: colour and single-channel labels mixed; values
            that fit both encodings (e.g. 0..3 for 4 classes: one_based would ignore raw 0 and
            leave class 3 empty) or neither; it gives the values, each encoding's meaning and the
            ``--data.label_encoding`` override.
    """
    first: dict[int, Path] = {}  # raw value -> first label file holding it
    colour = index = None  # first colour / first single-channel label file
    for p in map(Path, ann_paths):
        st = p.stat()
        kind, values = _label_summary(str(p), st.st_mtime_ns, st.st_size)
        if kind == "colour":
            colour = colour or p
            continue
        index = index or (p if kind == "index" else None)
        for v in values:
            first.setdefault(v, p)
    if colour and index:
        raise ValueError(f"{colour}: colour label, but {index} is a single-channel index map (labels must be one kind)")
    if colour:
        return "colour"
    C, label_map = num_classes, label_map or {}
    values = np.array(sorted(first), dtype=np.int64)
    mapped = {enc: remap_label(values, enc == "one_based", label_map) for enc in ("one_based", "zero_based")}
    bad = {enc: values[((m < 0) | (m >= C)) & (m != ignore_index)] for enc, m in mapped.items()}
    fits = [enc for enc, b in bad.items() if not b.size]
    if len(fits) == 1:
        return fits[0]
    notes = {enc: label_mapping_note(enc, C, ignore_index, label_map) for enc in mapped}
    if not fits:
        where = first[int(bad["one_based"][-1])]
        raise ValueError(f"{where}: label values {_fmt(np.union1d(*bad.values()))} (raw) outside the class set "
                         f"0..{C - 1} and ignore {ignore_index} under every label encoding (values found "
                         f"{_fmt(values)}): one_based ({notes['one_based']}) leaves {_fmt(bad['one_based'])}, "
                         f"zero_based ({notes['zero_based']}) leaves {_fmt(bad['zero_based'])}; check "
                         f"data.num_classes and data.label_map")
    empty = {enc: sorted(set(range(C)) - set(m.tolist())) for enc, m in mapped.items()}
    meaning = "; ".join(f"{enc}: {notes[enc]}" + (f", so classes {_fmt(empty[enc])} stay empty" if empty[enc] else "")
                        for enc in mapped)
    deciding = 0 if 0 in first else max(first, default=0)
    raise ValueError(f"{first.get(deciding, index)}: label values {_fmt(values)} (this file holds raw {deciding}) fit "
                     f"two label encodings of the {C} classes ({meaning}); set --data.label_encoding=zero_based "
                     f"or --data.label_encoding=one_based")


# --------------------------------------------------------------------------- dataset

def pair_by_stem(img_dir: Path, ann_dir: Path | None, img_exts=IMG_EXTS, ann_exts=LABEL_EXTS,
                 img_glob: str = "*") -> list[tuple[Path, Path | None]]:
    """Pair images with labels of the same file stem.

    Returns:
        Sorted ``[(image_path, label_path)]``; label is None when ``ann_dir`` is None.

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: empty image folder, an image without label, a label without image, or two
            files with the same stem.
    """
    img_dir = Path(img_dir)
    if not img_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {img_dir}")
    images = sorted(p for p in img_dir.glob(img_glob) if p.suffix.lower() in img_exts)
    if not images:
        raise ValueError(f"{img_dir}: no images with extensions {', '.join(img_exts)}")
    if ann_dir is None:
        return [(p, None) for p in images]
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"label folder not found: {ann_dir} (needed for images in {img_dir})")
    labels: dict[str, Path] = {}
    for p in sorted(ann_dir.iterdir()):
        if p.suffix.lower() in ann_exts:
            if p.stem in labels:
                raise ValueError(f"{ann_dir}: two labels share the stem {p.stem!r}: {labels[p.stem].name}, {p.name}")
            labels[p.stem] = p
    pairs, seen = [], set()
    for img in images:
        if img.stem in seen:
            raise ValueError(f"{img_dir}: two images share the stem {img.stem!r}")
        seen.add(img.stem)
        if img.stem not in labels:
            raise ValueError(f"{img}: missing label; expected {ann_dir / img.stem}"
                             f"{{{','.join(ann_exts)}}}")
        pairs.append((img, labels[img.stem]))
    extra = sorted(set(labels) - seen)
    if extra:
        raise ValueError(f"{ann_dir / labels[extra[0]].name}: label without image in {img_dir} "
                         f"({len(extra)} such labels)")
    return pairs


class SegDataset(torch.utils.data.Dataset):
    """Image/label pairs with label decoding, validation and a joint transform pipeline.

    Args:
        pairs: ``[(image_path, label_path or None)]``.
        num_classes: valid label values after decoding are ``0..num_classes-1`` and ``ignore_index``.
        in_channels: required image band count.
        ignore_index: label value excluded from loss and metrics (default 255).
        reduce_zero_label: raw 0 -> ignore, v -> v-1 (mmseg), for index labels.
        label_map: ``{raw: class}`` applied after ``reduce_zero_label``.
        palette: ``(K, 3)`` RGB colours for colour-coded labels.
        binary_mask: labels are 0/1 or 0/255 masks mapped to {0, 1} (the glacier masks).
        pipeline: transform specs (``iceseg.transforms.build_transforms``).
        seed: base seed; sample ``i`` in epoch ``e`` draws from ``default_rng([seed, e, i])``.
        label_encoding: one of ``LABEL_ENCODINGS`` (it sets ``reduce_zero_label``; ``"colour"``
            also makes a single-channel label an error), or ``""``: per file, index labels follow
            ``reduce_zero_label`` and 3-channel labels the palette (the aerial datasets).
        image_mode: Pillow images: ``""`` as stored, ``"RGB"``/``"L"`` converted (:func:`read_image`).

    ``label_encoding`` and ``label_mapping_note`` (one line, e.g. ``"raw 1..4 -> classes 0..3, raw 0
    -> ignore 255"``) record the decoding. ``__getitem__`` returns ``{"img": (C, H, W) float32,
    "label": (H, W) int64 (ignore = 255; all ignore when there is no label), "name": file stem}``.

    Raises:
        ValueError: no pairs, or an unknown ``label_encoding``.
    """

    def __init__(self, pairs, num_classes: int, in_channels: int, ignore_index: int = 255,
                 reduce_zero_label: bool = False, label_map: dict | None = None, palette=None,
                 binary_mask: bool = False, pipeline: list | None = None, seed: int = 0,
                 label_encoding: str = "", image_mode: str = ""):
        self.pairs = list(pairs)
        if not self.pairs:
            raise ValueError("dataset is empty")
        if label_encoding and label_encoding not in LABEL_ENCODINGS:
            raise ValueError(f"data.label_encoding must be 'auto' or one of {', '.join(LABEL_ENCODINGS)}, "
                             f"not {label_encoding!r}")
        if label_encoding:
            reduce_zero_label = label_encoding == "one_based"
        self.num_classes, self.in_channels, self.ignore_index = num_classes, in_channels, ignore_index
        self.reduce_zero_label, self.binary_mask = reduce_zero_label, binary_mask
        self.label_encoding, self.image_mode = label_encoding, image_mode
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.palette = None if palette is None else np.asarray(palette)
        if binary_mask:
            self.label_mapping_note = "mask 0/1 or 0/255 -> classes 0/1"
        elif label_encoding:
            self.label_mapping_note = label_mapping_note(label_encoding, num_classes, ignore_index, label_map)
        else:
            self.label_mapping_note = (label_mapping_note("one_based" if reduce_zero_label else "zero_based",
                                                          num_classes, ignore_index, label_map)
                                       + ("; colour labels: palette row -> class" if palette is not None else ""))
        self.transform = build_transforms(pipeline or [])
        self.seed, self.epoch = seed, 0
        self.tracker: LoadTracker | None = None  # set by train.py: names the file a dead/stalled worker was reading

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call with the sampler's ``set_epoch``)."""
        self.epoch = epoch

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Read and check pair ``i`` before augmentation: ``(H, W, C)`` image, ``(H, W)`` int64 label."""
        img_path, ann_path = self.pairs[i]
        img = read_image(img_path, self.in_channels, self.image_mode)
        if ann_path is None:
            return img, None
        label, from_colour = read_label(ann_path, self.palette)
        if label.shape != img.shape[:2]:
            raise ValueError(f"{ann_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from "
                             f"image {img_path.name} size {img.shape[1]}x{img.shape[0]}")
        return img, self.decode_label(label, ann_path, from_colour)

    def decode_label(self, label: np.ndarray, path, from_colour: bool = False) -> np.ndarray:
        """Apply mask binarisation / ``reduce_zero_label`` (index labels only) / ``label_map``, check values.

        Args:
            label: ``(H, W)`` int64 raw values (palette rows when ``from_colour``).

        Returns:
            ``(H, W)`` int64 classes 0..num_classes-1 or ``ignore_index``.

        Raises:
            ValueError: naming ``path``: a value outside the class set, bad mask values, or an index
                label under ``label_encoding="colour"``.
        """
        values = np.unique(label)
        if self.binary_mask:
            if set(values.tolist()) <= {0, 1}:
                return label
            if set(values.tolist()) <= {0, 255}:
                return (label > 127).astype(np.int64)
            raise ValueError(f"{path}: mask values {values[:8].tolist()} are neither 0/1 nor 0/255")
        if self.label_encoding == "colour" and not from_colour:
            raise ValueError(f"{path}: single-channel label, but data.label_encoding is 'colour' (RGB labels "
                             f"decoded through class_dict.csv)")
        reduce = self.reduce_zero_label and not from_colour
        label = remap_label(label, reduce, self.label_map)
        values = np.unique(label)
        bad = values[((values < 0) | (values >= self.num_classes)) & (values != self.ignore_index)]
        if bad.size:
            raw = bad + 1 if reduce else bad
            raise ValueError(f"{path}: label values {raw[:8].tolist()} (raw) outside the class set "
                             f"0..{self.num_classes - 1}" + (" after reduce_zero_label" if reduce else "")
                             + f" and ignore {self.ignore_index}")
        return label

    def __getitem__(self, i: int) -> dict:
        try:
            with self.tracker.reading(i) if self.tracker is not None else contextlib.nullcontext():
                img, label = self.load(i)
        except ValueError as e:
            raise ValueError(f"{e} (sample {i})") from None
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img, label = self.transform(img, label, rng)
        if label is None:
            label = np.full(img.shape[:2], self.ignore_index, dtype=np.int64)
        img_t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))  # (C, H, W)
        return {"img": img_t, "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
                "name": self.pairs[i][0].stem}


def file_header(path: str | Path, image: bool = True, image_mode: str = "") -> tuple[int, int, int]:
    """``(H, W, bands)`` of an image or label file as :func:`read_image` / :func:`read_label` would return it,
    from its header alone (no pixel decoding), after checking that the file holds all its data.

    ``.npy``: the array header (a file shorter than it says fails); ``.tif/.tiff``: the first series' shape and
    axes (a strip or tile past the end of the file fails); Pillow images: size and mode, EXIF rotation for
    images, a PNG's chunks and checksums verified (a truncated PNG fails). ``image_mode`` as in
    :func:`read_image`. Labels count their stored channels (1, or 3 for colour labels).

    Raises:
        ValueError: naming the file: unreadable, truncated, or not a 2-D/3-D raster.
    """
    path = Path(path)
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            with open(path, "rb") as f:
                fmt = np.lib.format
                read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read(f)
                need, size = f.tell() + math.prod(shape) * dtype.itemsize, path.stat().st_size
            if size < need:
                raise ValueError(f"truncated .npy ({size} bytes, the header says {need})")
        elif ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes = series.shape, series.axes
                size = path.stat().st_size
                for page in tif.pages:
                    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True) if n]
                    if ends and max(ends) > size:
                        raise ValueError(f"truncated TIFF (image data end at byte {max(ends)}, the file has {size})")
            if len(shape) == 3 and axes.endswith("YX"):
                shape = (*shape[1:], shape[0])  # (C, H, W) -> (H, W, C), as read_image transposes
        else:
            with Image.open(path) as im:
                if im.format == "PNG":
                    im.verify()  # reads every chunk and checks its CRC (first thing after open): truncation shows
            with Image.open(path) as im:
                W, H = im.size
                if image and (im.getexif().get(0x0112, 1) in (5, 6, 7, 8)):  # EXIF rotation by 90 degrees
                    W, H = H, W
                bands = {"RGB": 3, "L": 1}.get(image_mode) if image else None
                if bands is None:
                    bands = (4 if "transparency" in im.info else 3) if im.mode == "P" and image else len(im.getbands())
            shape = (H, W, bands)
    except Exception as e:
        raise ValueError(f"{path}: unreadable or corrupt {'image' if image else 'label'} "
                         f"({type(e).__name__}: {e})") from e
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 2-D or 3-D {'image' if image else 'label'}, got shape {shape}")
    return tuple(int(n) for n in shape)


class LoadTracker:
    """Which sample each DataLoader worker is reading, kept in shared memory (inherited by the forked workers),
    so that the main process can name the file when a worker dies (killed, out of memory) or stalls
    (``DataLoader(timeout=...)``). A dataset with ``tracker`` set marks each sample in :meth:`reading`."""

    def __init__(self, num_workers: int):
        self.slots = multiprocessing.Array("q", [-1] * max(num_workers, 1), lock=False)  # sample per worker, -1 idle

    @contextlib.contextmanager
    def reading(self, index: int):
        """Mark ``index`` as being read by this worker while the block runs (left set if the worker dies in it)."""
        info = torch.utils.data.get_worker_info()
        slot = info.id if info is not None else 0
        self.slots[slot] = index
        yield
        self.slots[slot] = -1

    def busy(self) -> list[int]:
        """The samples some worker was reading and never finished."""
        return [i for i in self.slots if i >= 0]


def loader_error(err: BaseException, dataset=None) -> str:
    """The one-line message of an error met while loading a sample.

    A DataLoader worker's error reaches the main process re-raised with the worker's whole traceback as its
    text; this returns that traceback's last line without the exception name (``"<file>: label values [9] ...
    (sample 3)"``). For a worker that died or stalled (no message of its own), the samples ``dataset.tracker``
    saw unfinished are named with their files.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    tracker, pairs = getattr(dataset, "tracker", None), getattr(dataset, "pairs", [])
    if tracker is not None and ("DataLoader worker" in text or "DataLoader timed out" in text):
        where = [f"sample {i} ({', '.join(str(p) for p in pairs[i] if p is not None)})" for i in tracker.busy()]
        text = (text.splitlines()[0].rstrip(". ") + (" (data.timeout_s)" if "timed out" in text else "")
                + (f", while reading {'; '.join(where)}" if where else ""))
    return text or type(err).__name__


def build_train_val(cfg, seed: int = 0) -> tuple:
    """train.py's datasets: ``(train, val)`` of data config ``cfg``, every file checked first (``cfg.check``,
    :func:`check_dataset`), each with a :class:`LoadTracker` for ``cfg.num_workers`` DataLoader workers.

    Raises:
        FileNotFoundError, KeyError, ValueError: as :func:`build_dataset`; ValueError: the bad files, one per line.
    """
    train = build_dataset(cfg, cfg.train_split, train=True, seed=seed)
    val = build_dataset(cfg, cfg.val_split, train=False)
    if problems := list(dict.fromkeys(check_dataset(train, cfg.check) + check_dataset(val, cfg.check))):
        raise ValueError(f"{len(problems)} bad file(s) (data.check={cfg.check}; nothing was trained):\n  "
                         + "\n  ".join(problems))
    train.tracker, val.tracker = LoadTracker(cfg.num_workers), LoadTracker(cfg.num_workers)
    return train, val


def skip_bad_samples(loader, errors: list):
    """Iterate ``loader``, appending the :func:`loader_error` line of each batch that fails to load to ``errors``
    instead of raising (the DataLoader serves the remaining batches), so ranks that hold different numbers of
    batches (validation shards) can finish the pass and then stop together."""
    batches = iter(loader)
    while True:
        try:
            yield next(batches)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001  (any loading error, reported by the caller)
            errors.append(loader_error(e, getattr(loader.dataset, "dataset", loader.dataset)))  # Subset: its base


def check_dataset(dataset, mode: str = "headers") -> list[str]:
    """Every problem of a dataset's files, one line each, found before training starts (``data.check``).

    ``"headers"``: each pair's headers (:func:`file_header`): readable, not truncated, the image's band count
    ``data.in_channels``, the label a single-channel or colour map of the image's size. ``"full"``: every pair
    decoded and checked as training reads it (:meth:`SegDataset.load`: label values too). ``"none"``, or a
    dataset without image/label pairs (AutoICE scenes): nothing.

    Returns:
        ``["<file>: <problem>", ...]``, empty when every file passed.
    """
    pairs = getattr(dataset, "pairs", None)
    if mode == "none" or not pairs:
        return []
    problems = []
    for i, (img, ann) in enumerate(pairs):
        try:
            if mode == "full":
                dataset.load(i)
                continue
            H, W, C = file_header(img, True, dataset.image_mode)
            if C != dataset.in_channels:
                problems.append(f"{img}: has {C} band(s), the config expects {dataset.in_channels} (data.in_channels)")
            if ann is not None:
                h, w, c = file_header(ann, image=False)
                if (h, w) != (H, W) or c not in (1, 3, 4):
                    problems.append(f"{ann}: label of {w}x{h} (WxH) with {c} channel(s); image {Path(img).name} "
                                    f"is {W}x{H} (labels are single-channel or colour maps of the image's size)")
        except ValueError as e:
            problems.append(str(e))
    return problems


class ResumableSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` (train.py's, ``drop_last=True``) yielding positions ``[skip, stop)`` of each epoch's
    order: ``skip`` resumes mid-epoch (for one epoch, then resets), ``stop`` ends every epoch after whole
    accumulation steps, so each epoch starts alike however a run was interrupted."""

    skip, stop = 0, None

    def __iter__(self):
        indices = list(super().__iter__())[self.skip:self.stop]
        self.skip = 0
        return iter(indices)


# --------------------------------------------------------------------------- named datasets

def _nwpu(cfg, split: str, pipeline: list, seed: int, classes, ann_alts: tuple) -> SegDataset:
    root = Path(cfg.root)
    if not (root / split).is_dir():
        raise FileNotFoundError(
            f"dataset folder {root / split} not found. Expected layout: {root}/train/*.jpg, "
            f"{root}/train_labels/*.png, {root}/val/, {root}/val_labels/ [, test/, test_labels/]; labels are "
            f"single-channel PNGs with raw values 1..{len(classes)} ({', '.join(classes)}) and 0 = unlabelled. "
            + NWPU_HELP)
    ann = next((root / f"{split}{alt}" for alt in ann_alts if (root / f"{split}{alt}").is_dir()),
               root / f"{split}{ann_alts[0]}")
    pairs = pair_by_stem(root / split, ann)
    encoding = cfg.label_encoding
    if encoding == "auto":  # one encoding for the dataset: decided from the labels of all its splits
        folders = {root / f"{s}{alt}" for s in ("train", "val", "test") for alt in ann_alts} | {ann}
        files = sorted(p for d in folders if d.is_dir() for p in d.iterdir() if p.suffix.lower() in LABEL_EXTS)
        encoding = detect_label_encoding(files, len(classes), cfg.ignore_index, cfg.label_map)
    palette, void_map = None, {}  # RGB colour labels (the original NWPU release) decode through class_dict.csv
    if encoding == "colour":
        palette, void_map = class_dict_palette(root / "class_dict.csv", classes, cfg.ignore_index)
    return SegDataset(pairs, num_classes=len(classes), in_channels=cfg.in_channels, ignore_index=cfg.ignore_index,
                      label_map={**void_map, **cfg.label_map}, palette=palette, pipeline=pipeline, seed=seed,
                      label_encoding=encoding, image_mode=cfg.image_mode)


def nwpu_yrcc2(cfg, split, pipeline, seed=0) -> SegDataset:
    """NWPU_YRCC2 (4 classes): 1-based index labels (0 ignored), 0-based ones, or RGB colours via
    ``class_dict.csv``, as ``cfg.label_encoding`` says or as detected (:func:`detect_label_encoding`)."""
    return _nwpu(cfg, split, pipeline, seed, NWPU_YRCC2_CLASSES, ("_labels",))


def nwpu_yrcc_ex(cfg, split, pipeline, seed=0) -> SegDataset:
    """NWPU_YRCC_EX (3 classes); accepts ``<split>_labels/`` or the release's ``<split>annot/``."""
    return _nwpu(cfg, split, pipeline, seed, NWPU_YRCC_CLASSES, ("_labels", "annot"))


def glacier_split(ids: list[str], val_fraction: float, seed: int, group: bool) -> tuple[list[int], list[int]]:
    """Seeded train/val split of sorted tile ids.

    Without ``group`` it equals scikit-learn's ``train_test_split(range(N), test_size=val_fraction,
    random_state=seed)``: ``RandomState(seed).permutation(N)``, the first ``ceil(f*N)`` indices are
    validation. With ``group`` the same rule splits the distinct tile ids (``_aug_<i>`` removed) so
    augmented copies of one tile never straddle the split.

    Returns:
        (train_indices, val_indices) into ``ids``.
    """
    keys = [re.sub(r"_aug_\d+$", "", s) for s in ids] if group else list(ids)
    uniq = sorted(set(keys))
    n_val = math.ceil(val_fraction * len(uniq))
    perm = np.random.RandomState(seed).permutation(len(uniq))
    val_keys = {uniq[j] for j in perm[:n_val]}
    train = [i for i, k in enumerate(keys) if k not in val_keys]
    val = [i for i, k in enumerate(keys) if k in val_keys]
    if not group:  # keep sklearn's index order
        train, val = perm[n_val:].tolist(), perm[:n_val].tolist()
    return train, val


def glacier(cfg, split, pipeline, seed=0) -> SegDataset:
    """GlacierHack-style rasters: ``masked_<id>.npy`` (H, W, 5) and ``<id>.tif`` masks in ``root``."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(f"glacier folder {root} not found. Expected {root}/masked_<id>.npy (H, W, 5 bands "
                                f"scaled to 0..1) with masks {root}/<id>.tif (0/1 or 0/255).")
    images = sorted(root.glob("masked_*.npy"))
    if not images:
        raise ValueError(f"{root}: no masked_<id>.npy files")
    pairs = []
    for p in images:
        tile = p.stem[len("masked_"):]
        mask = next((root / f"{tile}{e}" for e in (".tif", ".tiff") if (root / f"{tile}{e}").is_file()), None)
        if mask is None:
            raise ValueError(f"{p}: missing label; expected {root / (tile + '.tif')}")
        pairs.append((p, mask))
    extra = sorted({m.name for m in root.glob("*.tif*")} - {m.name for _, m in pairs})
    if extra:
        raise ValueError(f"{root / extra[0]}: label without image (no {root}/masked_{Path(extra[0]).stem}.npy; "
                         f"{len(extra)} such masks)")
    train, val = glacier_split([p.stem[len("masked_"):] for p, _ in pairs], cfg.val_fraction, cfg.split_seed,
                               cfg.group_split)
    if split not in ("train", "val"):
        raise ValueError(f"Glacier has splits 'train' and 'val', not {split!r}")
    chosen = [pairs[i] for i in (train if split == "train" else val)]
    if not chosen:
        raise ValueError(f"{root}: the {split} split is empty ({len(pairs)} tiles, val_fraction {cfg.val_fraction})")
    return SegDataset(chosen, num_classes=2, in_channels=cfg.in_channels, binary_mask=True, pipeline=pipeline,
                      seed=seed, image_mode=cfg.image_mode)


def folder(cfg, split, pipeline, seed=0) -> SegDataset:
    """Generic ``<root>/<split>`` + ``<root>/<split>_labels`` pairs (optional ``class_dict.csv``).

    ``cfg.label_encoding`` "auto" keeps the per-file rule (index labels follow ``cfg.reduce_zero_label``,
    colour labels the csv rows in order; nothing is detected); "one_based"/"zero_based" decode index
    labels only; "colour" needs colour labels and the csv (rows in class order: a folder has no names).
    """
    root = Path(cfg.root)
    encoding = "" if cfg.label_encoding == "auto" else cfg.label_encoding
    csv_path = root / "class_dict.csv"
    palette = None
    if encoding == "colour" or (not encoding and csv_path.is_file()):
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: not found; data.label_encoding 'colour' needs rows name,r,g,b")
        palette = read_class_dict(csv_path)[1]
    return SegDataset(pair_by_stem(root / split, root / f"{split}_labels"), num_classes=cfg.num_classes,
                      in_channels=cfg.in_channels, ignore_index=cfg.ignore_index,
                      reduce_zero_label=cfg.reduce_zero_label, label_map=cfg.label_map, palette=palette,
                      pipeline=pipeline, seed=seed, label_encoding=encoding, image_mode=cfg.image_mode)


def autoice(cfg, split, pipeline, seed=0):
    """AutoICE / AI4Arctic ready-to-train NetCDF scenes (iceseg/autoice/data.py, needs h5py): random
    patches for ``cfg.train_split``, whole scenes otherwise; ``cfg.kwargs`` holds its options."""
    from iceseg.autoice import build_autoice_dataset

    return build_autoice_dataset(cfg, split, pipeline, seed)


DATASETS = {"NWPU_YRCC2": nwpu_yrcc2, "NWPU_YRCC_EX": nwpu_yrcc_ex, "Glacier": glacier, "Folder": folder,
            "AutoICE": autoice}


# --------------------------------------------------------------------------- aerial land-cover datasets
# The Lossd benchmarks (spec unetpp_glacier_and_lossd.md B7). Index labels use mmseg's converted form:
# 0 = no-data / boundary / ignore and class c stored as c + 1 (``reduce_zero_label``); colour labels
# (the official ISPRS and UAVid releases) are decoded through the palette. ``<split>`` may join splits
# with "+" (GeoSeg trains LoveDA on "train+val"). Besides each official layout every loader accepts
# ``<root>/img_dir/<split>`` + ``<root>/ann_dir/<split>`` (mmseg, and what :func:`tile_dataset`
# writes) and a flat ``<root>/img`` + ``<root>/ann`` folder that serves every split (sample folders).

LOVEDA_CLASSES = ("background", "building", "road", "water", "barren", "forest", "agriculture")
LOVEDA_PALETTE = ((255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0),
                  (255, 195, 128))
ISPRS_CLASSES = ("impervious surface", "building", "low vegetation", "tree", "car", "clutter")
ISPRS_PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0),
                 (0, 0, 0))  # the last colour (black) marks the eroded boundaries: ignored
POTSDAM_TEST = ("2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14",
                "6_15", "7_13")  # GeoSeg/mmseg test (= validation) tiles; 7_10 is dropped (erroneous labels)
VAIHINGEN_TEST = ("2", "4", "6", "8", "10", "12", "14", "16", "20", "22", "24", "27", "29", "31", "33", "35", "38")
ISPRS_OFFICIAL = {  # image folder, image name, (label folder, label name) with the eroded reference first
    "Potsdam": ("2_Ortho_RGB", "top_potsdam_{}_RGB.tif", POTSDAM_TEST, ("7_10",),
                (("5_Labels_all_noBoundary", "top_potsdam_{}_label_noBoundary.tif"),
                 ("5_Labels_all", "top_potsdam_{}_label.tif"))),
    "Vaihingen": ("top", "top_mosaic_09cm_area{}.tif", VAIHINGEN_TEST, (),
                  (("gts_eroded_for_participants", "top_mosaic_09cm_area{}_noBoundary.tif"),
                   ("gts_for_participants", "top_mosaic_09cm_area{}.tif"))),
}
UAVID_CLASSES = ("building", "road", "tree", "low vegetation", "moving car", "static car", "human", "clutter")
UAVID_PALETTE = ((128, 0, 0), (128, 64, 128), (0, 128, 0), (128, 128, 0), (64, 0, 128), (192, 0, 192), (64, 64, 0),
                 (0, 0, 0))


class NamedSegDataset(SegDataset):
    """:class:`SegDataset` whose items carry given names (UAVid frames repeat their stems per sequence)."""

    def __init__(self, pairs, names: list[str], **kwargs):
        super().__init__(pairs, **kwargs)
        self.names = list(names)

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        item["name"] = self.names[i]
        return item


def _generic_pairs(root: Path, split: str) -> list | None:
    """mmseg ``img_dir/<split>`` + ``ann_dir/<split>``, else flat ``img`` + ``ann``; None when neither exists.
    A missing label folder is allowed only for the "test" split (unlabelled images)."""
    for img, ann in ((root / "img_dir" / split, root / "ann_dir" / split), (root / "img", root / "ann")):
        if img.is_dir():
            return pair_by_stem(img, None if split == "test" and not ann.is_dir() else ann)
    return None


def _aerial_dataset(cfg, split, pipeline, seed, classes, official, layout: str, palette=None, extra_map=None):
    """Collect the pairs of every "+"-joined split (``official(root, split)`` first, then the generic layouts)."""
    root, pairs, names = Path(cfg.root), [], []
    for s in split.split("+"):
        found = official(root, s) or _generic_pairs(root, s)
        if not found:
            raise FileNotFoundError(f"dataset folder for split {s!r} not found under {root}. Expected {layout}, or "
                                    f"{root}/img_dir/{s} + {root}/ann_dir/{s} (mmseg, tile_dataset), or {root}/img + "
                                    f"{root}/ann.")
        for p in found:
            pairs.append(p[:2])
            names.append(p[2] if len(p) > 2 else p[0].stem)
    return NamedSegDataset(pairs, names, num_classes=len(classes), in_channels=cfg.in_channels,
                           ignore_index=cfg.ignore_index, reduce_zero_label=True,
                           label_map={**(extra_map or {}), **cfg.label_map}, palette=palette, pipeline=pipeline,
                           seed=seed, image_mode=cfg.image_mode)


def _loveda_official(root: Path, split: str) -> list:
    base, pairs = root / split.capitalize(), []  # Train/ Val/ Test/
    for domain in ("Urban", "Rural"):
        img, ann = base / domain / "images_png", base / domain / "masks_png"
        if img.is_dir():
            pairs += [(i, a, f"{domain}_{i.stem}") for i, a in
                      pair_by_stem(img, None if split == "test" and not ann.is_dir() else ann)]
    return pairs


def loveda(cfg, split, pipeline, seed=0) -> SegDataset:
    """LoveDA (7 classes, raw 0 = no-data -> ignore): ``<root>/{Train,Val,Test}/{Urban,Rural}/{images_png,masks_png}``."""
    return _aerial_dataset(cfg, split, pipeline, seed, LOVEDA_CLASSES, _loveda_official,
                           f"{cfg.root}/Train/Urban/images_png + masks_png (and Rural, Val, Test)")


def _isprs_official(name: str):
    img_dir, img_name, test, bad, label_dirs = ISPRS_OFFICIAL[name]
    pattern = re.compile("^" + re.escape(img_name).replace(r"\{\}", "(.+)") + "$")

    def find(root: Path, split: str) -> list:
        if not (root / img_dir).is_dir():
            return []
        ids = sorted(m.group(1) for p in (root / img_dir).iterdir() if (m := pattern.match(p.name)))
        ids = [i for i in ids if (i in test) == (split != "train") and i not in bad]
        order = label_dirs[::-1] if split == "train" else label_dirs  # train on full labels, score eroded ones
        pairs = []
        for i in ids:
            ann = next((root / d / n.format(i) for d, n in order if (root / d / n.format(i)).is_file()), None)
            if ann is None:
                raise ValueError(f"{root / img_dir / img_name.format(i)}: missing label; expected "
                                 f"{' or '.join(str(root / d / n.format(i)) for d, n in order)}")
            pairs.append((root / img_dir / img_name.format(i), ann))
        return pairs
    return find


def potsdam(cfg, split, pipeline, seed=0) -> SegDataset:
    """ISPRS Potsdam (6 classes incl. clutter): official ``2_Ortho_RGB`` + ``5_Labels_all[_noBoundary]`` RGB-colour
    tiles (train = all but the 14 test tiles and 7_10; val/test = the test tiles) or mmseg index labels.
    Clutter stays class 5 (excluded from means via ``eval.exclude_classes``); ``data.label_map={5: 255}`` ignores it."""
    return _aerial_dataset(cfg, split, pipeline, seed, ISPRS_CLASSES, _isprs_official("Potsdam"),
                           f"{cfg.root}/2_Ortho_RGB/top_potsdam_<id>_RGB.tif + 5_Labels_all[_noBoundary]/",
                           palette=ISPRS_PALETTE, extra_map={6: cfg.ignore_index})


def vaihingen(cfg, split, pipeline, seed=0) -> SegDataset:
    """ISPRS Vaihingen (IRRG, 6 classes): official ``top/`` + ``gts_[eroded_]for_participants/`` colour tiles
    (val/test = the 17 official test areas) or mmseg index labels; clutter as in :func:`potsdam`."""
    return _aerial_dataset(cfg, split, pipeline, seed, ISPRS_CLASSES, _isprs_official("Vaihingen"),
                           f"{cfg.root}/top/top_mosaic_09cm_area<n>.tif + gts_for_participants/",
                           palette=ISPRS_PALETTE, extra_map={6: cfg.ignore_index})


def _uavid_official(root: Path, split: str) -> list:
    base, pairs = root / f"uavid_{split}", []
    for seq in sorted(p for p in base.glob("seq*") if p.is_dir()) if base.is_dir() else []:
        ann = seq / "Labels"
        pairs += [(i, a, f"{seq.name}_{i.stem}") for i, a in
                  pair_by_stem(seq / "Images", None if split == "test" and not ann.is_dir() else ann)]
    return pairs


def uavid(cfg, split, pipeline, seed=0) -> SegDataset:
    """UAVid (8 classes, clutter last as GeoSeg): ``<root>/uavid_<split>/seq<n>/{Images,Labels}`` colour labels,
    or tiles from :func:`tile_dataset` (index labels, 0 = ignore)."""
    return _aerial_dataset(cfg, split, pipeline, seed, UAVID_CLASSES, _uavid_official,
                           f"{cfg.root}/uavid_{split}/seq<n>/Images + Labels", palette=UAVID_PALETTE)


def tile_dataset(dataset: SegDataset, out_root: str | Path, split: str, size: int = 1024,
                 stride: int | None = None) -> int:
    """Cut every image/label pair of ``dataset`` into ``size`` x ``size`` tiles (512 or 1024 for the aerial sets).

    Windows start every ``stride`` (default ``size``) with the last one shifted back to the image
    border (overlapping instead of padding); smaller images give one smaller tile. Writes
    ``<out_root>/img_dir/<split>/<name>_<y>_<x>.png`` (uint8 1- or 3-band images, ``.npy`` otherwise)
    and ``ann_dir/<split>/<name>_<y>_<x>.png``: decoded labels stored as ``c + 1`` with ignore -> 0,
    which every aerial loader reads back unchanged (``reduce_zero_label``).

    Returns:
        Number of tiles written.

    Raises:
        ValueError: ``size`` or ``stride`` < 1.
    """
    stride = stride or size
    if size < 1 or stride < 1:
        raise ValueError(f"tile_dataset: size and stride must be >= 1, got {size}, {stride}")
    img_dir, ann_dir = Path(out_root) / "img_dir" / split, Path(out_root) / "ann_dir" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    names = getattr(dataset, "names", [p[0].stem for p in dataset.pairs])
    n = 0
    for i in range(len(dataset)):
        img, label = dataset.load(i)  # (H, W, C), decoded (H, W) or None
        H, W = img.shape[:2]
        for y in window_starts(H, size, stride):
            for x in window_starts(W, size, stride):
                stem = f"{names[i]}_{y}_{x}"
                tile = img[y:y + size, x:x + size]
                if tile.dtype == np.uint8 and tile.shape[2] in (1, 3):
                    Image.fromarray(tile[..., 0] if tile.shape[2] == 1 else tile).save(img_dir / f"{stem}.png")
                else:
                    np.save(img_dir / f"{stem}.npy", tile)
                if label is not None:
                    lab = label[y:y + size, x:x + size]
                    enc = np.where(lab == dataset.ignore_index, 0, lab + 1).astype(np.uint8)
                    Image.fromarray(enc).save(ann_dir / f"{stem}.png")
                n += 1
    return n


DATASETS.update({"LoveDA": loveda, "Potsdam": potsdam, "Vaihingen": vaihingen, "UAVid": uavid})


def prepare_data(cfg) -> None:
    """Generate the configured synthetic dataset under ``cfg.root`` when it is absent (call on rank 0)."""
    if not cfg.synthetic:
        return
    from iceseg import synthetic

    if cfg.synthetic == "river_ice":
        synthetic.make_river_ice_dataset(cfg.root)
    elif cfg.synthetic == "glacier":
        synthetic.make_glacier_dataset(cfg.root)
    elif cfg.synthetic == "autoice":
        from iceseg.autoice import make_synthetic_dataset

        make_synthetic_dataset(cfg.root)
    else:
        raise ValueError(f"data.synthetic must be '', 'river_ice', 'glacier' or 'autoice', not {cfg.synthetic!r}")


def build_dataset(cfg, split: str, train: bool, seed: int = 0) -> SegDataset:
    """Build a dataset from a ``DataConfig`` for ``split`` with the train or test pipeline.

    Raises:
        KeyError: unknown dataset name (lists the valid ones).
    """
    if cfg.dataset not in DATASETS:
        raise KeyError(f"unknown dataset {cfg.dataset!r}; valid: {', '.join(sorted(DATASETS))}")
    pipeline = cfg.train_pipeline if train else cfg.test_pipeline
    return DATASETS[cfg.dataset](cfg, split, pipeline, seed)
