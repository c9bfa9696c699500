"""Segmentation datasets: image/label folders paired by file stem, and the named datasets.

Images: RGB ``.jpg/.jpeg/.png/.bmp`` (Pillow, EXIF orientation applied as OpenCV/mmcv do),
multi-band ``.tif/.tiff`` (tifffile) and ``.npy`` rasters ``(H, W, C)``.
Labels: single-channel index maps (``.png/.tif/.tiff/.npy``) or RGB colour PNGs decoded through a
palette (``class_dict.csv``: ``name,r,g,b``). Label processing follows mmseg's
``LoadAnnotations``: ``reduce_zero_label`` (0 -> ignore, v -> v-1) first, then ``label_map``.

Named datasets (``DATASETS``):
- ``NWPU_YRCC2``: river ice, 4 classes, ``train/ train_labels/ val/ val_labels/ [test/ test_labels/]``,
  raw label values 1..4 with 0 = unlabelled (``reduce_zero_label``), spec icesegnet.md §6.1.
- ``NWPU_YRCC_EX``: 3 classes, same layout, also ``trainannot/ valannot/ testannot/`` (§6.2).
- ``Glacier``: ``masked_<id>.npy`` (H, W, 5) + ``<id>.tif`` masks (0/1 or 0/255) in one folder,
  with a seeded 80/20 split equal to the seed's ``train_test_split(random_state=42)`` on the sorted
  listing (spec unetpp_glacier_and_lossd.md §A2).
- ``Folder``: any ``<root>/<split>`` + ``<root>/<split>_labels`` folder pair.

Every problem found in the files raises an error that names the file and the problem; nothing is
skipped silently.
"""

import csv
import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

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


def _read_tiff(path: Path) -> np.ndarray:
    """``tifffile.imread``, raising on damage tifffile only logs (a truncated file's bad page offsets).

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
        arr = tifffile.imread(path)
    finally:
        logging.getLogger("tifffile").removeHandler(handler)
    damage = [m for m in problems if any(w in m for w in TIFF_DAMAGE)]
    if damage:
        raise ValueError(f"truncated or corrupt TIFF: {damage[0]}")
    return arr


def _load_array(path: Path, what: str, pil_convert) -> np.ndarray:
    """Read ``.npy`` (no pickles), ``.tif/.tiff`` (tifffile) or a Pillow image (after ``pil_convert``).

    Raises:
        ValueError: the file cannot be read, naming it and ``what`` it was meant to be.
    """
    try:
        ext = path.suffix.lower()
        if ext == ".npy":
            return np.load(path, allow_pickle=False)
        if ext in (".tif", ".tiff"):
            return _read_tiff(path)
        with Image.open(path) as im:
            return np.asarray(pil_convert(im))
    except Exception as e:
        raise ValueError(f"{path}: unreadable or corrupt {what} ({type(e).__name__}: {e})") from e


def read_image(path: str | Path) -> np.ndarray:
    """Read an image or raster as ``(H, W, C)``.

    Args:
        path: ``.jpg/.jpeg/.png/.bmp`` (converted to RGB uint8, EXIF orientation applied),
            ``.tif/.tiff`` (tifffile; ``(C, H, W)`` with C <= 32 < H, W is transposed) or ``.npy``.

    Returns:
        ``(H, W, C)`` array, dtype as stored (uint8 for RGB files).

    Raises:
        ValueError: unreadable/corrupt file, or not 2-D/3-D, naming the file.
    """
    path = Path(path)
    arr = _load_array(path, "image", lambda im: ImageOps.exif_transpose(im).convert("RGB"))
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W, 1)
    elif arr.ndim == 3 and arr.shape[0] <= 32 and min(arr.shape[1:]) > 32:
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 2-D or 3-D image, got shape {arr.shape}")
    return arr


def read_label(path: str | Path, palette: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Read a label map as ``(H, W)`` integers.

    Args:
        path: index map (``.png/.tif/.tiff/.npy``; palette-mode PNGs give their indices), or an
            RGB colour PNG, decoded to class indices through ``palette``.
        palette: ``(K, 3)`` RGB class colours, used only for 3-channel labels.

    Returns:
        ``(label, from_colour)``: ``(H, W)`` int64 raw values, and True when they were decoded
        from colours (then they are already class indices).

    Raises:
        ValueError: unreadable file, a colour label without palette, a colour not in the
            palette (the message lists a few offending colours), or non-integer values.
    """
    path = Path(path)
    arr = _load_array(path, "label", lambda im: im.convert("RGB") if im.mode == "RGBA" else im)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]  # (H, W, 1) -> (H, W)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if palette is not None:
            return decode_colour_label(arr, palette, path), True
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all():
            arr = arr[..., 0]  # grey values stored as RGB
        else:
            raise ValueError(f"{path}: colour label but no palette (give the dataset a class_dict.csv)")
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D label map, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) and not np.all(np.mod(arr, 1) == 0):
        raise ValueError(f"{path}: label has non-integer values (dtype {arr.dtype})")
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
        reduce_zero_label: raw 0 -> ignore, v -> v-1 (mmseg).
        label_map: ``{raw: class}`` applied after ``reduce_zero_label``.
        palette: ``(K, 3)`` RGB colours for colour-coded labels.
        binary_mask: labels are 0/1 or 0/255 masks mapped to {0, 1} (the glacier masks).
        pipeline: transform specs (``iceseg.transforms.build_transforms``).
        seed: base seed; sample ``i`` in epoch ``e`` draws from ``default_rng([seed, e, i])``.

    ``__getitem__`` returns ``{"img": (C, H, W) float32, "label": (H, W) int64 (ignore = 255;
    all ignore when there is no label), "name": file stem}``.
    """

    def __init__(self, pairs, num_classes: int, in_channels: int, ignore_index: int = 255,
                 reduce_zero_label: bool = False, label_map: dict | None = None, palette=None,
                 binary_mask: bool = False, pipeline: list | None = None, seed: int = 0):
        self.pairs = list(pairs)
        if not self.pairs:
            raise ValueError("dataset is empty")
        self.num_classes, self.in_channels, self.ignore_index = num_classes, in_channels, ignore_index
        self.reduce_zero_label, self.binary_mask = reduce_zero_label, binary_mask
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self.palette = None if palette is None else np.asarray(palette)
        self.transform = build_transforms(pipeline or [])
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call with the sampler's ``set_epoch``)."""
        self.epoch = epoch

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Read and check pair ``i`` before augmentation: ``(H, W, C)`` image, ``(H, W)`` int64 label."""
        img_path, ann_path = self.pairs[i]
        img = read_image(img_path)
        if img.shape[2] != self.in_channels:
            raise ValueError(f"{img_path}: has {img.shape[2]} channels, the config expects {self.in_channels}")
        if ann_path is None:
            return img, None
        label, from_colour = read_label(ann_path, self.palette)
        if label.shape != img.shape[:2]:
            raise ValueError(f"{ann_path}: label size {label.shape[1]}x{label.shape[0]} (WxH) differs from "
                             f"image {img_path.name} size {img.shape[1]}x{img.shape[0]}")
        return img, self.decode_label(label, ann_path, from_colour)

    def decode_label(self, label: np.ndarray, path, from_colour: bool = False) -> np.ndarray:
        """Apply mask binarisation / ``reduce_zero_label`` (index labels only) / ``label_map``, check values."""
        values = np.unique(label)
        if self.binary_mask:
            if set(values.tolist()) <= {0, 1}:
                return label
            if set(values.tolist()) <= {0, 255}:
                return (label > 127).astype(np.int64)
            raise ValueError(f"{path}: mask values {values[:8].tolist()} are neither 0/1 nor 0/255")
        reduce = self.reduce_zero_label and not from_colour
        if reduce:
            label = np.where(label == 0, 255, label - 1)
            label[label == 254] = 255
        if self.label_map:
            out = label.copy()
            for raw, new in self.label_map.items():
                out[label == raw] = new
            label = out
        values = np.unique(label)
        bad = values[((values < 0) | (values >= self.num_classes)) & (values != self.ignore_index)]
        if bad.size:
            raw = bad + 1 if reduce else bad
            raise ValueError(f"{path}: label values {raw[:8].tolist()} (raw) outside the class set "
                             f"0..{self.num_classes - 1}" + (" after reduce_zero_label" if reduce else "")
                             + f" and ignore {self.ignore_index}")
        return label

    def __getitem__(self, i: int) -> dict:
        img, label = self.load(i)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img, label = self.transform(img, label, rng)
        if label is None:
            label = np.full(img.shape[:2], self.ignore_index, dtype=np.int64)
        img_t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))  # (C, H, W)
        return {"img": img_t, "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)),
                "name": self.pairs[i][0].stem}


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
    palette = None  # RGB colour labels (the original NWPU release) decode through class_dict.csv
    if (root / "class_dict.csv").is_file():
        _, palette = read_class_dict(root / "class_dict.csv")
    return SegDataset(pair_by_stem(root / split, ann), num_classes=len(classes), in_channels=cfg.in_channels,
                      ignore_index=cfg.ignore_index, reduce_zero_label=True, label_map=cfg.label_map,
                      palette=palette, pipeline=pipeline, seed=seed)


def nwpu_yrcc2(cfg, split, pipeline, seed=0) -> SegDataset:
    """NWPU_YRCC2 (4 classes): 1-based index labels (0 ignored), or RGB colours via ``class_dict.csv``."""
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
                      seed=seed)


def folder(cfg, split, pipeline, seed=0) -> SegDataset:
    """Generic ``<root>/<split>`` + ``<root>/<split>_labels`` pairs (optional ``class_dict.csv``)."""
    root = Path(cfg.root)
    palette = read_class_dict(root / "class_dict.csv")[1] if (root / "class_dict.csv").is_file() else None
    return SegDataset(pair_by_stem(root / split, root / f"{split}_labels"), num_classes=cfg.num_classes,
                      in_channels=cfg.in_channels, ignore_index=cfg.ignore_index,
                      reduce_zero_label=cfg.reduce_zero_label, label_map=cfg.label_map, palette=palette,
                      pipeline=pipeline, seed=seed)


def autoice(cfg, split, pipeline, seed=0):
    """AutoICE / AI4Arctic ready-to-train NetCDF scenes (iceseg/autoice.py, needs h5py): random
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
                           seed=seed)


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


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window offsets every ``stride`` with the last one moved back to end at ``size`` (mmseg converters)."""
    n = max(math.ceil((size - tile) / stride), 0) + 1
    return sorted({min(i * stride, max(size - tile, 0)) for i in range(n)})


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
        for y in _tile_starts(H, size, stride):
            for x in _tile_starts(W, size, stride):
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
