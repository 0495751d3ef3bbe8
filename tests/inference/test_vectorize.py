"""Tests for rsfusion.inference.vectorize: streamed class polygons in a GeoPackage."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsfusion.data.writers import write_geotiff
from rsfusion.inference.vectorize import vectorize_classes

NAMES = ["background", "building", "tree", "car"]


@pytest.fixture()
def class_raster(tmp_path: Path) -> Path:
    """100 x 80 px at 0.5 m: background 0, known rectangles, a nodata (255) strip."""
    arr = np.zeros((100, 80), np.uint8)
    arr[5:45, 10:30] = 1  # building 40 x 20 px = 200 m2, crosses the 16-row band edges
    arr[60:64, 50:54] = 3  # car 4 x 4 px = 4 m2
    arr[50:90, 60:70] = 2  # tree 40 x 10 px = 100 m2
    arr[:, 75:] = 255  # nodata strip, 5 px wide
    path = tmp_path / "classes.tif"
    write_geotiff(path, arr, "EPSG:32632", from_origin(496000.0, 5420000.0, 0.5, 0.5), nodata=255)
    return path


@pytest.mark.parametrize("block_rows", [16, 7, 1000])
def test_areas_match_rectangles(class_raster: Path, tmp_path: Path, block_rows: int) -> None:
    out = vectorize_classes(class_raster, tmp_path / "out.gpkg", NAMES, block_rows=block_rows)
    gdf = gpd.read_file(out)
    assert list(gdf.columns) == ["class_id", "class_name", "area", "geometry"]
    assert gdf.crs == rasterio.open(class_raster).crs
    by_class = gdf.groupby("class_id")
    assert by_class.size().to_dict() == {0: 1, 1: 1, 2: 1, 3: 1}, "not dissolved at band edges"
    areas = by_class["area"].sum().to_dict()
    assert areas[1] == pytest.approx(200.0)
    assert areas[2] == pytest.approx(100.0)
    assert areas[3] == pytest.approx(4.0)
    # background: 75 x 100 valid px minus the rectangles, with holes where they sit
    assert areas[0] == pytest.approx(75 * 100 * 0.25 - 304.0)
    np.testing.assert_allclose(gdf.geometry.area, gdf["area"])
    assert set(gdf["class_name"]) == set(NAMES)
    assert gdf.geometry.total_bounds[2] == pytest.approx(496000.0 + 75 * 0.5)  # nodata excluded
    assert gdf.geometry.is_valid.all()
    assert [p.name for p in tmp_path.iterdir()] == ["classes.tif", "out.gpkg"]


def test_min_area_and_simplify(class_raster: Path, tmp_path: Path) -> None:
    out = vectorize_classes(class_raster, tmp_path / "o.gpkg", NAMES, min_area=10.0, simplify=0.1)
    gdf = gpd.read_file(out)
    assert 3 not in set(gdf["class_id"])  # the 4 m2 car is dropped
    assert sorted(gdf["class_id"]) == [0, 1, 2]


def test_nodata_override_and_unknown_ids(tmp_path: Path) -> None:
    arr = np.full((20, 20), 7, np.uint8)
    arr[:10] = 0
    path = tmp_path / "c.tif"
    write_geotiff(path, arr, "EPSG:32632", from_origin(0.0, 20.0, 1.0, 1.0))
    gdf = gpd.read_file(vectorize_classes(path, tmp_path / "a.gpkg", NAMES, nodata=0))
    assert gdf["class_id"].tolist() == [7] and gdf["class_name"].tolist() == ["7"]
    assert gdf["area"].tolist() == [200.0]
    empty = gpd.read_file(vectorize_classes(path, tmp_path / "b.gpkg", NAMES, min_area=1e6))
    assert len(empty) == 0 and empty.crs == gdf.crs


def test_disk_full_leaves_nothing_and_names_the_file(class_raster: Path, tmp_path: Path,
                                                     monkeypatch) -> None:  # fmt: skip
    import errno

    import pyogrio

    from rsfusion.errors import PredictionError

    write = pyogrio.write_dataframe
    calls = []

    def fill_up(frame, path, **kwargs):
        calls.append(path)
        write(frame, path, **kwargs)  # a part lands in the temporary file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pyogrio, "write_dataframe", fill_up)
    with pytest.raises(PredictionError, match=r"cannot write .*out\.gpkg: No space left"):
        vectorize_classes(class_raster, tmp_path / "out.gpkg", NAMES)
    assert calls and [p.name for p in tmp_path.iterdir()] == ["classes.tif"]


def test_planted_links_are_not_followed(class_raster: Path, tmp_path: Path) -> None:
    import os

    outside = tmp_path / "elsewhere.gpkg"
    outside.write_text("keep me")
    final = tmp_path / "out.gpkg"
    pid = os.getpid()
    for suffix in ("", "-wal", "-journal"):
        (tmp_path / f".out.gpkg.{pid}.partial.gpkg{suffix}").symlink_to(outside)
    vectorize_classes(class_raster, final, NAMES)
    assert outside.read_text() == "keep me" and len(gpd.read_file(final)) > 0
