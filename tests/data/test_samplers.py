"""Full-coverage evaluation windows over tiles."""

from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import Affine

from rsfusion.data.samplers import TileGridSampler
from rsfusion.data.tiles import GeoRaster, Grid, Tile


def _tile(tid: str, width: int, height: int, x0: float, res: float = 0.5) -> Tile:
    grid = Grid(CRS.from_epsg(32632), Affine(res, 0, x0, 0, -res, 1000.0), width, height)
    raster = GeoRaster(Path(f"{tid}.tif"), f"{tid}.tif", grid, "native")
    return Tile(tid, raster, None, None, None)


@pytest.mark.parametrize(
    ("width", "height", "window", "stride"),
    [
        (100, 37, 32, None),
        (64, 64, 64, None),
        (20, 10, 32, None),
        (130, 70, 32, 24),
    ],
)
def test_windows_cover_every_pixel_stay_aligned_and_inside(width, height, window, stride):
    res = 0.5
    tile = _tile("1", width, height, x0=500.0, res=res)
    left, bottom, right, top = tile.rgb.grid.bounds
    sampler = TileGridSampler([tile], (res, res), window, stride)
    covered = np.zeros((height, width), dtype=int)
    for x, y, _ in sampler:
        assert (x.stop - x.start) == pytest.approx(window * res)
        assert (y.stop - y.start) == pytest.approx(window * res)
        col = (x.start - left) / res
        row = (top - y.stop) / res
        assert col == pytest.approx(round(col)) and row == pytest.approx(round(row))
        col, row = round(col), round(row)
        assert col >= 0 and row >= 0  # never starts outside the tile
        if width >= window:
            assert x.stop <= right + 1e-9
        if height >= window:
            assert y.start >= bottom - 1e-9
        covered[row : row + window, col : col + window] += 1
    assert covered.min() >= 1


def test_every_tile_gets_windows_and_ids_are_kept():
    tiles = [_tile("1", 64, 64, 0.0), _tile("2", 10, 12, 5000.0)]
    sampler = TileGridSampler(tiles, (0.5, 0.5), 32)
    ids = [tid for tid, _ in sampler.windows]
    assert ids.count("1") == 4 and ids.count("2") == 1
    assert len(sampler) == 5
