"""Streamed raster statistics and the X normalisation modes."""

from pathlib import Path

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


def test_infinity_is_unknown_like_nan(tmp_path):
    arr = np.full((20, 20), 5.0)
    arr[0, 0], arr[1, 1], arr[2, 2] = np.inf, -np.inf, 9.0
    st = raster_stats(_write(tmp_path / "inf.tif", arr))
    assert (st.count, st.minimum, st.maximum) == (400 - 2, 5.0, 9.0)
    assert np.isfinite(st.mean) and np.isfinite(st.std)


@pytest.mark.parametrize("layout", ["strip", "tiled", "striped"])
def test_statistics_read_bounded_windows_whatever_the_block_layout(tmp_path, monkeypatch, layout):
    """A single-strip file is one block of the whole raster: it is still read in small pieces."""
    import rasterio.io

    from rsfusion.data import normalise

    rng = np.random.default_rng(1)
    arr = rng.normal(50, 10, (70, 90))
    profile = {
        "strip": dict(blockysize=70),  # one strip: the whole raster is one block
        "tiled": dict(tiled=True, blockxsize=32, blockysize=32),
        "striped": dict(blockysize=3),
    }[layout]
    path = tmp_path / f"{layout}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=90, height=70, count=1, dtype="float32",
                       crs="EPSG:32632", transform=from_origin(0, 100, 1, 1), compress="deflate",
                       **profile) as dst:  # fmt: skip
        dst.write(arr.astype("float32"), 1)
    with rasterio.open(path) as src:
        assert layout != "strip" or src.block_shapes[0] == (70, 90)
    sizes = []
    read = rasterio.io.DatasetReader.read

    def spy(self, *args, window=None, **kwargs):
        sizes.append(None if window is None else int(window.width) * int(window.height))
        return read(self, *args, window=window, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    monkeypatch.setattr(normalise, "READ_PIXELS", 500)
    st = raster_stats(str(path))
    assert sizes and None not in sizes and max(sizes) <= 500 and sum(sizes) == 70 * 90
    valid = arr.astype("float32").astype("float64")
    assert (st.count, st.minimum, st.maximum) == (70 * 90, valid.min(), valid.max())
    assert st.mean == pytest.approx(valid.mean())


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "not a raster"])
def test_unreadable_raster_is_a_user_error_naming_it(tmp_path, damage):
    from rsfusion.errors import UserError

    rng = np.random.default_rng(2)
    good = _write(tmp_path / "good.tif", rng.normal(0, 1, (64, 64)))
    data = Path(good).read_bytes()
    bad = tmp_path / "bad dsm.tif"
    bad.write_bytes({"truncated": data[: len(data) // 2], "zero bytes": b"",
                     "not a raster": b"<html>404</html>"}[damage])  # fmt: skip
    with pytest.raises(UserError, match=r"cannot read raster .*bad dsm\.tif"):
        raster_stats(str(bad))


def test_a_question_mark_in_a_path_is_part_of_its_name(tmp_path):
    folder = tmp_path / "d?q"
    folder.mkdir()
    src = _write(folder / "a.tif", np.full((8, 8), 1.0) + np.eye(8))
    assert raster_stats(src).maximum == 2.0
    _write(folder / "a.tif", np.full((9, 9), 1.0) + 3 * np.eye(9))  # rewritten: not cached
    assert raster_stats(src).maximum == 4.0


def test_training_reads_treat_infinity_as_unknown(vaihingen_root, tmp_path):
    """An ISPRS DSM with +-inf pixels trains on 0 there (as for NaN), never on 3.4e38."""
    import shutil
    import warnings

    from rsfusion.data.isprs import Vaihingen

    root = tmp_path / "vaihingen"
    shutil.copytree(vaihingen_root, root)
    path = root / "dsm" / "dsm_09cm_matching_area1.tif"
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    data[0, 2:6, 3:9] = np.inf
    data[0, 8, 3:9] = -np.inf
    data[0, 10, 3:9] = np.nan
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = Vaihingen(root, tiles=["1"])
    tile = ds.tiles[0]
    left, _, _, top = tile.rgb.grid.bounds
    res = tile.rgb.grid.transform.a
    query = (slice(left, left + 16 * res, res), slice(top - 16 * res, top, res), slice(None))
    x = ds[query]["image_x"][0].numpy()
    assert np.isfinite(x).all()
    assert (x[2:6, 3:9] == 0).all() and (x[8, 3:9] == 0).all() and (x[10, 3:9] == 0).all()
    assert np.abs(x).max() <= 1.0  # raster_minmax of the finite pixels
