"""Bad input fails before training with an error naming the file, the value and the fix."""

import shutil
import warnings

import numpy as np
import pytest
import rasterio

from rsfusion.cli.train import main
from rsfusion.data.isprs import Vaihingen
from rsfusion.data.normalise import XNorm
from rsfusion.errors import LabelColourError, TileError


@pytest.fixture
def root(vaihingen_root, tmp_path):
    dst = tmp_path / "vaihingen"
    shutil.copytree(vaihingen_root, dst)
    return dst


def _rewrite(path, fn):
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    profile, data = fn(profile, data)
    profile["count"] = data.shape[0]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _load(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Vaihingen(root, tiles=["1", "2"], **kw)


def test_wrong_band_count(root):
    _rewrite(
        root / "top" / "top_mosaic_09cm_area1.tif", lambda p, d: (p, np.concatenate([d, d[:1]]))
    )
    with pytest.raises(TileError, match=r"area1.tif has 4 band\(s\) but .* expects 3 \['nir'"):
        _load(root)


def test_truncated_tiff(root):
    path = root / "dsm" / "dsm_09cm_matching_area2.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TileError, match=r"dsm_09cm_matching_area2.tif.*corrupt or truncated"):
        _load(root)


def test_label_colour_outside_palette_is_found_before_use(root):
    def paint(profile, data):
        data[:, 7, 9] = (10, 20, 30)
        return profile, data

    _rewrite(root / "top_mosaic_09cm_area2.tif", paint)
    with pytest.raises(LabelColourError) as err:
        _load(root)
    msg = str(err.value)
    assert "top_mosaic_09cm_area2.tif" in msg and "(10, 20, 30)" in msg
    assert "row 7, col 9" in msg


def test_misaligned_dsm_is_refused_or_aligned_on_request(root):
    path = root / "dsm" / "dsm_09cm_matching_area1.tif"
    with rasterio.open(path) as src:
        original = src.read(1)
        res = src.res[0]

    def shift(profile, data):  # same pixels, placed 3 px further east
        profile["transform"] = profile["transform"] * rasterio.Affine.translation(3, 0)
        return profile, data

    _rewrite(path, shift)
    with pytest.raises(TileError, match="data.align_x=true"):
        _load(root)
    ds = _load(root, align_x=True, x_norm=XNorm("scale", scale=1.0))
    tile = next(t for t in ds.tiles if t.tile_id == "1")
    left, _, _, top = tile.rgb.grid.bounds
    q = (slice(left + 8 * res, left + 24 * res, res), slice(top - 20 * res, top - 4 * res, res),
         slice(None))  # fmt: skip
    x = ds[q]["image_x"][0].numpy()  # rows 4..19, cols 8..23 of the orthophoto grid
    np.testing.assert_allclose(x, original[4:20, 5:21], rtol=1e-5)


def test_training_stops_before_the_first_step_on_bad_labels(root, tmp_path, capsys):
    def paint(profile, data):
        data[:, 0, 0] = (1, 2, 3)
        return profile, data

    _rewrite(root / "top_mosaic_09cm_area3.tif", paint)
    args = ["--cfg", "demo_baseline", "--out", str(tmp_path / "run"), "--set",
            f"data.root={root}", "data.train_tiles=[1,3]", "data.val_tiles=[2]",
            "data.window=32", "trainer.max_steps=2"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 2
    assert "(1, 2, 3) at pixel (row 0, col 0)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
