"""Training curves of a run as one PNG: loss, learning rate and every scalar validation metric against iterations.

    python dev/plot_log.py work_dirs/unetpp_glacier_debug                   # -> <work_dir>/curves.png
    python dev/plot_log.py work_dirs/demo --metrics mIoU,aAcc --out demo.png

Reads ``<work_dir>/log.jsonl`` as train.py writes it (one JSON object per line: ``"event": "train"`` rows with
``loss`` and ``lr``, ``"event": "val"`` rows with the metrics; mmseg's ``tools/analysis_tools/analyze_logs.py``
draws the same from its logs). Needs matplotlib, an optional extra (``pip install matplotlib``); iceseg itself
never imports it. Undefined scores (``null``) are left out of their curve.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """``(train rows, val rows)`` of a ``log.jsonl``. Raises ValueError naming the file and line when a line is
    not JSON, FileNotFoundError when the file is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (train.py writes it into the work dir)")
    train, val = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from e
        (train if row.get("event") == "train" else val if row.get("event") == "val" else []).append(row)
    return train, val


def scalar_metrics(val: list[dict]) -> list[str]:
    """Names of the numeric, non-list validation entries, in the log's order (``iter``/``epoch`` left out)."""
    names = {}
    for row in val:
        for k, v in row.items():
            if k not in ("event", "iter", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                names[k] = None
    return list(names)


def plot(work_dir: Path, out: Path, metrics: list[str] | None = None) -> Path:
    """Draw the curves of ``work_dir/log.jsonl`` into ``out`` (PNG, written atomically) and return it.

    Raises:
        FileNotFoundError: no log; ValueError: a bad line, no rows, or an unknown metric name;
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("dev/plot_log.py needs matplotlib, an optional extra: pip install matplotlib") from e
    train, val = read_log(work_dir / "log.jsonl")
    if not train and not val:
        raise ValueError(f"{work_dir / 'log.jsonl'}: no train or val rows yet")
    found = scalar_metrics(val)
    metrics = found if metrics is None else metrics
    unknown = [m for m in metrics if m not in found]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in {work_dir / 'log.jsonl'}; it has {', '.join(found)}")
    panels = [("loss", train), ("lr", train)] + [(m, val) for m in metrics]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (key, source) in zip(axes.flat, panels, strict=False):
        pts = [(r["iter"], r[key]) for r in source if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if source is val else None, markersize=3)
        ax.set_title(f"{key} ({'validation' if source is val else 'train'})", fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(str(work_dir), fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work_dir", help="a train.py work dir (holds log.jsonl)")
    ap.add_argument("--out", default="", help="PNG path (default <work_dir>/curves.png)")
    ap.add_argument("--metrics", default="", help="comma list of validation metrics (default: every scalar one)")
    args = ap.parse_args()
    work_dir = Path(args.work_dir)
    try:
        out = plot(work_dir, Path(args.out) if args.out else work_dir / "curves.png",
                   args.metrics.split(",") if args.metrics else None)
    except (FileNotFoundError, ValueError, ImportError) as e:
        sys.exit(f"error: {e.args[0]}")
    print(f"curves written to {out}")


if __name__ == "__main__":
    main()
