"""QGIS styles: parsed as XML and matched to the palette; opened in real QGIS where installed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import box

from rsfusion.inference.styles import (
    category_aux_xml,
    classes_qml,
    polygons_qml,
    probability_qml,
    store_gpkg_style,
    write_text_atomic,
)

CLASSES = ["impervious & <road>", "building", "tree"]
PALETTE = [[255, 255, 255], [0, 0, 255], [0, 255, 0]]


def test_classes_qml_is_a_paletted_renderer_with_names_and_colours():
    root = ET.fromstring(classes_qml(CLASSES, PALETTE).split("\n", 1)[1])
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == CLASSES  # escaped and read back exactly
    assert [e.get("value") for e in entries] == ["0", "1", "2"]
    assert [e.get("color") for e in entries] == ["#ffffff", "#0000ff", "#00ff00"]
    with pytest.raises(ValueError, match="palette"):
        classes_qml(CLASSES, PALETTE[:2])


def test_probability_qml_legend_reads_in_probability():
    root = ET.fromstring(probability_qml(band=2).split("\n", 1)[1])
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor" and renderer.get("band") == "2"
    items = renderer.findall("rastershader/colorrampshader/item")
    assert [i.get("label") for i in items] == ["0", "0.25", "0.5", "0.75", "1"]
    assert [float(i.get("value")) for i in items] == [0, 63.75, 127.5, 191.25, 255]


def test_polygons_qml_categories():
    root = ET.fromstring(polygons_qml(CLASSES, PALETTE).split("\n", 1)[1])
    renderer = root.find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class_name"
    assert [c.get("value") for c in renderer.findall("categories/category")] == CLASSES
    colours = [o.get("value") for o in root.iter("Option") if o.get("name") == "color"]
    assert colours == ["255,255,255,255", "0,0,255,255", "0,255,0,255"]


def test_category_aux_xml():
    root = ET.fromstring(category_aux_xml(CLASSES))
    assert [c.text for c in root.iter("Category")] == CLASSES


def test_write_text_atomic_never_follows_a_planted_link(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.qml").symlink_to(outside)  # final name is a link: replaced, not followed
    write_text_atomic(out / "a.qml", "style")
    assert outside.read_text() == "keep" and (out / "a.qml").read_text() == "style"
    assert not (out / "a.qml").is_symlink() and not list(out.glob(".*partial"))


def make_outputs(folder: Path) -> dict[str, Path]:
    """A classes raster, a probability raster and a GeoPackage, styled, in EPSG:32632."""
    transform = from_origin(500000, 5000000, 1, 1)
    classes = folder / "t_classes.tif"
    profile = dict(driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32632",
                   transform=transform, nodata=255)  # fmt: skip
    with rasterio.open(classes, "w", **profile) as dst:
        dst.write(np.arange(64, dtype=np.uint8).reshape(1, 8, 8) % 3)
    write_text_atomic(classes.with_suffix(".qml"), classes_qml(CLASSES, PALETTE))
    write_text_atomic(Path(f"{classes}.aux.xml"), category_aux_xml(CLASSES))
    probs = folder / "t_confidence.tif"
    with rasterio.open(probs, "w", **{**profile, "nodata": None}) as dst:
        dst.write(np.full((1, 8, 8), 200, np.uint8))
    write_text_atomic(probs.with_suffix(".qml"), probability_qml())
    gpkg = folder / "t.gpkg"
    frame = gpd.GeoDataFrame(
        {"class_id": [0, 1], "class_name": CLASSES[:2], "area": [1.0, 1.0]},
        geometry=[box(500000, 4999990, 500001, 4999991), box(500002, 4999990, 500003, 4999991)],
        crs="EPSG:32632",
    )
    frame.to_file(gpkg, layer="t", driver="GPKG")
    store_gpkg_style(gpkg, "t", polygons_qml(CLASSES, PALETTE))
    return {"classes": classes, "probs": probs, "gpkg": gpkg}


def test_gpkg_default_style_is_stored(tmp_path):
    gpkg = make_outputs(tmp_path)["gpkg"]
    with sqlite3.connect(gpkg) as db:
        rows = db.execute(
            "SELECT f_table_name, useAsDefault, styleQML FROM layer_styles"
        ).fetchall()
    assert len(rows) == 1 and rows[0][:2] == ("t", 1) and "categorizedSymbol" in rows[0][2]
    store_gpkg_style(gpkg, "t", polygons_qml(CLASSES, PALETTE))  # again: replaced, not added
    with sqlite3.connect(gpkg) as db:
        assert db.execute("SELECT COUNT(*) FROM layer_styles").fetchone() == (1,)
    assert len(gpd.read_file(gpkg, layer="t")) == 2  # the layer itself still reads


QGIS_PYTHON = "/usr/bin/python3"


def _has_qgis() -> bool:
    if not Path(QGIS_PYTHON).is_file():
        return False
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _has_qgis(), reason="QGIS (python3-qgis from Debian) not installed")
def test_outputs_open_styled_in_qgis(tmp_path):
    """Real QGIS: renderer types, legend labels and categories as the analyst sees them."""
    paths = make_outputs(tmp_path)
    script = textwrap.dedent(
        f"""
        import json, os, sys
        from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer
        from osgeo import gdal
        app = QgsApplication([], False); app.initQgis()
        out = {{}}
        layer = QgsRasterLayer({str(paths["classes"])!r}, "classes")
        r = layer.renderer()
        out["classes"] = [r.type(), [label for label, _ in r.legendSymbologyItems()]]
        layer = QgsRasterLayer({str(paths["probs"])!r}, "probs")
        r = layer.renderer()
        out["probs"] = [r.type(), [label for label, _ in r.legendSymbologyItems()]]
        layer = QgsVectorLayer({str(paths["gpkg"])!r} + "|layername=t", "polys", "ogr")
        r = layer.renderer()
        out["gpkg"] = [r.type(), [c.label() for c in r.categories()]]
        info = gdal.Info({str(paths["classes"])!r}, format="json")
        out["gdal"] = info["bands"][0].get("categories")
        sys.stdout.write(json.dumps(out) + "\\n"); sys.stdout.flush()
        os._exit(0)  # exitQgis() may segfault headless
        """
    )
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime),
           "HOME": str(tmp_path)}  # fmt: skip
    env.pop("PYTHONPATH", None)
    done = subprocess.run([QGIS_PYTHON, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert line, done.stderr[-2000:]
    out = json.loads(line[-1])
    assert out["classes"] == ["paletted", CLASSES]
    assert out["probs"][0] == "singlebandpseudocolor"
    assert out["probs"][1] == ["0", "0.25", "0.5", "0.75", "1"]
    assert out["gpkg"] == ["categorizedSymbol", CLASSES]
    assert out["gdal"] == CLASSES
