"""Streamed raster statistics and the X normalisation modes."""

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsfusion.data.normalise import XNorm, raster_stats


def _write(path, arr, nodata=None, tiled=True):
    profile = dict(
        driver="GTiff",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype="float32",
        crs="EPSG:32632",
        transform=from_origin(0, 100, 1, 1),
        nodata=nodata,
    )
    if tiled:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr.astype("float32"), 1)
    return str(path)


def test_streamed_stats_equal_full_read_and_skip_nodata_and_nan(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(280, 5, (50, 70))
    arr[3, 4] = -9999  # nodata
    arr[10, 11] = np.nan
    src = _write(tmp_path / "dsm.tif", arr, nodata=-9999)
    st = raster_stats(src)
    valid = arr[(arr != -9999) & np.isfinite(arr)].astype("float32").astype("float64")
    assert st.count == valid.size == 50 * 70 - 2
    assert st.minimum == pytest.approx(valid.min())
    assert st.maximum == pytest.approx(valid.max())
    assert st.mean == pytest.approx(valid.mean())
    assert st.std == pytest.approx(valid.std(), rel=1e-6)


def test_modes_give_the_expected_affine(tmp_path):
    a = _write(tmp_path / "a.tif", np.full((20, 20), 10.0) + np.eye(20) * 30)  # 10..40
    b = _write(tmp_path / "b.tif", np.full((20, 20), 100.0) + np.eye(20) * 2, tiled=False)
    assert XNorm("raster_minmax").affine(a) == pytest.approx((10.0, 30.0))
    assert XNorm("raster_minmax").affine(b) == pytest.approx((100.0, 2.0))
    assert XNorm("scale", scale=255.0).affine(a) == (0.0, 255.0)
    pooled = XNorm.fit("dataset", [a, b])
    both = np.concatenate(
        [np.full(400, 10.0) + np.eye(20).ravel() * 30, np.full(400, 100.0) + np.eye(20).ravel() * 2]
    )
    assert pooled.affine(a) == pytest.approx((both.mean(), both.std()), rel=1e-6)
    with pytest.raises(ValueError, match="XNorm.fit"):
        XNorm("dataset").affine(a)


def test_all_nodata_raster_is_an_error_naming_it(tmp_path):
    src = _write(tmp_path / "empty.tif", np.full((8, 8), -1.0), nodata=-1)
    with pytest.raises(ValueError, match="empty.tif"):
        raster_stats(src)
