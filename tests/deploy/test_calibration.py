"""Calibration windows: from the checkpoint's own tiles or rasters given, read and normalised as
prediction reads them, the check windows never sharing a pixel with the calibration ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rsfusion.deploy.calibration import (
    CalibPair,
    config_pairs,
    folder_pairs,
    read_windows_of,
    sample_windows,
)
from rsfusion.errors import ConfigError, MissingFileError, PredictionError
from rsfusion.inference.predict import pair_spec
from tests.deploy.cases import CASES, meta_for


def test_tiles_come_from_the_config(tiny):
    meta = tiny[2]
    calib, check, facts = config_pairs(meta)
    assert [p.name for p in calib] == ["tile 1", "tile 3", "tile 5"]
    assert [p.name for p in check] == ["tile 2", "tile 4"]
    assert all(p.x and p.label and "noBoundary" in p.label for p in calib + check)
    assert facts["labels"] == "eroded" and facts["missing_tiles"] == []


def test_windows_are_normalised_as_prediction_normalises_them(tiny):
    meta = tiny[2]
    calib, _, _ = config_pairs(meta)
    got = read_windows_of(meta, calib, [(0, 0, 8)], 32)  # tile 1, row 0, column 8
    pair = calib[0]
    norm = pair_spec(meta, pair.rgb, pair.x).norm
    with rasterio.open(pair.rgb) as src, rasterio.open(pair.x) as xsrc:
        rgb = src.read(window=Window(8, 0, 32, 32)).astype(np.float32)
        x = xsrc.read(window=Window(8, 0, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(got.rgb[0], (rgb - norm.rgb_mean) / norm.rgb_std, rtol=1e-6)
    np.testing.assert_allclose(got.x[0], (x - norm.x_offset) / norm.x_scale, rtol=1e-5)
    assert got.labels is not None and got.labels.shape == (1, 32, 32)
    assert got.origin == ["tile 1@0,8"]


def test_check_windows_never_share_a_pixel_with_calibration_ones(tiny):
    meta = tiny[2]
    calib, _, _ = config_pairs(meta)
    wide = dataclasses.replace(meta, window=16)
    cal, held, facts = sample_windows(wide, calib, [], 16, 100, 100, seed=3)
    assert facts["check_from"] == "other windows of the calibration rasters"
    assert len(cal) + len(held) == 3 * 2 * 3  # 40 x 48 px: 2 x 3 windows of 16 px a tile
    assert len(held) >= len(cal) // 4

    def spots(windows):
        return {(o.split("@")[0], *map(int, o.split("@")[1].split(","))) for o in windows.origin}

    for name, r, c in spots(held):
        for other, r2, c2 in spots(cal):
            assert name != other or abs(r - r2) >= 16 or abs(c - c2) >= 16
    again, _, _ = sample_windows(wide, calib, [], 16, 100, 100, seed=3)
    assert again.origin == cal.origin  # seeded
    with pytest.raises(PredictionError, match="too few windows of 64 px"):
        sample_windows(dataclasses.replace(meta, window=64), calib[:1], [], 64, 8, 8)


def test_rasters_given_are_paired_like_prediction_pairs_them(tiny, vaihingen_root, tmp_path):
    meta = tiny[2]
    pairs, facts = folder_pairs(meta, vaihingen_root / "top", vaihingen_root / "dsm")
    assert len(pairs) == 5 and all(p.x and p.label is None for p in pairs)
    assert [p.rgb.rsplit("area", 1)[1] for p in pairs] == [p.x.rsplit("area", 1)[1] for p in pairs]
    assert facts["source"] == "rasters given"
    one, _ = folder_pairs(meta, vaihingen_root / "top" / "top_mosaic_09cm_area1.tif",
                          vaihingen_root / "dsm" / "dsm_09cm_matching_area1.tif")  # fmt: skip
    assert one == [CalibPair("top_mosaic_09cm_area1.tif", one[0].rgb, one[0].x)]
    with pytest.raises(PredictionError, match="reads X .*--calib-x"):
        folder_pairs(meta, vaihingen_root / "top")
    with pytest.raises(MissingFileError, match="--calib-rgb .*: no such file or folder"):
        folder_pairs(meta, tmp_path / "none")


def test_checkpoints_without_tiles_or_data_are_refused(tiny, tmp_path):
    meta = tiny[2]
    data = meta.config["data"]
    moved = dataclasses.replace(meta, config={**meta.config, "data": {**data, "root": "/gone"}})
    with pytest.raises(MissingFileError, match="training data root /gone is not a folder here; "
                       "give it with --data-root PATH"):  # fmt: skip
        config_pairs(moved)
    with pytest.raises(MissingFileError, match="none of its training tiles"):
        config_pairs(meta, root=tmp_path)
    natural = meta_for(CASES["early_fusion"][0], 32, kind="natural", config={"seed": 0})
    with pytest.raises(ConfigError, match="names no tiles .*--calib-rgb DIR"):
        config_pairs(natural)
