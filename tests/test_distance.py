"""Exact distance transforms (iceseg/distance.py) against a brute-force reference."""

import math

import numpy as np
import pytest
import torch

from iceseg import distance
from iceseg.distance import class_distance_maps, euclidean_distance, manhattan_distance, within_distance


def brute_force(mask: np.ndarray, metric: str) -> np.ndarray:
    """Distance from every pixel to the nearest True pixel of its (H, W) map, inf when there is none."""
    N, H, W = mask.shape
    yy, xx = np.mgrid[:H, :W]
    out = np.full((N, H, W), np.inf)
    for n in range(N):
        fy, fx = np.nonzero(mask[n])
        if fy.size:
            dy, dx = yy[..., None] - fy, xx[..., None] - fx  # (H, W, F)
            d = np.abs(dy) + np.abs(dx) if metric == "manhattan" else np.sqrt(dy ** 2 + dx ** 2)
            out[n] = d.min(-1)
    return out


def random_masks(seed: int) -> torch.Tensor:
    """Maps of one random size: sparse and dense noise, blobs with holes, borders, empty and full maps."""
    g = torch.Generator().manual_seed(seed)
    H, W = torch.randint(1, 23, (2,), generator=g).tolist()
    m = torch.rand(6, H, W, generator=g) < torch.tensor([0.02, 0.3, 0.8, 0.5, 0.0, 1.0])[:, None, None]
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ring = ((yy - H / 2) ** 2 + (xx - W / 3) ** 2).sqrt()
    m[3] = (ring < max(H, W) / 2.5) & (ring > max(H, W) / 6)  # a blob with a hole, cut by the image border
    return m


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("metric", ["manhattan", "euclidean"])
def test_distance_equals_brute_force(seed, metric):
    m = random_masks(seed)
    fn = manhattan_distance if metric == "manhattan" else euclidean_distance
    ref = brute_force(m.numpy(), metric)
    got = fn(m)
    assert got.dtype == torch.float32 and got.shape == m.shape
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)  # inf on the empty map matches too
    assert torch.isinf(got[4]).all() and (got[5] == 0).all()  # empty and full maps
    cap = 3
    np.testing.assert_allclose(fn(m, cap).numpy(), np.minimum(ref, cap), rtol=0, atol=1e-5)


def test_leading_dimensions_and_single_pixel_values():
    m = torch.zeros(2, 3, 5, 7, dtype=torch.bool)
    m[1, 2, 2, 3] = True
    e, l1 = euclidean_distance(m), manhattan_distance(m)
    assert e.shape == l1.shape == (2, 3, 5, 7)
    assert l1[1, 2, 0, 0] == 5 and e[1, 2, 0, 0] == pytest.approx(math.sqrt(13))
    assert e[1, 2, 3, 4] == pytest.approx(math.sqrt(2)) and l1[1, 2, 3, 4] == 2


@pytest.mark.parametrize("seed", range(6))
def test_within_distance_equals_thresholded_brute_force(seed):
    m = random_masks(seed)
    ref = brute_force(m.numpy(), "euclidean")
    for r in (0.0, 1.0, 1.5, 2.0, 2.3, 5.0, 10.86, 40.0):
        np.testing.assert_array_equal(within_distance(m, r).numpy(), ref <= r + 1e-9)


@pytest.mark.parametrize("metric", ["manhattan", "euclidean"])
@pytest.mark.parametrize("cap", [None, 4])
def test_class_maps_equal_brute_force(metric, cap):
    g = torch.Generator().manual_seed(3)
    label = (torch.rand(2, 13, 17, generator=g) * 3).long()  # classes 0..2; class 3 absent
    label[0, :4, :5] = 255  # ignore pixels count as "not c"
    label[1, 6:, 9:] = 7  # an unknown value, also "not c"
    d_in, d_out = class_distance_maps(label, 4, cap, metric)
    assert d_in.shape == d_out.shape == (2, 4, 13, 17)
    big = math.inf if cap is None else cap
    for c in range(4):
        G = (label == c).numpy()
        ref_out = np.minimum(brute_force(G, metric), big)
        ref_in = np.where(G, np.minimum(brute_force(~G, metric), big), 0.0)
        np.testing.assert_allclose(d_out[:, c].numpy(), ref_out, rtol=0, atol=1e-5)
        np.testing.assert_allclose(d_in[:, c].numpy(), ref_in, rtol=0, atol=1e-5)


def test_class_maps_of_full_and_single_class_images():
    label = torch.ones(1, 6, 6, dtype=torch.long)  # class 1 fills the image, class 0 absent
    d_in, d_out = class_distance_maps(label, 2, 50)
    assert (d_in[0, 1] == 50).all() and (d_in[0, 0] == 0).all()  # full GT: d_in = K (no border background)
    assert (d_out[0, 0] == 50).all() and (d_out[0, 1] == 0).all()  # empty GT: d_out = K


def test_release_1d_example_and_border_convention():
    """lossd.py's comment: GT 1 1 1 1 0 0 0 0, prediction over six pixels -> pred_dist 4 3 2 1 -1 -2 0 0."""
    label = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0]]])
    d_in, d_out = class_distance_maps(label, 2, 50)
    full = d_in[0, 1, 0] - d_out[0, 1, 0]
    pred = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    assert (pred * full).tolist() == [4, 3, 2, 1, -1, -2, 0, 0]  # the left image border is not background


@pytest.mark.parametrize("cap", [None, 5])
def test_torch_code_path_matches_numpy_path(monkeypatch, cap):
    """CUDA tensors run the same steps with torch ops; exercise that path on CPU tensors."""
    g = torch.Generator().manual_seed(7)
    label = (torch.rand(2, 11, 15, generator=g) * 3).long()
    label[1, :3] = 255
    m = random_masks(2)
    want = (class_distance_maps(label, 4, cap), class_distance_maps(label, 3, cap, "euclidean"),
            manhattan_distance(m, cap), within_distance(m, 2.5))
    monkeypatch.setattr(distance, "NUMPY_ON_CPU", False)
    got = (class_distance_maps(label, 4, cap), class_distance_maps(label, 3, cap, "euclidean"),
           manhattan_distance(m, cap), within_distance(m, 2.5))
    for w, g_ in zip(want, got, strict=True):
        torch.testing.assert_close(g_, w, rtol=0, atol=0)


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="bool tensor"):
        manhattan_distance(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="positive integer"):
        manhattan_distance(torch.zeros(3, 3, dtype=torch.bool), 2.5)
    with pytest.raises(ValueError, match="max_dist"):
        euclidean_distance(torch.zeros(3, 3, dtype=torch.bool), -1.0)
    with pytest.raises(ValueError, match="metric"):
        class_distance_maps(torch.zeros(1, 3, 3, dtype=torch.long), 2, 5, "chessboard")
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        class_distance_maps(torch.zeros(3, 3, dtype=torch.long), 2)
