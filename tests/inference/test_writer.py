"""Tests for rsfusion.inference.writer: streaming atomic GeoTIFF and COG export."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsfusion.inference.writer import StreamingGeoTIFF, class_dtype, regrid, to_cog

TRANSFORM = from_origin(496000.0, 5420000.0, 0.5, 0.5)
GRID = ("EPSG:32632", TRANSFORM, 517, 300)
NAMES = ["impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter"]
COLOURS = {
    0: (255, 255, 255, 255),
    1: (0, 0, 255, 255),
    2: (0, 255, 255, 255),
    3: (0, 255, 0, 255),
    4: (255, 255, 0, 255),
    5: (255, 0, 0, 255),
}


def _classes(seed: int = 0) -> np.ndarray:
    """A (1, 300, 517) uint8 class map with some nodata (255)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 6, (1, 300, 517), dtype=np.uint8)
    arr[0, 10:40, 100:200] = 255
    return arr


def _write(path: Path, arr: np.ndarray, chunks=(1, 63, 100, 7, 129), **kw) -> None:
    kw = {"nodata": 255, "colormap": COLOURS, "class_names": NAMES, "block": 64} | kw
    with StreamingGeoTIFF(path, GRID, count=arr.shape[0], dtype=arr.dtype, **kw) as w:
        row = 0
        for n in chunks:
            w.write_rows(row, arr[:, row : row + n])
            row += n


def test_class_dtype() -> None:
    assert class_dtype(6) == "uint8"
    assert class_dtype(255) == "uint8"
    assert class_dtype(256) == "uint16"
    with pytest.raises(ValueError):
        class_dtype(0)


def test_uneven_chunks_round_trip_with_metadata(tmp_path: Path) -> None:
    arr = _classes()
    out = tmp_path / "pred.tif"
    _write(out, arr)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.tif"]
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), arr)
        assert src.crs == CRS.from_epsg(32632)
        assert src.transform == TRANSFORM
        assert src.nodata == 255
        assert src.profile["tiled"] and src.block_shapes[0] == (64, 64)
        assert src.compression.name.lower() == "deflate"
        cmap = src.colormap(1)
        assert all(cmap[k] == v for k, v in COLOURS.items())
        assert src.descriptions == ("class",)
        assert json.loads(src.tags()["CLASS_NAMES"]) == NAMES


def test_profile_and_multiband_descriptions(tmp_path: Path) -> None:
    probs = np.random.default_rng(1).random((2, 300, 517), dtype=np.float32)
    profile = {"crs": "EPSG:32632", "transform": TRANSFORM, "width": 517, "height": 300}
    out = tmp_path / "probs.tif"
    with StreamingGeoTIFF(out, profile, 2, "float32", band_descriptions=["p_a", "p_b"]) as w:
        w.write_rows(0, probs[:, :150])
        w.write_rows(150, probs[:, 150:])
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), probs)
        assert src.descriptions == ("p_a", "p_b")


def test_exception_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "pred.tif"
    with pytest.raises(RuntimeError, match="boom"), StreamingGeoTIFF(out, GRID, 1, "uint8") as w:
        w.write_rows(0, np.zeros((1, 100, 517), np.uint8))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_or_out_of_order_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "pred.tif"
    with pytest.raises(ValueError, match="in order"), StreamingGeoTIFF(out, GRID, 1, "uint8") as w:
        w.write_rows(10, np.zeros((1, 5, 517), np.uint8))
    with (
        pytest.raises(ValueError, match="rows were written"),
        StreamingGeoTIFF(out, GRID, 1, "uint8") as w,
    ):
        w.write_rows(0, np.zeros((1, 299, 517), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_colormap_needs_uint8_single_band(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="colour table"):
        StreamingGeoTIFF(tmp_path / "x.tif", GRID, 1, "uint16", colormap=COLOURS)


@pytest.mark.parametrize("method", ["cog", "copy_overviews"])
def test_to_cog(tmp_path: Path, method: str) -> None:
    arr = _classes(2)
    src_path, cog = tmp_path / "pred.tif", tmp_path / "pred_cog.tif"
    _write(src_path, arr)
    to_cog(src_path, cog, blocksize=128, method=method)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.tif", "pred_cog.tif"]
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(src.read(), arr)
        assert src.profile["tiled"] and src.block_shapes[0] == (128, 128)
        assert src.overviews(1) == [2, 4, 8]  # until 517 px fits one 128 px tile
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"  # GDAL >= 3.1
        assert src.crs == CRS.from_epsg(32632) and src.transform == TRANSFORM
        assert src.nodata == 255
        assert src.colormap(1)[5] == COLOURS[5]
        assert json.loads(src.tags()["CLASS_NAMES"]) == NAMES
        # classes: nearest overviews hold only real class ids
        assert set(np.unique(src.read(1, out_shape=(75, 130)))) <= {*range(6), 255}


def test_to_cog_averages_probabilities(tmp_path: Path) -> None:
    probs = np.zeros((1, 300, 517), np.float32)
    probs[:, :, 1::2] = 1.0  # alternate columns: a 2x average overview is 0.5 everywhere
    src_path, cog = tmp_path / "p.tif", tmp_path / "p_cog.tif"
    with StreamingGeoTIFF(src_path, GRID, 1, "float32", block=64) as w:
        w.write_rows(0, probs)
    to_cog(src_path, cog, blocksize=128)
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(src.read(), probs)
        assert src.overviews(1)[0] == 2
        overview = src.read(1, out_shape=(150, 259))
        np.testing.assert_allclose(overview, 0.5, atol=0.01)  # nearest gives 0 or 1


def _plant_links(folder: Path, final: Path, outside: Path) -> list[Path]:
    """Symbolic links at every temporary name earlier versions used for ``final``."""
    import os

    pid = os.getpid()
    names = [f".{final.name}.{pid}.partial", f".{final.name}.{pid}.partial.ovr.tif",
             f".{final.name}.{pid}.partial.aux.xml", f".{final.name}.{pid}.part"]  # fmt: skip
    links = [folder / n for n in names]
    for link in links:
        link.symlink_to(outside)
    return links


@pytest.mark.parametrize("cog", [False, True])
def test_planted_links_never_redirect_the_writes(tmp_path: Path, cog: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    final = out / "pred.tif"
    links = _plant_links(out, final, outside)
    arr = _classes()
    if cog:
        _write(out / "tiled.tif", arr)
        to_cog(out / "tiled.tif", final)
    else:
        _write(final, arr)
    assert outside.read_text() == "keep me"
    assert all(link.is_symlink() for link in links)  # left as they were
    with rasterio.open(final) as src:
        np.testing.assert_array_equal(src.read(), arr)
    hidden = {p.name for p in out.iterdir() if p.name.startswith(".")}
    assert hidden == {link.name for link in links}  # no staging folder left


def test_temporaries_live_in_a_private_folder_of_this_process(tmp_path: Path) -> None:
    import os
    import stat

    from rsfusion.data.writers import staging_owner

    seen = []
    with StreamingGeoTIFF(tmp_path / "p.tif", GRID, count=1, dtype="uint8") as w:
        assert w.tmp is not None and w.tmp.parent.parent == tmp_path
        mode = w.tmp.parent.stat().st_mode
        seen.append((stat.S_IMODE(mode), staging_owner(w.tmp.parent.name)))
        w.write_rows(0, np.zeros((1, 300, 517), np.uint8))
    assert seen[0][0] == 0o700 and seen[0][1][1] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == ["p.tif"]


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_is_a_user_error_naming_the_file(tmp_path: Path, monkeypatch) -> None:
    from rsfusion.errors import PredictionError

    arr = _classes()
    monkeypatch.setattr(StreamingGeoTIFF, "_flush", _disk_full)
    with pytest.raises(PredictionError, match=r"cannot write .*pred\.tif: No space left") as err:
        _write(tmp_path / "pred.tif", arr)
    assert err.value.output == tmp_path / "pred.tif"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    _write(tmp_path / "tiled.tif", arr)
    monkeypatch.setattr(rasterio.shutil, "copy", _disk_full)
    with pytest.raises(PredictionError, match=r"cannot write .*cog\.tif: No space left"):
        to_cog(tmp_path / "tiled.tif", tmp_path / "cog.tif")
    assert [p.name for p in tmp_path.iterdir()] == ["tiled.tif"]


def test_regrid_writes_a_finished_raster_on_another_grid_with_its_styles(tmp_path):
    """--resample-to-gsd: outputs made at the training GSD go back onto the input's grid."""
    fine = ("EPSG:32632", from_origin(0, 64, 0.5, 0.5), 128, 128)
    classes = np.zeros((1, 128, 128), np.uint8)
    classes[:, :, 64:] = 1
    classes[:, :8, :8] = 255
    src = tmp_path / "fine.tif"
    with StreamingGeoTIFF(src, fine, 1, "uint8", nodata=255, colormap=COLOURS,
                          class_names=NAMES) as w:  # fmt: skip
        w.write_rows(0, classes)
    coarse = ("EPSG:32632", from_origin(0, 64, 2.0, 2.0), 32, 32)
    out = regrid(src, tmp_path / "coarse.tif", coarse, "mode", rows=10, colormap=COLOURS,
                 class_names=NAMES)  # fmt: skip
    with rasterio.open(out) as dst:
        assert (dst.transform, dst.width, dst.height) == (coarse[1], 32, 32)
        data = dst.read(1)
        assert dst.nodata == 255 and dst.colormap(1)[1][:3] == (0, 0, 255)
        assert json.loads(dst.tags()["CLASS_NAMES"]) == NAMES
    assert (
        (data[:, :16] == 0)[2:].all() and (data[:, 16:] == 1).all() and (data[:2, :2] == 255).all()
    )
    assert not list(tmp_path.glob(".*"))


# ------------------------------------------------------------------ compression, level, threads
def _waves(count: int = 2, seed: int = 3) -> np.ndarray:
    """A (count, 300, 517) uint8 of smooth waves with a little noise: compressible, so every
    level gives other tiles."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:300, 0:517]
    bands = [127 + 100 * np.sin(x / (20 + 7 * b)) * np.cos(y / 31) for b in range(count)]
    noisy = np.stack(bands) + rng.normal(0, 2, (count, 300, 517))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _tile_sizes(path: Path) -> list[int]:
    """The compressed byte count of every tile of every band (GDAL's TIFF metadata)."""
    with rasterio.open(path) as src:
        rows, cols = -(-src.height // 64), -(-src.width // 64)
        return [int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=b))
                for b in src.indexes for r in range(rows) for c in range(cols)]  # fmt: skip


def _reference(path: Path, arr: np.ndarray, **creation) -> Path:
    """``arr`` written by plain rasterio with the writer's layout and ``creation`` options."""
    profile = {"driver": "GTiff", "count": arr.shape[0], "dtype": "uint8", "crs": GRID[0],
               "transform": TRANSFORM, "width": 517, "height": 300, "tiled": True,
               "blockxsize": 64, "blockysize": 64, "predictor": 2, "interleave": "band"}  # fmt: skip
    with rasterio.open(path, "w", **profile, **creation) as dst:
        dst.write(arr)
    return path


@pytest.mark.parametrize(
    ("compress", "level", "option"),
    [("deflate", 1, "zlevel"), ("deflate", 9, "zlevel"), ("ZSTD", 1, "zstd_level"),
     ("zstd", 19, "zstd_level")],
)  # fmt: skip
def test_the_level_reaches_gdal(tmp_path: Path, compress: str, level: int, option: str) -> None:
    arr = _waves()
    out = tmp_path / "probs.tif"
    _write(out, arr, chunks=(300,), compress=compress, level=level, nodata=None, colormap=None)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), arr)
        assert src.compression.name.lower() == compress.lower()
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
    name = compress.lower()
    same = _reference(tmp_path / "same.tif", arr, compress=name, **{option: level})
    other = _reference(tmp_path / "other.tif", arr, compress=name, **{option: 5})
    # the level is not stored in a TIFF: the compressed tiles tell it
    assert _tile_sizes(out) == _tile_sizes(same) != _tile_sizes(other)


def test_the_default_compression_and_level(tmp_path: Path) -> None:
    from rsfusion.inference.writer import LEVELS

    arr = _waves()
    out = tmp_path / "probs.tif"
    _write(out, arr, chunks=(300,), nodata=None, colormap=None)
    default = LEVELS["deflate"][0]
    ref = _reference(tmp_path / "ref.tif", arr, compress="deflate", zlevel=default)
    with rasterio.open(out) as src:
        assert src.compression.name.lower() == "deflate"
    assert _tile_sizes(out) == _tile_sizes(ref)


@pytest.mark.parametrize("compress", ["deflate", "zstd", "lzw", "none"])
def test_threads_write_the_same_tiles(tmp_path: Path, compress: str) -> None:
    arr = _waves(3)
    sizes = []
    for threads in (1, 3, "ALL_CPUS"):
        out = tmp_path / f"t{threads}.tif"
        _write(out, arr, compress=compress, threads=threads, nodata=None, colormap=None)
        with rasterio.open(out) as src:
            np.testing.assert_array_equal(src.read(), arr)
            assert src.compression is None if compress == "none" else (
                src.compression.name.lower() == compress
            )  # fmt: skip
        sizes.append(_tile_sizes(out))
    assert sizes[0] == sizes[1] == sizes[2]
    opts = [StreamingGeoTIFF(tmp_path / "n.tif", GRID, 1, "uint8", threads=t).profile
            for t in (1, 3, "all_cpus")]  # fmt: skip
    assert [o.get("num_threads") for o in opts] == [None, 3, "ALL_CPUS"]  # what GDAL is given


def test_compression_options_refuse_what_gdal_would_not_take() -> None:
    from rsfusion.errors import PredictionError, UnknownNameError, UserError
    from rsfusion.inference.writer import compression_options

    assert compression_options() == {"compress": "deflate", "zlevel": 1, "num_threads": "ALL_CPUS"}
    assert compression_options("zstd", threads=4) == {
        "compress": "zstd", "zstd_level": 1, "num_threads": 4
    }  # fmt: skip
    assert compression_options("none", threads=1) == {"compress": "none"}
    for bad in ("jpeg", "webp", "deflte", ""):
        with pytest.raises(UnknownNameError, match="not one of deflate, zstd, lzw, none"):
            compression_options(bad)
    with pytest.raises(ValueError):  # what a caller outside the CLI catches
        compression_options("jpeg")
    for name, level in (("deflate", 0), ("deflate", 10), ("zstd", 23), ("deflate", 2.5)):
        with pytest.raises(PredictionError, match=f"level {level!r} for {name}: give"):
            compression_options(name, level)
    with pytest.raises(PredictionError, match="lzw takes none"):
        compression_options("lzw", 3)
    for threads in (0, -2, "some", True):
        with pytest.raises(PredictionError, match="threads"):
            compression_options("deflate", threads=threads)
    assert issubclass(PredictionError, UserError)


def test_an_unknown_compression_writes_nothing(tmp_path: Path) -> None:
    from rsfusion.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="'jpeg'"):
        StreamingGeoTIFF(tmp_path / "c.tif", GRID, 1, "uint8", compress="jpeg")
    with pytest.raises(ValueError, match="predictor 3"):
        StreamingGeoTIFF(tmp_path / "c.tif", GRID, 1, "uint8", predictor=3)
    assert list(tmp_path.iterdir()) == []


def test_predictor_off_keeps_the_pixels(tmp_path: Path) -> None:
    arr = _classes()
    out = tmp_path / "classes.tif"
    _write(out, arr, predictor=1)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), arr)
        assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR", "1") == "1"


@pytest.mark.parametrize("method", ["cog", "copy_overviews"])
def test_to_cog_takes_compression_level_and_threads(tmp_path: Path, method: str) -> None:
    arr = _waves(1)
    src_path = tmp_path / "p.tif"
    _write(src_path, arr, chunks=(300,), nodata=None, colormap=None)
    sizes = {}
    for compress, level, threads in (("deflate", 1, 1), ("deflate", 9, "ALL_CPUS"),
                                     ("deflate", 9, 1), ("zstd", 3, 2)):  # fmt: skip
        cog = tmp_path / f"cog{compress}{level}_{threads}.tif"
        to_cog(src_path, cog, blocksize=128, method=method, compress=compress, level=level,
               threads=threads)  # fmt: skip
        with rasterio.open(cog) as src:
            np.testing.assert_array_equal(src.read(), arr)
            assert src.compression.name.lower() == compress
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        sizes[level, threads] = cog.stat().st_size
    assert sizes[1, 1] > sizes[9, 1] == sizes[9, "ALL_CPUS"]  # the level reached the COG
    with pytest.raises(ValueError, match="not one of"):
        to_cog(src_path, tmp_path / "x.tif", compress="lerc")
    assert not (tmp_path / "x.tif").exists()
