"""What checkpoints record of their training rasters (rsfusion.data.raster_facts)."""

import time

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsfusion.data.raster_facts import (
    crs_name,
    gsd_metres,
    inputs_record,
    sample_range,
    sample_windows,
)


def _raster(path, data, crs="EPSG:32632", res=0.09, nodata=None):
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
        count=data.shape[0], dtype=data.dtype.name, crs=crs,
        transform=from_origin(500000, 5400000, res, res), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data)
    return str(path)


def test_the_record_comes_from_the_rasters_else_from_the_card(tmp_path):
    a = _raster(tmp_path / "a.tif", np.full((3, 20, 20), 12, np.uint8))
    b = _raster(tmp_path / "b.tif", np.full((3, 20, 20), 200, np.uint8))
    x = _raster(tmp_path / "x.tif", np.linspace(250, 300, 400, dtype=np.float32).reshape(20, 20))
    record = inputs_record(None, [a, b], "uint8", [x], "float32", grids=[
        (CRS.from_epsg(32632), from_origin(0, 0, 0.09, 0.09), 20, 20)])  # fmt: skip
    assert record["rgb"] == {"dtype": "uint8", "range": [12.0, 200.0],
                             "from": "2 training raster(s)"}  # fmt: skip
    assert record["x"]["range"] == [250.0, 300.0]
    assert record["gsd_m"] == pytest.approx(0.09) and record["gsd_from"] == "training rasters"
    card_only = inputs_record(0.05, [str(tmp_path / "missing.tif")], "uint8", None)
    assert card_only["rgb"] == {"dtype": "uint8", "range": [0.0, 255.0], "from": "dataset card"}
    assert card_only["x"] is None and card_only["gsd_from"] == "dataset card"


def test_nodata_and_non_finite_values_are_left_out_of_the_range(tmp_path):
    data = np.full((20, 20), 5.0, np.float32)
    data[0, :5] = [-9999, np.nan, np.inf, -np.inf, 7.0]
    with rasterio.open(_raster(tmp_path / "x.tif", data, nodata=-9999)) as src:
        assert sample_range(src) == (5.0, 7.0)


def test_sampling_a_raster_declaring_a_huge_size_stays_bounded(tmp_path):
    small = _raster(tmp_path / "s.tif", np.ones((8, 8), np.uint8))
    vrt = tmp_path / "huge.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="1000000" rasterYSize="1000000"><SRS>EPSG:32632</SRS>'
        '<GeoTransform>0, 1, 0, 0, 0, -1</GeoTransform><VRTRasterBand dataType="Byte" band="1">'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{small}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    assert len(sample_windows(10**6, 10**6)) == 9
    start = time.perf_counter()
    with rasterio.open(vrt) as src:
        assert sample_range(src) == (0.0, 1.0)  # its corner holds the 8 x 8 ones, the rest 0
    assert time.perf_counter() - start < 10


def test_pixel_sizes_in_metres_of_feet_and_degrees():
    feet = CRS.from_epsg(2227)  # California zone 3, US survey feet
    assert gsd_metres(feet, from_origin(0, 0, 1.0, 1.0), 10, 10) == pytest.approx(0.3048, 1e-4)
    assert gsd_metres("EPSG:4326", from_origin(9, 48.5, 1e-5, 1e-5), 100, 100) == pytest.approx(
        (1e-5 * 111320 * np.cos(np.radians(48.4995)) + 1e-5 * 111320) / 2, rel=1e-4
    )
    local = CRS.from_wkt('LOCAL_CS["site",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]')
    assert crs_name(local) == '"site" (no authority code)'
