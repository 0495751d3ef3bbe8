"""ISPRS datasets on the fake release layouts: discovery, georeferencing, alignment, errors."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rsfusion.catalog import load_card
from rsfusion.data.isprs import ISPRSDataset, Potsdam, Vaihingen
from rsfusion.data.labels import PaletteDecoder
from rsfusion.data.normalise import XNorm
from rsfusion.data.writers import write_geotiff
from rsfusion.errors import TileError


def _load(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Vaihingen(**kwargs)


def _window_query(ds: ISPRSDataset, tile_id: str, row: int, col: int, size: int):
    tile = next(t for t in ds.tiles if t.tile_id == tile_id)
    left, _, _, top = tile.rgb.grid.bounds
    rx, ry = ds.res
    xmin, ymax = left + col * rx, top - row * ry
    return slice(xmin, xmin + size * rx, rx), slice(ymax - size * ry, ymax, ry), slice(None)


def test_partial_root_trains_on_tiles_present_and_names_missing(vaihingen_root):
    with pytest.warns(UserWarning, match=r"13 of 16 tiles are not under") as rec:
        ds = Vaihingen(vaihingen_root, split="train")
    assert [t.tile_id for t in ds.tiles] == ["1", "3", "5"]
    assert any("'7'" in str(w.message) for w in rec)


@pytest.mark.parametrize("tile_id", ["1", "3", "5"])  # native, world file, no georeference
def test_sample_equals_direct_read_of_each_file(vaihingen_root, tile_id):
    ds = _load(root=vaihingen_root, tiles=["1", "3", "5"])
    card = load_card("vaihingen")
    size, row, col = 16, 3, 5
    sample = ds[_window_query(ds, tile_id, row, col, size)]
    win = rasterio.windows.Window(col, row, size, size)
    area = f"area{tile_id}"
    with rasterio.open(vaihingen_root / "top" / f"top_mosaic_09cm_{area}.tif") as src:
        rgb = src.read(window=win)
    with rasterio.open(vaihingen_root / "dsm" / f"dsm_09cm_matching_{area}.tif") as src:
        full = src.read(1)
        dsm = src.read(1, window=win)
    with rasterio.open(vaihingen_root / f"top_mosaic_09cm_{area}.tif") as src:
        label = src.read(window=win)
    assert sample["image"].shape == (3, size, size)
    assert torch.equal(sample["image"], torch.from_numpy(rgb).float())
    expected_x = (dsm - full.min()) / (full.max() - full.min())
    np.testing.assert_allclose(sample["image_x"][0].numpy(), expected_x, atol=1e-5)
    decoded = PaletteDecoder(card.palette, card.ignore_index)(torch.from_numpy(label))
    assert torch.equal(sample["mask"], decoded)


def test_georeference_fallbacks_are_reported(vaihingen_root):
    with pytest.warns(UserWarning) as rec:
        ds = Vaihingen(vaihingen_root, tiles=["1", "3", "5"])
    text = " ".join(str(w.message) for w in rec)
    assert "['5'] have no CRS or transform" in text
    assert "['3'] carry a transform" in text and "EPSG:32632" in text
    how = {t.tile_id: t.rgb.how for t in ds.tiles}
    assert how == {"1": "native", "3": "assumed_crs", "5": "synthetic"}
    assert {t.label.how for t in ds.tiles if t.tile_id == "5"} == {"companion"}
    boxes = [t.rgb.grid.bounds for t in ds.tiles]
    for i, a in enumerate(boxes):  # every tile has its own extent
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_eroded_labels_mark_boundaries_ignore(vaihingen_root):
    full = _load(root=vaihingen_root, tiles=["2"], labels="full")
    eroded = _load(root=vaihingen_root, tiles=["2"], labels="eroded")
    q = _window_query(full, "2", 0, 0, 32)
    a, b = full[q]["mask"], eroded[q]["mask"]
    assert (a != 255).all() and (b == 255).any()
    keep = b != 255
    assert torch.equal(a[keep], b[keep])


def test_dataset_x_norm_uses_pooled_statistics(vaihingen_root):
    ds = _load(root=vaihingen_root, tiles=["1"], x_norm=XNorm("scale", scale=1000.0))
    q = _window_query(ds, "1", 0, 0, 8)
    with rasterio.open(vaihingen_root / "dsm" / "dsm_09cm_matching_area1.tif") as src:
        dsm = src.read(1, window=rasterio.windows.Window(0, 0, 8, 8))
    np.testing.assert_allclose(ds[q]["image_x"][0].numpy(), dsm / 1000.0, rtol=1e-6)


def test_rgb_only_dataset_has_no_x(vaihingen_root):
    ds = _load(root=vaihingen_root, tiles=["1"], x=None)
    sample = ds[_window_query(ds, "1", 0, 0, 8)]
    assert "image_x" not in sample and sample["image"].shape[0] == 3


def test_missing_dsm_is_an_error_naming_the_file_and_fix(vaihingen_root, tmp_path):
    root = tmp_path / "v"
    shutil.copytree(vaihingen_root, root)
    (root / "dsm" / "dsm_09cm_matching_area3.tif").unlink()
    with pytest.raises(TileError, match=r"tile 3: orthophoto .* exists but its dsm") as err:
        _load(root=root, tiles=["1", "3"])
    assert "dsm_09cm_matching_area3.tif" in str(err.value)


def test_dsm_on_another_grid_is_refused(vaihingen_root, tmp_path):
    root = tmp_path / "v"
    shutil.copytree(vaihingen_root, root)
    path = root / "dsm" / "dsm_09cm_matching_area1.tif"
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
        profile["transform"] = src.transform * rasterio.Affine.translation(3, 0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(TileError, match="not on its orthophoto's grid"):
        _load(root=root, tiles=["1"])


def test_no_tile_at_all_names_an_expected_path(tmp_path):
    with pytest.raises(TileError, match="top_mosaic_09cm_area1.tif does not exist"):
        Vaihingen(tmp_path, split="train")


def test_potsdam_band_choice_and_ndsm_jpeg(potsdam_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rgbir = Potsdam(potsdam_root, split="train", rgb="rgbir", x="dsm")
        ndsm = Potsdam(
            potsdam_root, tiles=["2_10"], rgb="irrg", x="ndsm", x_norm=XNorm("scale", scale=255.0)
        )
    assert [t.tile_id for t in rgbir.tiles] == ["2_10", "2_11"]
    q = _window_query(rgbir, "2_10", 0, 0, 16)
    assert rgbir[q]["image"].shape == (4, 16, 16)
    tile = ndsm.tiles[0]
    assert tile.x.path.suffix == ".jpg" and tile.x.how == "companion"
    with rasterio.open(tile.x.path) as src:
        jpeg = src.read(1, window=rasterio.windows.Window(0, 0, 16, 16))
    np.testing.assert_allclose(ndsm[q]["image_x"][0].numpy(), jpeg / 255.0, rtol=1e-6)


def test_potsdam_labels_at_the_top_level_as_the_archives_unpack(potsdam_root):
    ds = _quiet_potsdam(potsdam_root, split="train", x="dsm")
    assert [t.label.path.name for t in ds.tiles] == [
        "top_potsdam_2_10_label.tif", "top_potsdam_2_11_label.tif"
    ]  # fmt: skip
    assert all(t.label.path.parent == potsdam_root for t in ds.tiles)
    assert ds.tiles[0].eroded.path == potsdam_root / "top_potsdam_2_10_label_noBoundary.tif"


def test_potsdam_participants_folders_and_no_boundary_only(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    top_level_labels = lambda d, names: [n for n in names if n.endswith(".py") or (  # noqa: E731
        Path(d) == potsdam_root and n.startswith("top_"))]  # fmt: skip
    shutil.copytree(potsdam_root, root, ignore=top_level_labels)
    full, eroded = (
        root / "5_Labels_for_participants",
        root / "5_Labels_for_participants_no_Boundary",
    )
    full.mkdir()
    eroded.mkdir()
    for tid in ("2_10", "2_11"):
        shutil.copy(potsdam_root / f"top_potsdam_{tid}_label.tif", full)
        shutil.copy(potsdam_root / f"top_potsdam_{tid}_label_noBoundary.tif", eroded)
    ds = _quiet_potsdam(root, split="train", x="dsm", labels="eroded")
    assert [t.eroded.path.parent for t in ds.tiles] == [eroded, eroded]
    assert [t.label.path.parent for t in ds.tiles] == [full, full]
    for path in full.iterdir():  # 5_Labels_all_noBoundary.zip alone: eroded labels only
        path.unlink()
    shutil.copy(potsdam_root / "top_potsdam_2_10_label_noBoundary.tif", root)
    (eroded / "top_potsdam_2_10_label_noBoundary.tif").unlink()
    ds = _quiet_potsdam(root, tiles=["2_10"], x="dsm")  # asks for full, falls back to eroded
    assert ds.tiles[0].label is None and ds.tiles[0].label_for("full") == ds.tiles[0].eroded


def test_potsdam_narrow_ndsm_of_3_13_is_read_on_the_orthophoto_grid(potsdam_root):
    with pytest.warns(UserWarning, match=r"tile 3_13: ndsm .*is 39x32 px, its orthophoto 40x32"):
        ds = Potsdam(potsdam_root, tiles=["3_13"], x="ndsm", x_norm=XNorm("scale", scale=255.0))
    path = potsdam_root / "1_DSM_normalisation/dsm_potsdam_03_13_normalized_lastools.jpg"
    with rasterio.open(path) as src:
        jpeg = src.read(1)
    assert jpeg.shape == (32, 39)
    q = _window_query(ds, "3_13", 0, 24, 16)  # the right edge: columns 24..39
    x = ds[q]["image_x"][0].numpy()
    np.testing.assert_allclose(x[:, :15], jpeg[:16, 24:] / 255.0, rtol=1e-6)
    assert (x[:, 15] == 0).all()  # the missing column: unknown, 0 after normalisation
    assert ds[q]["mask"].shape == (16, 16)


def test_potsdam_far_off_ndsm_is_still_refused(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    shutil.copytree(potsdam_root, root, ignore=shutil.ignore_patterns("*.py"))
    path = root / "1_DSM_normalisation/dsm_potsdam_03_13_normalized_lastools.jpg"
    with rasterio.open(path) as src:
        data = src.read()[:, :, :30]
    path.unlink()
    write_geotiff(path, data, None, None, driver="JPEG")
    with pytest.raises(TileError, match=r"has no georeference and is 30x32 px"):
        _quiet_potsdam(root, tiles=["3_13"], x="ndsm")


def test_potsdam_ownapproach_ndsm_where_lastools_is_absent(potsdam_root):
    with pytest.warns(UserWarning, match=r"ndsm read from another product .*2_11.*ownapproach"):
        ds = Potsdam(potsdam_root, tiles=["2_10", "2_11"], x="ndsm")
    assert ds.tiles[1].x.path.name == "dsm_potsdam_02_11_normalized_ownapproach.jpg"
    assert ds.tiles[0].x.path.name.endswith("_lastools.jpg")


def test_a_georeferenced_dsm_one_column_short_is_accepted(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    shutil.copytree(potsdam_root, root, ignore=shutil.ignore_patterns("*.py"))
    path = root / "1_DSM/dsm_potsdam_02_10.tif"
    with rasterio.open(path) as src:
        data, crs, transform = src.read()[:, :, :-1], src.crs, src.transform
    path.unlink()
    write_geotiff(path, data, crs, transform)
    with pytest.warns(UserWarning, match=r"tile 2_10: dsm .*is 39x32 px"):
        ds = Potsdam(root, tiles=["2_10"], x="dsm", x_norm=XNorm("scale", scale=1.0))
    q = _window_query(ds, "2_10", 0, 24, 16)
    x = ds[q]["image_x"][0].numpy()
    np.testing.assert_allclose(x[:, :15], data[0, :16, 24:], rtol=1e-6)
    assert (x[:, 15] == 0).all()


def _quiet_potsdam(root, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Potsdam(root, **kwargs)
