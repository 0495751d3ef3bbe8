"""scripts/render_qgis_picture.py: a prediction drawn by QGIS itself, saved as a PNG."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[2]


def test_the_picture_is_drawn_by_qgis(qgis, pair, predicted, tmp_path):
    rgb, _ = pair
    out = tmp_path / "pictures" / "demo.png"
    done = subprocess.run(
        ["/usr/bin/python3", str(REPO / "scripts" / "render_qgis_picture.py"), "--rgb", str(rgb),
         "--pred-dir", str(predicted.out), "--out", str(out), "--dpi", "40"],
        env=qgis.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"picture: {out}" in done.stdout
    assert [p.name for p in out.parent.iterdir()] == ["demo.png"]  # no temporary file left
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a PNG has no georeferencing
        with rasterio.open(out) as png:
            assert png.driver == "PNG" and abs(png.width - (2 * 110 + 75) / 25.4 * 40) <= 1
            image = png.read()[:3].reshape(3, -1).T
    assert len(np.unique(image, axis=0)) > 50  # orthophoto, classes and legend, not a blank page


def test_without_a_prediction_it_says_what_to_do(qgis, pair, tmp_path):
    rgb, _ = pair
    done = subprocess.run(
        ["/usr/bin/python3", str(REPO / "scripts" / "render_qgis_picture.py"), "--rgb", str(rgb),
         "--pred-dir", str(tmp_path), "--out", str(tmp_path / "p.png")],
        env=qgis.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "predict first (or pass --ckpt)" in done.stderr
