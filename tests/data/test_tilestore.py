"""Tiles held in memory give the torchgeo path's samples bit for bit, or pass the query on."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from rsfusion.catalog import load_card
from rsfusion.data.demo import make_demo_scene, synth_scene, write_tile
from rsfusion.data.isprs import ISPRSDataset
from rsfusion.data.normalise import XNorm
from rsfusion.data.samplers import SeededRandomGeoSampler, TileGridSampler
from rsfusion.data.tilestore import size_text
from rsfusion.data.writers import write_geotiff
from rsfusion.errors import LabelColourError


def _pair(root: Path, card: str = "vaihingen", **kwargs) -> tuple[ISPRSDataset, ISPRSDataset]:
    """The same split twice: read through torchgeo, and held in memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = ISPRSDataset(root, card=card, **kwargs)
        held = ISPRSDataset(root, card=card, **kwargs)
    held.hold_in_memory()
    return plain, held


def _queries(ds: ISPRSDataset, window: int, n: int = 25, seed: int = 5) -> list:
    """Seeded random training windows, then every evaluation window (with overlap, and with a
    window larger than the tiles: padded)."""
    random = list(SeededRandomGeoSampler(ds, window, n, seed=seed))
    grid = list(TileGridSampler(ds.tiles, ds.res, window, window - 3))
    big = list(TileGridSampler(ds.tiles, ds.res, 2 * max(t.rgb.grid.width for t in ds.tiles)))
    return random + grid + big


def _assert_same(a: dict, b: dict, query) -> None:
    assert list(a) == list(b)
    assert a["bounds"] is query and b["bounds"] is query
    for key in a:
        if torch.is_tensor(b[key]):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key], b[key]), (key, query)
        else:
            assert a[key] == b[key], key


def _assert_all_same(plain: ISPRSDataset, held: ISPRSDataset, queries: list) -> None:
    for q in queries:
        _assert_same(held[q], plain[q], q)


def test_demo_scene_samples_are_bitwise_the_torchgeo_samples(tmp_path):
    root = make_demo_scene(tmp_path / "demo", areas=(1, 3, 8), size=64)
    for labels, n in (("full", 80), ("eroded", 10)):
        plain, held = _pair(root, tiles=["1", "3", "8"], labels=labels)
        queries = _queries(plain, 24, n=n)
        _assert_all_same(plain, held, queries)
        store = held.store
        assert store.complete and store.served == len(queries) and store.passed_on == 0
        assert held.memory_need() == store.nbytes == 3 * 64 * 64 * (3 + 4 + 1)


def test_fake_vaihingen_native_world_file_and_ungeoreferenced_tiles(vaihingen_root):
    plain, held = _pair(vaihingen_root, tiles=["1", "3", "5", "2", "4"])
    assert {t.rgb.how for t in plain.tiles} == {"native", "assumed_crs", "synthetic"}
    queries = _queries(plain, 16)
    _assert_all_same(plain, held, queries)
    assert held.store.passed_on == 0


def test_rgb_only_with_eroded_labels(vaihingen_root):
    plain, held = _pair(vaihingen_root, tiles=["1", "3", "5"], x=None, labels="eroded")
    _assert_all_same(plain, held, _queries(plain, 16))
    assert "image_x" not in held[_queries(plain, 16)[0]] and held.store.passed_on == 0


def test_potsdam_jpeg_ndsm_narrower_than_its_orthophoto(potsdam_root):
    kwargs = {"tiles": ["2_10", "2_11", "2_13", "3_13"], "x": "ndsm"}
    plain, held = _pair(potsdam_root, "potsdam", x_norm=XNorm("scale", scale=255.0), **kwargs)
    narrow = next(t for t in plain.tiles if t.tile_id == "3_13")
    assert (narrow.x.grid.width, narrow.rgb.grid.width) == (39, 40)
    queries = _queries(plain, 16)
    _assert_all_same(plain, held, queries)
    assert held.store.passed_on == 0
    left, _, _, top = narrow.rgb.grid.bounds
    rx, ry = plain.res
    edge = (slice(left + 24 * rx, left + 40 * rx, rx), slice(top - 16 * ry, top, ry), slice(None))
    sample = held[edge]
    _assert_same(sample, plain[edge], edge)
    assert (sample["image_x"][0, :, 15] == 0).all()  # the column the nDSM lacks


def test_potsdam_four_band_orthophoto_and_float_dsm(potsdam_root):
    plain, held = _pair(potsdam_root, "potsdam", tiles=["2_10", "2_13"], rgb="rgbir", x="dsm")
    queries = _queries(plain, 16)
    _assert_all_same(plain, held, queries)
    assert held[queries[0]]["image"].shape[0] == 4 and held.store.passed_on == 0


def test_uint8_images_are_the_float_images_cast_on_either_path(vaihingen_root):
    plain, held = _pair(vaihingen_root, tiles=["1", "3", "5"], rgb_raw=True)
    floats, _ = _pair(vaihingen_root, tiles=["1", "3", "5"])
    for q in list(SeededRandomGeoSampler(plain, 16, 20, seed=3)):
        raw, stored = plain[q]["image"], held[q]["image"]
        assert raw.dtype == stored.dtype == torch.uint8
        assert torch.equal(raw, stored) and torch.equal(raw.float(), floats[q]["image"])


def test_align_x_reads_x_through_torchgeo_and_the_rest_from_memory(vaihingen_root):
    plain, held = _pair(vaihingen_root, tiles=["1", "2"], align_x=True)
    store = held.store
    assert all(layer is None for layer in store.x.layers) and not store.complete
    assert all(layer is not None for layer in store.rgb.layers + store.labels.layers)
    queries = _queries(plain, 16, n=10)
    _assert_all_same(plain, held, queries)
    assert store.passed_on == len(queries)


def test_windows_off_the_pixel_grid(vaihingen_root):
    plain, held = _pair(vaihingen_root, tiles=["1", "5"])
    rx, ry = plain.res
    near, far = [], []
    for q in list(SeededRandomGeoSampler(plain, 16, 10, seed=1)):
        for shift, out in ((2e-5, near), (-5e-5, near), (0.3, far), (-0.4, far)):
            dx, dy = shift * rx, shift * ry
            x, y = q[0], q[1]
            out.append((slice(x.start + dx, x.stop + dx), slice(y.start - dy, y.stop - dy), q[2]))
    _assert_all_same(plain, held, near)
    assert held.store.served == len(near) and held.store.passed_on == 0
    _assert_all_same(plain, held, far)  # torchgeo's nearest reads, passed on
    assert held.store.passed_on == len(far)


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "v"
    shutil.copytree(root, out, ignore=shutil.ignore_patterns("*.py"))
    return out


def _rewrite(path: Path, edit, nodata=None) -> None:
    with rasterio.open(path) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    path.unlink()
    write_geotiff(path, edit(data), crs, transform, nodata=nodata)


def test_nodata_nan_and_inf_pixels(vaihingen_root, tmp_path):
    root = _copy(vaihingen_root, tmp_path)

    def holes(dsm):
        dsm = dsm.copy()
        dsm[0, 3:9, 4:12] = -9999.0
        dsm[0, 20, 5] = np.nan
        dsm[0, 21, 6] = np.inf
        return dsm

    def dark(rgb):
        rgb = rgb.copy()
        rgb[:, 10:14, 10:30] = 7
        return rgb

    _rewrite(root / "dsm" / "dsm_09cm_matching_area1.tif", holes, nodata=-9999.0)
    _rewrite(root / "top" / "top_mosaic_09cm_area1.tif", dark, nodata=7)
    plain, held = _pair(root, tiles=["1", "2"], x_norm=XNorm("scale", scale=10.0))
    queries = _queries(plain, 16)
    _assert_all_same(plain, held, queries)
    assert held.store.passed_on == 0
    sample = held[queries[len(queries) - 2]]  # the padded window over tile 1
    assert torch.isfinite(sample["image_x"]).all()


def test_unknown_label_colour_raises_as_on_the_torchgeo_path(vaihingen_root, tmp_path):
    root = _copy(vaihingen_root, tmp_path)

    def stain(labels):
        labels = labels.copy()
        labels[:, 30, 40] = (12, 34, 56)
        return labels

    _rewrite(root / "top_mosaic_09cm_area1.tif", stain)
    plain, held = _pair(root, tiles=["1", "2"], check_labels=False)
    assert held.store.labels.layers.count(None) == 1
    tile = plain.tiles[0]
    left, _, _, top = tile.rgb.grid.bounds
    rx, ry = plain.res
    stained = (slice(left + 32 * rx, left + 48 * rx, rx), slice(top - 40 * ry, top - 24 * ry, ry))
    for ds in (plain, held):
        with pytest.raises(LabelColourError, match=r"colour \(12, 34, 56\) at pixel"):
            ds[(*stained, slice(None))]
    clean = (slice(left, left + 16 * rx, rx), slice(top - 16 * ry, top, ry), slice(None))
    _assert_same(held[clean], plain[clean], clean)


@pytest.mark.parametrize("offset", [20, 40])  # tile 3 overlaps tile 1 (40 px wide), touches it
def test_overlapping_and_touching_tiles(tmp_path, offset):
    card = load_card("vaihingen")
    gsd = float(card.gsd_m)
    for tid, col in (("1", 0), ("3", offset)):
        scene = synth_scene(np.random.default_rng([7, int(tid)]), (32, 40), gsd)
        transform = Affine(gsd, 0.0, 496000.0 + col * gsd, 0.0, -gsd, 5420000.0)
        write_tile(tmp_path, card, tid, scene, card.assumed_crs, transform)
    plain, held = _pair(tmp_path, tiles=["1", "3"])
    queries = _queries(plain, 16, n=30)
    _assert_all_same(plain, held, queries)
    assert held.store.served > 0
    if offset == 20:  # windows over both tiles: torchgeo's merge
        assert held.store.passed_on > 0


def test_transforms_apply_to_the_held_samples(vaihingen_root):
    def shout(sample):
        return {**sample, "image": sample["image"] * 2}

    plain, held = _pair(vaihingen_root, tiles=["1"], transforms=shout)
    _assert_all_same(plain, held, _queries(plain, 16, n=5))


def test_sizes_in_words():
    assert size_text(2000000000) == "1.86 GiB"
