"""Tests for rsfusion.inference.blending."""

import numpy as np
import pytest
from rasterio.windows import Window

from rsfusion.data.windows import plan_windows
from rsfusion.inference.blending import edge_aware, profile_1d, weight_map

MODES = ["cosine", "linear", "none"]


@pytest.mark.parametrize("mode", ["cosine", "linear"])
@pytest.mark.parametrize(("window", "overlap"), [(32, 8), (31, 7), ((24, 17), (6, 5)), (16, 12)])
def test_smooth_maps_symmetric_peak_one_positive(mode, window, overlap):
    w = weight_map(window, overlap, mode)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, w[::-1, :], atol=1e-7)
    np.testing.assert_allclose(w, w[:, ::-1], atol=1e-7)
    assert w.max() == pytest.approx(1.0)
    assert w.min() > 0


def test_known_profiles():
    t = (np.arange(4) + 0.5) / 4
    cos = profile_1d(10, 4, "cosine")
    np.testing.assert_allclose(cos[:4], 0.5 * (1 - np.cos(np.pi * t)), rtol=1e-6)
    np.testing.assert_allclose(cos[4:6], 1.0)
    np.testing.assert_allclose(cos[6:], cos[:4][::-1])
    np.testing.assert_allclose(
        profile_1d(10, 4, "linear"), [0.125, 0.375, 0.625, 0.875, 1, 1, 0.875, 0.625, 0.375, 0.125]
    )
    np.testing.assert_array_equal(profile_1d(10, 5, "none"), [0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(profile_1d(6, 0, "cosine"), np.ones(6))


@pytest.mark.parametrize("mode", ["cosine", "linear"])
def test_ramps_are_a_partition_of_unity(mode):
    """Two windows overlapping by exactly ``overlap`` pixels sum to 1 in the overlap."""
    p = profile_1d(20, 6, mode)
    np.testing.assert_allclose(p[-6:] + p[:6], 1.0, rtol=1e-6)


def test_weight_map_is_outer_product_and_none_is_centre_crop():
    w = weight_map((8, 12), (4, 6), "linear")
    np.testing.assert_allclose(w, np.outer(profile_1d(8, 4, "linear"), profile_1d(12, 6, "linear")))
    crop = weight_map(8, 4, "none")
    assert crop.sum() == 16 and crop[2:6, 2:6].min() == 1


@pytest.mark.parametrize("bad", [dict(overlap=32), dict(overlap=-1), dict(mode="gauss")])
def test_invalid_arguments(bad):
    kwargs = dict(window=32, overlap=8, mode="cosine") | bad
    with pytest.raises(ValueError):
        weight_map(**kwargs)


def test_edge_aware_lifts_only_border_sides():
    w = weight_map(16, 6, "cosine")
    # Window touching the top and left border of a 100x100 raster only.
    out = edge_aware(w, Window(0, 0, 16, 16), 100, 100)
    np.testing.assert_array_equal(w, weight_map(16, 6, "cosine"))  # input untouched
    cols = profile_1d(16, 6, "cosine")
    np.testing.assert_allclose(out[0], np.r_[np.ones(8), cols[8:]])
    np.testing.assert_allclose(out[:, 0], np.r_[np.ones(8), cols[8:]])
    np.testing.assert_allclose(out[8:, 8:], w[8:, 8:])
    # An interior window is unchanged.
    np.testing.assert_array_equal(edge_aware(w, Window(20, 20, 16, 16), 100, 100), w)
    # A window covering a smaller raster touches all four sides: all ones.
    np.testing.assert_array_equal(edge_aware(w, Window(0, 0, 16, 16), 10, 16), np.ones((16, 16)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("height", "width", "window", "overlap"),
    [(97, 131, 32, 8), (53, 41, 15, 5), (9, 77, 16, 7), (61, 59, 21, 20)],
)
def test_edge_aware_plan_covers_every_pixel(mode, height, width, window, overlap):
    total = np.zeros((height, width))
    base = weight_map(window, overlap, mode)
    for win in plan_windows(height, width, window, window - overlap):
        w = edge_aware(base, win, height, width)
        r, c = int(win.row_off), int(win.col_off)
        h, wd = min(window, height - r), min(window, width - c)
        total[r : r + h, c : c + wd] += w[:h, :wd]
    assert total.min() > 0
    if mode != "none":
        # Border pixels are not down-weighted relative to the interior.
        assert total[0].min() >= 0.5 and total[:, 0].min() >= 0.5
