"""Real lidar (laspy's autzen_trim.laz) rasterised, checked against the points, read, trained on."""

import warnings
from pathlib import Path

import laspy
import lazrs  # noqa: F401  (the .laz backend laspy uses)
import numpy as np
import pyproj
import pytest
import rasterio
import torch
from rasterio.transform import rowcol

from rsfusion.catalog import load_card
from rsfusion.cli.train import main as train_main
from rsfusion.data.isprs import ISPRSDataset
from rsfusion.data.labels import PaletteDecoder
from rsfusion.data.lidar import fill_holes, rasterise_point_cloud

LAZ = Path(__file__).parent / "autzen" / "autzen_trim.laz"
FOOT = 0.3048


@pytest.fixture(scope="module")
def points():
    """The points, read here independently of rsfusion.data.lidar."""
    las = laspy.read(str(LAZ))
    return {
        "x": np.asarray(las.x),
        "y": np.asarray(las.y),
        "z": np.asarray(las.z),
        "rgb": np.stack([las.red, las.green, las.blue], axis=1).astype(np.int64),
        "cls": np.asarray(las.classification),
        "crs": las.header.parse_crs(),
    }


@pytest.fixture(scope="module")
def autzen(tmp_path_factory):
    root = tmp_path_factory.mktemp("autzen")
    tile = rasterise_point_cloud(LAZ, root, tile_id="1")
    arrays = {}
    for name, path in tile.paths.items():
        with rasterio.open(path) as src:
            arrays[name] = src.read()
            arrays[f"{name}_meta"] = (src.crs, src.transform, src.bounds, src.nodata)
    return root, tile, arrays


@pytest.fixture(scope="module")
def cells(points, autzen):
    """Row and column of every point, computed by rasterio from the written transform."""
    _, _, arrays = autzen
    transform = arrays["dsm_meta"][1]
    rows, cols = rowcol(transform, points["x"], points["y"])
    return np.asarray(rows), np.asarray(cols)


def test_grid_is_the_las_crs_at_one_metre_and_covers_every_point(points, autzen):
    _, tile, arrays = autzen
    crs, transform, bounds, _ = arrays["dsm_meta"]
    assert tile.las_classes == {1: 83893, 2: 26107}  # the file's own classes
    assert tile.colour_bits == 8  # 8-bit values in the 16-bit LAS colour fields
    assert transform.a == pytest.approx(1 / FOOT) and transform.e == pytest.approx(-1 / FOOT)
    assert crs.to_epsg() == 2994  # NAD83(HARN) / Oregon Lambert (ft)
    assert pyproj.CRS.from_wkt(crs.to_wkt()) == points["crs"]
    assert bounds.left <= points["x"].min() and points["x"].max() < bounds.right
    assert bounds.bottom < points["y"].min() and points["y"].max() <= bounds.top
    for name in ("rgb", "dtm", "ndsm", "labels"):
        assert arrays[f"{name}_meta"][:3] == (crs, transform, bounds)


def test_dsm_and_colour_are_those_of_the_highest_point_of_a_cell(points, autzen, cells):
    _, _, arrays = autzen
    dsm, rgb = arrays["dsm"][0], arrays["rgb"]
    rows, cols = cells
    checked = 0
    for i in range(0, len(rows), 9973):  # a dozen cells spread over the file
        inside = (rows == rows[i]) & (cols == cols[i])
        z = points["z"][inside]
        assert dsm[rows[i], cols[i]] == np.float32(z.max())
        if (z == z.max()).sum() == 1:
            colour = np.clip(points["rgb"][inside][z.argmax()], 1, 255)
            assert rgb[:, rows[i], cols[i]].tolist() == colour.tolist()
            checked += 1
    assert checked >= 5


def test_cells_without_points_are_nodata_everywhere(autzen, cells):
    _, _, arrays = autzen
    dsm, ndsm = arrays["dsm"][0], arrays["ndsm"][0]
    occupied = np.zeros(dsm.shape, bool)
    occupied[cells] = True
    assert np.isnan(arrays["dsm_meta"][3]) and np.isnan(arrays["ndsm_meta"][3])
    assert 0.2 < (~occupied).mean() < 0.6  # the river and the strip's edges: real holes
    np.testing.assert_array_equal(np.isnan(dsm), ~occupied)
    np.testing.assert_array_equal(np.isnan(ndsm), ~occupied)
    assert not np.isnan(arrays["dtm"]).any()  # terrain is interpolated everywhere
    assert (arrays["rgb"][:, ~occupied] == 0).all() and (arrays["rgb"][:, occupied] > 0).all()
    assert (arrays["labels"][:, ~occupied] == 0).all()  # black: ignored by the decoder


def test_ndsm_and_labels_follow_the_ground_points(points, autzen, cells):
    _, _, arrays = autzen
    ndsm, dtm = arrays["ndsm"][0], arrays["dtm"][0]
    rows, cols = cells
    ground = points["cls"] == 2
    has_ground = np.zeros(ndsm.shape, bool)
    has_ground[rows[ground], cols[ground]] = True
    assert (ndsm[has_ground] >= 0).all()
    np.testing.assert_allclose(ndsm, arrays["dsm"][0] - dtm, rtol=0, atol=1e-3)
    i = np.flatnonzero(ground)[1234]  # DTM of a ground cell: mean z of its ground points
    inside = ground & (rows == rows[i]) & (cols == cols[i])
    assert dtm[rows[i], cols[i]] == pytest.approx(points["z"][inside].mean(), abs=1e-3)
    ids = PaletteDecoder(load_card("autzen").palette, 255)(torch.from_numpy(arrays["labels"]))
    ids = ids.numpy()
    assert (ndsm[ids == 1] > 2 / FOOT).all() and (ndsm[(ids == 0) | (ids == 2)] <= 2 / FOOT).all()
    assert has_ground[ids == 0].all() and (ndsm[ids == 0] <= 0.5 / FOOT).all()
    assert 0.1 < (ids == 1).sum() / (ids != 255).sum() < 0.3  # trees and the footbridge


def test_fill_holes_keeps_known_cells_and_interpolates_a_plane():
    yy, xx = np.mgrid[0:20, 0:30].astype(float)
    plane = 100 + 0.5 * xx - 0.25 * yy
    known = np.ones(plane.shape, bool)
    known[5:15, 8:22] = False
    filled = fill_holes(np.where(known, plane, -999.0), known, relax_steps=2000)
    assert (filled[known] == plane[known]).all()
    np.testing.assert_allclose(filled, plane, atol=1e-3)  # a plane is harmonic


def _window(autzen, size=32, row=40, col=120):
    """A window read through ISPRSDataset, and the same window cut from the written arrays.

    The default window is where the footbridge meets the river: holes and every class.
    """
    root, _, arrays = autzen
    ds = ISPRSDataset(root, card="autzen", tiles=["1"], x="dsm")
    left, _, _, top = ds.tiles[0].rgb.grid.bounds
    rx, ry = ds.res
    xmin, ymax = left + col * rx, top - row * ry
    sample = ds[slice(xmin, xmin + size * rx, rx), slice(ymax - size * ry, ymax, ry), slice(None)]
    win = (slice(row, row + size), slice(col, col + size))
    dsm = arrays["dsm"][0]
    lo, hi = np.nanmin(dsm), np.nanmax(dsm)  # XNorm's default: per-raster min-max
    decoded = PaletteDecoder(ds.card.palette, 255)(torch.from_numpy(arrays["labels"]))
    expected = {
        "image": torch.from_numpy(arrays["rgb"][:, win[0], win[1]]).float(),
        "image_x": np.nan_to_num((dsm[win] - lo) / (hi - lo), nan=0.0),
        "mask": decoded[win],
        "hole": np.isnan(dsm[win]),
        "near_hole": _dilate(np.isnan(dsm))[win],
    }
    return sample, expected


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Cells within one cell (8-neighbourhood) of a True cell."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)


def test_isprs_dataset_reads_the_written_rasters(autzen):
    sample, expected = _window(autzen)
    hole, near = expected["hole"], expected["near_hole"]
    assert 0.2 < hole.mean() < 0.8
    assert torch.equal(sample["mask"], expected["mask"])
    assert set(sample["mask"][torch.from_numpy(hole)].tolist()) == {255}
    assert set(sample["mask"].unique().tolist()) == {0, 1, 2, 255}
    image = sample["image"]
    assert torch.equal(image[:, ~torch.from_numpy(hole)], expected["image"][:, ~hole])
    x = sample["image_x"][0].numpy()
    assert not np.isnan(x).any()
    np.testing.assert_allclose(x[~near], expected["image_x"][~near], atol=1e-5)


def test_isprs_dataset_reads_cells_next_to_holes_unchanged(autzen):
    sample, expected = _window(autzen)
    assert torch.equal(sample["image"], expected["image"])
    np.testing.assert_allclose(sample["image_x"][0].numpy(), expected["image_x"], atol=1e-5)


def test_baseline_trains_three_steps_on_autzen(autzen, tmp_path, monkeypatch):
    root, _, _ = autzen
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = train_main(
            [
                "--cfg",
                "demo_baseline",
                "--set",
                "data.card=autzen",
                f"data.root={root}",
                "data.train_tiles=[1]",
                "data.val_tiles=[1]",
                "data.test_tiles=[1]",
                "data.window=32",
                "data.batch_size=2",
                "data.samples_per_epoch=4",
                "trainer.max_steps=3",
                "trainer.limit_val_batches=1",
                "trainer.enable_progress_bar=false",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert code == 0
    ckpt = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["global_step"] == 3
    meta = ckpt["rsfusion"]
    assert meta["classes"] == ["ground", "raised", "other"]
    assert meta["rgb_bands"] == ["red", "green", "blue"]
