"""Scene prediction benchmark: predict.py on synthetic GeoTIFF scenes of growing size, as a user runs it.

    python dev/bench_scene.py [--sizes 2048,8192,16384] [--configs unetpp_glacier,icesegnet_yrcc2]
                              [--work work_dirs/bench_scene] [--json bench_scene.json] [overrides for predict.py]

Dev tool (not part of the library). For each config it saves a randomly initialised checkpoint, writes one
synthetic scene per size (a smooth multi-band pattern, tiled 256 x 256, zlib: small on disk and cheap to
decode; written tile by tile, never held whole), then runs ``predict.py`` on it in a fresh process per scene
and reports wall time, megapixels/s (scene pixels / predict.py's time for the scene, model included) and
peak RSS (``ru_maxrss`` of that process). The last column divides each peak by the smallest scene's: the
memory bound of the tiled reader/writer says it should stay near 1 whatever the scene size.
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_synthetic_scene(path: Path, size: int, bands: int, dtype, tile: int = 256) -> None:
    """A ``size x size x bands`` tiled GeoTIFF (UTM 33N, 10 m pixels) of smooth stripes, written tile by tile."""
    import tifffile

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                yy, xx = np.mgrid[y:y + tile, x:x + tile].astype(np.float32)
                base = 0.5 + 0.4 * np.sin(yy / 97.0 + xx / 131.0)  # (tile, tile) in [0.1, 0.9]
                t = np.stack([base * (0.6 + 0.1 * b) for b in range(bands)], -1)  # (tile, tile, bands)
                yield (t * 255).astype(dtype) if dtype == np.uint8 else t.astype(dtype)

    keys = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633, 3076, 0, 1, 9001)
    tags = [(33550, 12, 3, (10.0, 10.0, 0.0), True), (33922, 12, 6, (0, 0, 0, 400000.0, 5000000.0, 0), True),
            (34735, 3, len(keys), keys, True)]
    tmp = path.with_name(path.name + ".tmp")  # a failed write leaves no scene behind
    tifffile.imwrite(tmp, tiles(), shape=(size, size, bands), dtype=dtype, tile=(tile, tile), compression="zlib",
                     photometric="minisblack", planarconfig="contig", extratags=tags, metadata=None,
                     bigtiff=size * size * bands * np.dtype(dtype).itemsize >= 2**32 - 2**25)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2048,8192,16384")
    ap.add_argument("--configs", default="unetpp_glacier,icesegnet_yrcc2")
    ap.add_argument("--work", default="work_dirs/bench_scene")
    ap.add_argument("--json", default="")
    args, extra = ap.parse_known_args()
    import torch

    import configs
    from iceseg.segmentor import build_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for name in args.configs.split(","):
        cfg = configs.get_config(name)
        configs.apply_overrides(cfg, [e for e in extra if e.startswith("--") and "." in e.split("=")[0]])
        ckpt = work / f"{name}.pt"
        if not ckpt.is_file():
            torch.manual_seed(0)
            torch.save({"model": build_model(cfg).state_dict(), "config": configs.to_dict(cfg)}, ckpt)
        dtype = np.uint8 if cfg.data.test_pipeline else np.float32  # Normalize expects 0..255, the glacier 0..1
        for size in sizes:
            scene = work / f"scene_{cfg.data.in_channels}b_{np.dtype(dtype).name}_{size}.tif"
            if not scene.is_file():
                write_synthetic_scene(scene, size, cfg.data.in_channels, dtype)
            t0 = time.time()
            proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), str(scene), "--checkpoint", str(ckpt),
                                   "--out", str(work / f"out_{name}"), *extra], capture_output=True, text=True)
            wall = time.time() - t0
            if proc.returncode:
                sys.exit(f"{name} {size}: predict.py failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            mpx = float(re.search(r"\(([\d.]+) Mpx/s\)", proc.stdout)[1])
            rss = float(re.search(r"peak RSS (\d+) MiB", proc.stdout)[1])
            windows = int(re.search(r"(\d+) windows run", proc.stdout)[1])
            results.append({"config": name, "size": size, "windows": windows, "wall_s": wall, "mpx_per_s": mpx,
                            "peak_rss_mib": rss})
            print(f"{name:18s} {size:6d}^2  {windows:5d} windows  {wall:8.1f} s  {mpx:7.3f} Mpx/s  "
                  f"peak RSS {rss:7.0f} MiB  ({rss / next(r['peak_rss_mib'] for r in results if r['config'] == name):.3f}"
                  f" x the {sizes[0]}^2 scene)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                               "extra": extra, "results": results}, indent=2))


if __name__ == "__main__":
    main()
