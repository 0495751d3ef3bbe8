"""Input checks before any work (rsfusion.inference.inputs): dtype and value range, GSD,
overlap, grids and CRS names, on tiny rasters made here; no model is needed."""

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsfusion.errors import PredictionError
from rsfusion.inference.folder import Pair
from rsfusion.inference.inputs import (
    OLD_CHECKPOINT_NOTE,
    check_pair,
    check_pairs,
    parse_rgb_scale,
)
from rsfusion.models.checkpoint import CheckpointMeta

RECORD = {
    "rgb": {"dtype": "uint8", "range": [0.0, 255.0], "from": "2 training raster(s)"},
    "x": {"dtype": "float32", "range": [280.0, 300.0], "from": "2 training raster(s)"},
    "gsd_m": 0.09,
    "gsd_from": "dataset card",
}
CUSTOM_WKT = (
    'PROJCS["local lcc",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
    '298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["standard_parallel_1",48.1],'
    'PARAMETER["standard_parallel_2",49.3],PARAMETER["latitude_of_origin",48.7],'
    'PARAMETER["central_meridian",9.1],PARAMETER["false_easting",1000],'
    'PARAMETER["false_northing",2000],UNIT["metre",1]]'
)


def meta(record=RECORD, x_norm="raster_minmax"):
    data = {
        "card": "vaihingen", "rgb_modality": "rgb", "rgb_bands": ["nir", "red", "green"],
        "x_modality": "dsm", "x_bands": ["elevation"],
        "rgb_norm": {"mean": [0.0], "std": [255.0]}, "x_norm": {"mode": x_norm},
        "classes": ["a", "b"], "palette": [[0, 0, 0], [255, 255, 255]], "ignore_index": 255,
        "window": 32, "model": {"name": "x"},
    }  # fmt: skip
    if record is not None:
        data["inputs"] = record
    return CheckpointMeta.from_dict(data)


def raster(path, data, res=0.09, origin=(500000.0, 5400000.0), crs="EPSG:32632", nodata=None):
    data = np.asarray(data)
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
        count=data.shape[0], dtype=data.dtype.name, crs=crs,
        transform=from_origin(*origin, res, res), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


def ortho(path, dtype="uint8", scale=1.0, **kw):
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (3, 40, 48)) * scale).astype(dtype)
    return raster(path, data, **kw)


def dsm(path, **kw):
    return raster(path, np.full((40, 48), 290.0, np.float32), **kw)


def with_srs(path, wkt):
    """A VRT of ``path`` declaring the CRS ``wkt`` verbatim (a GeoTIFF would store the EPSG
    code PROJ matches it to)."""
    import html

    with rasterio.open(path) as src:
        t, dtype = src.transform, {"float32": "Float32", "uint8": "Byte"}[src.dtypes[0]]
        size = f'rasterXSize="{src.width}" rasterYSize="{src.height}"'
    vrt = path.with_suffix(".vrt")
    vrt.write_text(
        f"<VRTDataset {size}><SRS>{html.escape(wkt)}</SRS><GeoTransform>{t.c}, {t.a}, 0, {t.f}, "
        f'0, {t.e}</GeoTransform><VRTRasterBand dataType="{dtype}" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{path}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    return vrt


# ---------------------------------------------------------------- item 5: dtype and range
def test_a_uint16_or_unit_float_orthophoto_is_refused_with_the_fix(tmp_path):
    x = dsm(tmp_path / "dsm.tif")
    wide = ortho(tmp_path / "wide.tif", "uint16", 257.0)
    with pytest.raises(PredictionError) as err:
        check_pair(meta(), wide, x)
    text = str(err.value)
    assert str(wide) in text and "uint16 with values" in text and "uint8 orthophotos" in text
    assert "--rgb-scale 255/65535" in text and "gdal_translate -ot Byte" in text
    unit = ortho(tmp_path / "unit.tif", "float32", 1 / 255)
    with pytest.raises(PredictionError, match=r"float32 with values 0\.\.1 .*--rgb-scale 255 "):
        check_pair(meta(), unit, x)
    assert check_pair(meta(), ortho(tmp_path / "ok.tif"), x).rgb_factor == 1.0


def test_rgb_scale_rescales_and_says_which_factor(tmp_path):
    x = dsm(tmp_path / "dsm.tif")
    wide = ortho(tmp_path / "wide.tif", "uint16", 257.0)
    plan = check_pair(meta(), wide, x, rgb_scale="255/65535")
    assert plan.rgb_factor == pytest.approx(255 / 65535)
    (note,) = [n for n in plan.notes if "rescaled" in n]
    assert str(wide) in note and "x 255/65535" in note and "uint8 0..255" in note
    assert check_pair(meta(), wide, x, rgb_scale="auto").rgb_factor == pytest.approx(255 / 65535)
    twelve_bit = ortho(tmp_path / "12bit.tif", "uint16", 16.0)  # values up to 4080
    assert check_pair(meta(), twelve_bit, x, rgb_scale="auto").rgb_factor == pytest.approx(
        255 / 4095
    )
    unit = ortho(tmp_path / "unit.tif", "float32", 1 / 255)
    assert check_pair(meta(), unit, x, rgb_scale="auto").rgb_factor == pytest.approx(255)
    for bad in ("0", "-1", "a/b", "1/0", "nan"):
        with pytest.raises(PredictionError, match="--rgb-scale"):
            parse_rgb_scale(bad)


def test_values_on_the_training_scale_pass_with_a_note(tmp_path):
    x = dsm(tmp_path / "dsm.tif")
    small = ortho(tmp_path / "small.tif", "uint16")  # uint16 holding 0..255
    plan = check_pair(meta(), small, x)
    assert plan.rgb_factor == 1.0 and any("read as they are" in n for n in plan.notes)


def test_an_older_checkpoint_is_not_checked_and_says_so(tmp_path):
    x = dsm(tmp_path / "dsm.tif", res=30.0)
    wide = ortho(tmp_path / "wide.tif", "uint16", 257.0, res=30.0)
    plan = check_pair(meta(record=None), wide, x)
    assert plan.rgb_factor == 1.0 and plan.notes == (OLD_CHECKPOINT_NOTE,)
    with pytest.raises(PredictionError, match="records no value range"):
        check_pair(meta(record=None), wide, x, rgb_scale="auto")
    with pytest.raises(PredictionError, match="--resample-to-gsd: the checkpoint records no"):
        check_pair(meta(record=None), wide, x, resample_to_gsd=True)


def test_x_far_from_the_training_values_warns_only_with_fixed_normalisation(tmp_path):
    rgb = ortho(tmp_path / "rgb.tif")
    centimetres = raster(tmp_path / "cm.tif", np.full((40, 48), 29000.0, np.float32))
    assert not check_pair(meta(), rgb, centimetres).notes  # raster_minmax: its own scale
    (note,) = check_pair(meta(x_norm="dataset"), rgb, centimetres).notes
    assert note.startswith("warning: X raster") and "280..300" in note and "units" in note


# ---------------------------------------------------------------- item 6: GSD
def test_a_gsd_past_a_factor_of_two_warns_and_resampling_plans_the_training_grid(tmp_path):
    coarse_rgb = ortho(tmp_path / "rgb.tif", res=0.3)
    coarse_x = dsm(tmp_path / "dsm.tif", res=0.3)
    (note,) = check_pair(meta(), coarse_rgb, coarse_x).notes
    assert note.startswith("warning:") and "0.3 m" in note and "0.09 m" in note
    assert "3.33x coarser" in note and "--resample-to-gsd" in note
    plan = check_pair(meta(), coarse_rgb, coarse_x, resample_to_gsd=True)
    crs, transform, width, height = plan.model_grid
    assert (width, height) == (160, 133) and plan.resampled
    assert transform.a == pytest.approx(0.3 * 48 / 160) and plan.grid[2:] == (48, 40)
    assert plan.x_grid == plan.model_grid  # X is read on the same grid
    near = ortho(tmp_path / "near.tif", res=0.15)  # within a factor of 2: quiet
    assert not check_pair(meta(), near, dsm(tmp_path / "near_x.tif", res=0.15)).notes


def test_resampling_needs_a_pixel_size_in_metres(tmp_path):
    rgb = ortho(tmp_path / "rgb.tif", crs=None)
    x = dsm(tmp_path / "dsm.tif", crs=None)
    (note,) = check_pair(meta(), rgb, x).notes
    assert "no CRS" in note
    with pytest.raises(PredictionError, match="pixel size in metres is unknown"):
        check_pair(meta(), rgb, x, resample_to_gsd=True)


# ---------------------------------------------------------------- item 7: overlap
def test_an_x_raster_that_misses_the_orthophoto_is_refused_with_both_extents(tmp_path):
    rgb = ortho(tmp_path / "rgb.tif")
    far = dsm(tmp_path / "far.tif", origin=(675000.0, 5400000.0))  # 175 km east
    for align in (False, True):
        with pytest.raises(PredictionError) as err:
            check_pair(meta(), rgb, far, align=align)
        text = str(err.value)
        assert "does not overlap" in text and str(far) in text and str(rgb) in text
        assert "x 675000..675004" in text and "x 500000..500004" in text
    lonlat = dsm(tmp_path / "lonlat.tif", origin=(100.0, 10.0), res=0.001, crs="EPSG:4326")
    with pytest.raises(PredictionError, match="transformed from EPSG:4326"):
        check_pair(meta(), rgb, lonlat, align=True)


def test_a_partial_x_is_read_with_a_note_on_what_it_covers(tmp_path):
    rgb = ortho(tmp_path / "rgb.tif")
    half = dsm(tmp_path / "half.tif", origin=(500000.0 + 24 * 0.09, 5400000.0))
    with pytest.raises(PredictionError, match="--align"):
        check_pair(meta(), rgb, half)
    plan = check_pair(meta(), rgb, half, align=True)
    assert plan.x_grid == plan.grid and any("covers 50% of" in n for n in plan.notes)


# ---------------------------------------------------------------- item 9: CRS names
def test_crs_are_named_by_authority_only_when_they_have_one(tmp_path):
    import re

    rgb = ortho(tmp_path / "rgb.tif")
    x = dsm(tmp_path / "dsm.tif", origin=(500000.0 + 0.09, 5400000.0))
    with pytest.raises(PredictionError, match="CRS EPSG:32632 vs EPSG:32632"):
        check_pair(meta(), rgb, x)
    # a custom WKT that PROJ matches to EPSG:32632 only with low confidence (another name)
    wkt = re.sub(r",AUTHORITY\[[^\]]*\]", "", CRS.from_epsg(32632).to_wkt())
    custom = CRS.from_wkt(wkt.replace("WGS 84 / UTM zone 32N", "site grid"))
    assert str(custom) == "EPSG:32632"  # rasterio's own name for it: a guess
    shifted = with_srs(dsm(tmp_path / "d.tif", origin=(500000.09, 5400000.0)), custom.to_wkt())
    with pytest.raises(PredictionError) as err:
        check_pair(meta(), rgb, shifted)
    assert 'CRS "site grid" (no authority code) vs EPSG:32632' in str(err.value)
    lcc = dsm(tmp_path / "lcc.tif", crs=CRS.from_wkt(CUSTOM_WKT))
    with pytest.raises(PredictionError, match='transformed from "local lcc" \\(no authority'):
        check_pair(meta(), rgb, lcc, align=True)


# ---------------------------------------------------------------- item 8: every pair first
def test_every_pair_is_checked_and_all_problems_are_collected(tmp_path):
    pairs = []
    for i in range(4):
        rgb = ortho(tmp_path / f"r{i}.tif", "uint16" if i == 2 else "uint8", 257.0 if i == 2 else 1)
        x = dsm(tmp_path / f"x{i}.tif", origin=(500000.0 + (0.9 if i == 3 else 0), 5400000.0))
        pairs.append(Pair(rgb, x))
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"")
    pairs.append(Pair(broken, pairs[0].x))
    plans, problems = check_pairs(meta(), pairs, align=False)
    assert set(plans) == set(pairs[:2])
    assert [p for p, _ in problems] == pairs[2:4]  # the unreadable file is left to its turn
    assert "uint16" in str(problems[0][1]) and "--align" in str(problems[1][1])


def test_a_raster_whose_pixels_cannot_be_read_is_an_unreadable_file(tmp_path):
    wide = ortho(tmp_path / "wide.tif", "uint16", 257.0)
    data = wide.read_bytes()
    wide.write_bytes(data[: len(data) * 2 // 3])  # the header stays, pixels are cut off
    with rasterio.open(wide) as src:  # GDAL opens it: the sampling reads must fail cleanly
        assert src.dtypes[0] == "uint16"
    with pytest.raises(PredictionError, match="cannot read orthophoto") as err:
        check_pair(meta(), wide, dsm(tmp_path / "dsm.tif"))
    assert err.value.unreadable
    plans, problems = check_pairs(meta(), [Pair(wide, tmp_path / "dsm.tif")])
    assert not plans and not problems  # left to the pair's turn in a folder run
