"""Overlay and class PNGs: errors in a colour no class has, palettes kept, written atomically."""

from __future__ import annotations

import json
import types

import numpy as np
from PIL import Image

from rsfusion.evaluation.overlays import read_preview, save_class_png, save_overlay


def test_errors_are_magenta_when_a_class_is_red(tmp_path):
    meta = types.SimpleNamespace(classes=["clutter", "tree"], ignore_index=255,
                                 palette=[[255, 0, 0], [0, 255, 0]])  # fmt: skip
    image = np.full((3, 20, 30), 100, np.float32)
    pred, target = np.zeros((20, 30), int), np.ones((20, 30), int)
    target[:, :10] = 255  # ignored pixels are no errors
    path = save_overlay(image, pred, target, meta, tmp_path / "t.png", "t: RGB + X")
    with Image.open(path) as png:
        legend = json.loads(png.text["Legend"])
        pixels = np.asarray(png.convert("RGB"))
    assert legend[-1][1] == [255, 0, 255]
    assert (pixels == [255, 0, 255]).all(-1).sum() >= 20 * 20  # the wrong, scored pixels
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]  # no temporary left


def test_class_pngs_keep_the_palette_and_previews_are_decimated(tmp_path, vaihingen_root):
    pred = np.array([[0, 1], [2, 1]])
    path = save_class_png(pred, [[255, 255, 255], [0, 0, 255], [0, 255, 255]], tmp_path / "c.png")
    with Image.open(path) as png:
        assert png.mode == "P" and np.array_equal(np.asarray(png), pred)
        assert png.getpalette()[:9] == [255, 255, 255, 0, 0, 255, 0, 255, 255]
    image, step = read_preview(str(vaihingen_root / "top" / "top_mosaic_09cm_area2.tif"), 20)
    assert step == 3 and image.shape == (3, 14, 16)  # 40 x 48 px read every third pixel
