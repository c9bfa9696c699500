"""Time the distance maps Lossd needs: a batch of 8 label maps of 1024 x 1024 with 7 classes.

    python dev/bench_distance.py [--batch 8] [--size 1024] [--classes 7] [--repeat 5]

Prints the best and median wall time of ``iceseg.distance.class_distance_maps`` (Manhattan, K = 50:
inside and outside maps of every class as float32), plus one Euclidean run and the BFscore test
``within_distance`` for comparison. Labels are smooth random blobs with an ignore band, so every
class is present in every image.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iceseg.distance import class_distance_maps, within_distance  # noqa: E402


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    B, K, S = args.batch, args.classes, args.size
    g = torch.Generator().manual_seed(0)
    label = torch.nn.functional.interpolate(torch.randn(B, K, 32, 32, generator=g), size=(S, S),
                                            mode="bilinear").argmax(1)  # (B, S, S)
    label[:, : S // 50] = 255
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; labels {tuple(label.shape)}, {K} classes")
    t = timed(lambda: class_distance_maps(label, K, 50, "manhattan"), args.repeat)
    print(f"manhattan K=50 (d_in + d_out, float32): best {min(t):.3f} s, median {statistics.median(t):.3f} s")
    t = timed(lambda: class_distance_maps(label[:1], K, 50, "euclidean"), 1)
    print(f"euclidean, 1 image: {t[0]:.3f} s")
    edges = torch.zeros(2 * K, S, S, dtype=torch.bool)
    edges[:, ::37, :] = True
    t = timed(lambda: within_distance(edges, 0.0075 * S * 2 ** 0.5), 3)
    print(f"within_distance, {2 * K} maps, theta 0.75 % of the diagonal: best {min(t):.3f} s")


if __name__ == "__main__":
    main()
