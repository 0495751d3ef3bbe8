"""predict.py on inputs that do not match the model (issue 18, items 5-9 and 11): refused with
one error line, rescaled or resampled when asked, pixels without X written as nodata, folder
runs checked whole before any output."""

import shutil

import numpy as np
import pytest
import rasterio
import torch

from rsfusion.cli.predict import main as predict_main


@pytest.fixture(scope="module")
def ckpt(demo_ckpt):
    """The session's tiny demo_baseline checkpoint (tests/conftest.py)."""
    return demo_ckpt


def _pair(root, area=2):
    return (root / "top" / f"top_mosaic_09cm_area{area}.tif",
            root / "dsm" / f"dsm_09cm_matching_area{area}.tif")  # fmt: skip


def _args(ckpt, rgb, x, out, *extra):
    return ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--out", str(out),
            "--no-progress", "--window", "32", *extra]  # fmt: skip


def _error_lines(err):
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _rewrite(src_path, dst_path, data=None, **changes):
    """A copy of a raster with other data, dtype, transform or nodata."""
    with rasterio.open(src_path) as src:
        profile, values = src.profile, src.read()
    profile.update(changes)
    values = values if data is None else data
    profile["dtype"] = values.dtype.name
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(values)
    return dst_path


def _classes(folder, stem):
    with rasterio.open(folder / f"{stem}_classes.tif") as src:
        return src.read(1), src.nodata, (src.crs, src.transform, src.shape)


def test_the_checkpoint_records_its_training_rasters(ckpt):
    record = torch.load(ckpt, weights_only=True)["rsfusion"]["inputs"]
    assert record["rgb"]["dtype"] == "uint8" and record["x"]["dtype"] == "float32"
    assert 0 <= record["rgb"]["range"][0] < record["rgb"]["range"][1] <= 255
    assert record["gsd_m"] == 0.09 and record["gsd_from"] == "dataset card"


# ---------------------------------------------------------------- item 5
def test_a_uint16_orthophoto_is_refused_or_rescaled_as_asked(ckpt, vaihingen_root, tmp_path,
                                                             capsys):  # fmt: skip
    rgb, x = _pair(vaihingen_root)
    assert predict_main(_args(ckpt, rgb, x, tmp_path / "ref")) == 0
    reference, _, _ = _classes(tmp_path / "ref", rgb.stem)
    capsys.readouterr()
    with rasterio.open(rgb) as src:
        wide = _rewrite(rgb, tmp_path / "wide.tif", src.read().astype(np.uint16) * 257)
    out = tmp_path / "out"
    assert predict_main(_args(ckpt, wide, x, out)) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(wide) in line and "uint16" in line and "uint8 orthophotos" in line
    assert "--rgb-scale 255/65535" in line
    assert not out.exists() or not list(out.glob("*.tif"))
    assert predict_main(_args(ckpt, wide, x, out, "--rgb-scale", "255/65535")) == 0
    err = capsys.readouterr().err
    assert "rescaled while read: values x 255/65535" in err
    rescaled, _, _ = _classes(out, "wide")
    assert (rescaled == reference).mean() > 0.99  # v * 257 * 255 / 65535 == v
    with rasterio.open(rgb) as src:
        unit = _rewrite(rgb, tmp_path / "unit.tif", src.read().astype(np.float32) / 255)
    assert predict_main(_args(ckpt, unit, x, tmp_path / "u")) == 2
    assert "--rgb-scale 255 " in _error_lines(capsys.readouterr().err)[0]
    assert predict_main(_args(ckpt, unit, x, tmp_path / "u", "--rgb-scale", "auto")) == 0
    assert (_classes(tmp_path / "u", "unit")[0] == reference).mean() > 0.99


def test_an_older_checkpoint_without_the_record_still_predicts(ckpt, vaihingen_root, tmp_path,
                                                               capsys):  # fmt: skip
    saved = torch.load(ckpt, weights_only=True)
    del saved["rsfusion"]["inputs"]
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    rgb, x = _pair(vaihingen_root)
    assert predict_main(_args(old, rgb, x, tmp_path / "out")) == 0
    assert "records no dtype, value range or GSD" in capsys.readouterr().err


# ---------------------------------------------------------------- item 6
def test_a_distant_gsd_warns_and_resampling_writes_on_the_input_grid(ckpt, vaihingen_root,
                                                                     tmp_path, capsys):  # fmt: skip
    rgb, x = _pair(vaihingen_root)
    with rasterio.open(rgb) as src:
        coarse_t = src.transform * src.transform.scale(0.3 / 0.09)
    c_rgb = _rewrite(rgb, tmp_path / "c_rgb.tif", transform=coarse_t)  # 0.3 m pixels
    c_x = _rewrite(x, tmp_path / "c_x.tif", transform=coarse_t)
    assert predict_main(_args(ckpt, c_rgb, c_x, tmp_path / "plain")) == 0
    err = capsys.readouterr().err
    assert "warning: orthophoto" in err and "GSD of 0.3 m" in err and "--resample-to-gsd" in err
    out = tmp_path / "resampled"
    assert predict_main(_args(ckpt, c_rgb, c_x, out, "--resample-to-gsd", "--probs",
                              "--confidence", "--cog")) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "read at the training GSD 0.09 m (160x133 px instead of 48x40" in err
    assert "warning:" not in err
    for name in ("classes", "probs", "confidence"):
        with rasterio.open(c_rgb) as a, rasterio.open(out / f"c_rgb_{name}.tif") as b:
            assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
            assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    classes, _, _ = _classes(out, "c_rgb")
    assert classes.max() < 6
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tif") == [
        "c_rgb_classes.tif", "c_rgb_confidence.tif", "c_rgb_probs.tif"]  # fmt: skip
    assert not list(out.glob(".*"))


# ---------------------------------------------------------------- item 7
def test_pixels_without_x_are_nodata_in_every_output(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, x = _pair(vaihingen_root)
    with rasterio.open(x) as src:
        dsm = src.read()
    dsm[0, 10:20, 5:25] = -9999
    holes = _rewrite(x, tmp_path / "holes.tif", dsm, nodata=-9999)
    out = tmp_path / "out"
    assert predict_main(_args(ckpt, rgb, holes, out, "--probs", "--confidence")) == 0
    assert "has no data (nodata, NaN, +-inf or outside it) for 200 px" in capsys.readouterr().err
    classes, nodata, _ = _classes(out, rgb.stem)
    assert nodata == 255 and (classes[10:20, 5:25] == 255).all()
    assert (classes[:10] < 6).all() and (classes[20:] < 6).all()
    with rasterio.open(out / f"{rgb.stem}_confidence.tif") as src:
        conf = src.read(1)
        assert src.nodata == 0 and src.descriptions == ("confidence",)  # item 11
    with rasterio.open(out / f"{rgb.stem}_probs.tif") as src:
        probs = src.read()
    assert (conf[10:20, 5:25] == 0).all() and (conf[:10] > 0).all()
    assert (probs[:, 10:20, 5:25] == 0).all() and (probs[:, :10].sum(0) > 200).all()
    again = tmp_path / "predicted"
    assert predict_main(_args(ckpt, rgb, holes, again, "--x-missing", "predict")) == 0
    assert (_classes(again, rgb.stem)[0] < 6).all()


def test_x_outside_or_partly_outside_the_orthophoto(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, x = _pair(vaihingen_root)
    with rasterio.open(x) as src:
        t = src.transform
    far = _rewrite(x, tmp_path / "far.tif", transform=t * t.translation(175000 / 0.09, 0))
    out = tmp_path / "out"
    assert predict_main(_args(ckpt, rgb, far, out, "--align")) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "does not overlap" in line and str(far) in line and "the orthophoto x" in line
    assert not out.exists() or not list(out.iterdir())
    half = _rewrite(x, tmp_path / "half.tif", transform=t * t.translation(24, 0))
    assert predict_main(_args(ckpt, rgb, half, out, "--align")) == 0
    err = capsys.readouterr().err
    assert "covers 50% of orthophoto" in err and "960 px (50.0%)" in err
    classes, _, _ = _classes(out, rgb.stem)
    assert (classes[:, :24] == 255).all() and (classes[:, 24:] < 6).all()


# ---------------------------------------------------------------- item 8
def test_a_folder_run_checks_every_pair_before_the_first_output(ckpt, vaihingen_root, tmp_path,
                                                               capsys):  # fmt: skip
    rgb_dir, x_dir = tmp_path / "top", tmp_path / "dsm"
    rgb_dir.mkdir()
    x_dir.mkdir()
    rgb, x = _pair(vaihingen_root)
    for name in ("a.tif", "b.tif", "c.tif", "d.tif"):
        shutil.copy(rgb, rgb_dir / name)
        shutil.copy(x, x_dir / name)
    with rasterio.open(x) as src:
        t = src.transform
    _rewrite(x, x_dir / "c.tif", transform=t * t.translation(2, 0))  # third pair: off the grid
    with rasterio.open(rgb) as src:
        _rewrite(rgb, rgb_dir / "d.tif", src.read().astype(np.uint16) * 257)  # fourth: uint16
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb_dir), "--x", str(x_dir), "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert "2 of 4 pair(s) cannot be predicted" in line and "nothing was written" in line
    problems = [ln for ln in err.splitlines() if ln.startswith("problem:")]
    assert len(problems) == 2
    assert str(x_dir / "c.tif") in problems[0] and "--align" in problems[0]
    assert str(rgb_dir / "d.tif") in problems[1] and "uint16" in problems[1]
    assert not list(out.glob("*.tif"))  # not even a.tif and b.tif


# ---------------------------------------------------------------- item 9
def test_a_custom_crs_is_named_by_its_wkt_name(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, x = _pair(vaihingen_root)
    wkt = (
        'PROJCS["my dem grid",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
        '298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
        'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
        'PARAMETER["central_meridian",9.5],PARAMETER["scale_factor",0.9996],'
        'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'
    )
    custom = _rewrite(x, tmp_path / "custom.tif", crs=rasterio.crs.CRS.from_wkt(wkt))
    assert predict_main(_args(ckpt, rgb, custom, tmp_path / "out")) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert '"my dem grid" (no authority code)' in line and "EPSG:32000" not in line
