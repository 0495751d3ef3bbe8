"""Full-coverage evaluation windows over tiles."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import Affine

from rsfusion.cli.train import main
from rsfusion.data.isprs import Potsdam
from rsfusion.data.samplers import SeededRandomGeoSampler, TileGridSampler
from rsfusion.data.tiles import GeoRaster, Grid, Tile
from rsfusion.data.writers import write_geotiff
from rsfusion.errors import TileError


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


def _tiny_potsdam(root: Path, size: int = 2) -> Path:
    """torchgeo's fake Potsdam: 2x2 px tiles, georeferenced orthophoto and DSM, labels without
    a georeference (tests/data/potsdam/data.py of microsoft/torchgeo)."""
    for i, tid in enumerate(("2_10", "2_11")):
        row, col = tid.split("_")
        transform = Affine(0.05, 0, 366976.5 + 10 * i, 0, -0.05, 5808562.6)
        rgb = np.full((3, size, size), 90 + i, np.uint8)
        write_geotiff(root / f"2_Ortho_RGB/top_potsdam_{tid}_RGB.tif", rgb, "EPSG:32633", transform)
        dsm = np.full((1, size, size), 40.0, np.float32)
        dsm_name = f"1_DSM/dsm_potsdam_{int(row):02d}_{int(col):02d}.tif"
        write_geotiff(root / dsm_name, dsm, "EPSG:32633", transform)
        label = np.full((3, size, size), 255, np.uint8)  # impervious surfaces
        write_geotiff(root / f"top_potsdam_{tid}_label.tif", label, None, None)
    return root


def test_training_tiles_smaller_than_the_window_are_one_error(tmp_path):
    root = _tiny_potsdam(tmp_path / "potsdam")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = Potsdam(root, tiles=["2_10", "2_11"], x="dsm")
    with pytest.raises(TileError) as err:
        SeededRandomGeoSampler(ds, 32, 10, seed=0)
    msg = str(err.value)
    assert "2_10 (2x2 px), 2_11 (2x2 px)" in msg and "training window of 32x32 px" in msg
    assert "set data.window to at most 2" in msg
    windows = list(SeededRandomGeoSampler(ds, 2, 4, seed=0))  # a window that fits
    assert len(windows) == 4 and ds[windows[0]]["image"].shape == (3, 2, 2)


def test_training_on_tiles_smaller_than_the_window_ends_in_one_error_line(tmp_path, capsys):
    root = _tiny_potsdam(tmp_path / "potsdam")
    args = ["--cfg", "potsdam_baseline", "--out", str(tmp_path / "run"), "--set",
            f"data.root={root}", "data.train_tiles=[2_10]", "data.val_tiles=[2_11]",
            "data.window=32", "data.num_workers=0", "trainer.max_steps=1",
            "trainer.accelerator=cpu", "model.weights=null"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: training tile(s) 2_10 (2x2 px)")
    assert "32x32 px" in errors[0] and "Traceback" not in err and "multinomial" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
