"""A picture of a prediction as QGIS draws it: the orthophoto, then the classes and polygons over
it with their default styles, and the legend of class names (a QGIS print layout saved as PNG).

Runs in QGIS's Python (``/usr/bin/python3`` on Debian), headless; ``scripts/render_qgis_picture.py``
is its command line. With ``--ckpt`` it first predicts the pair with the rsfusion environment's
Python (as the plugin does), else it draws the outputs already in ``--pred-dir``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["main", "render"]

REPO = Path(__file__).resolve().parents[2]


def _layers(rgb: Path, classes: Path, gpkg: Path | None) -> tuple:
    from qgis.core import QgsRasterLayer, QgsVectorLayer

    ortho = QgsRasterLayer(str(rgb), "orthophoto")
    cls = QgsRasterLayer(str(classes), "classes")
    for layer in (ortho, cls):
        if not layer.isValid():
            raise SystemExit(f"error: {layer.source()}: QGIS cannot open it")
    cls.loadDefaultStyle()  # the .qml beside it: class names and colours
    cls.renderer().setOpacity(0.55)
    polys = None
    if gpkg is not None and gpkg.is_file():
        polys = QgsVectorLayer(str(gpkg), "polygons", "ogr")
        polys.loadDefaultStyle()  # the GeoPackage's layer_styles: categorised by class name
        _outline_only(polys)
    return ortho, cls, polys


def _outline_only(layer) -> None:
    """Draw each polygon as an outline in its class colour (the raster shows the fill)."""
    from qgis.PyQt.QtCore import Qt

    def outline(symbol) -> None:
        colour = symbol.color()
        for sub in range(symbol.symbolLayerCount()):
            part = symbol.symbolLayer(sub)
            if hasattr(part, "setBrushStyle"):
                part.setStrokeColor(colour)
                part.setStrokeWidth(0.35)
                part.setStrokeStyle(Qt.SolidLine)
                part.setBrushStyle(Qt.NoBrush)

    renderer = layer.renderer()
    if renderer is not None and renderer.type() == "categorizedSymbol":
        for index, category in enumerate(renderer.categories()):
            symbol = category.symbol().clone()
            outline(symbol)
            renderer.updateCategorySymbol(index, symbol)
    elif renderer is not None and renderer.type() == "singleSymbol":
        outline(renderer.symbol())


def render(rgb: Path, classes: Path, gpkg: Path | None, out: Path, dpi: int = 150) -> Path:
    """Save the picture of one prediction (QGIS must be initialised)."""
    from qgis.core import (
        QgsLayoutExporter,
        QgsLayoutItemLabel,
        QgsLayoutItemLegend,
        QgsLayoutItemMap,
        QgsLayoutPoint,
        QgsLayoutSize,
        QgsLegendRenderer,
        QgsLegendStyle,
        QgsMapLayerLegendUtils,
        QgsPrintLayout,
        QgsProject,
        QgsUnitTypes,
    )
    from qgis.PyQt.QtCore import QRectF
    from qgis.PyQt.QtGui import QFont

    project = QgsProject.instance()
    ortho, cls, polys = _layers(rgb, classes, gpkg)
    project.setCrs(ortho.crs())
    project.addMapLayers([ortho, cls] + ([polys] if polys else []))
    extent = ortho.extent()
    side = 110.0  # mm per map panel
    height = side * extent.height() / max(extent.width(), 1e-9)
    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    mm = QgsUnitTypes.LayoutMillimeters
    layout.pageCollection().page(0).setPageSize(QgsLayoutSize(2 * side + 75, height + 24, mm))
    panels = (
        ("Orthophoto", [ortho]),
        ("rsfusion:predict", [lyr for lyr in (polys, cls, ortho) if lyr]),
    )
    for i, (title, layers) in enumerate(panels):
        item = QgsLayoutItemMap(layout)
        item.attemptSetSceneRect(QRectF(5 + i * (side + 5), 14, side, height))
        item.setLayers(layers)
        item.setExtent(extent)
        item.setFrameEnabled(True)
        layout.addLayoutItem(item)
        label = QgsLayoutItemLabel(layout)
        label.setText(title)
        label.setFont(QFont("DejaVu Sans", 12))
        label.attemptMove(QgsLayoutPoint(5 + i * (side + 5), 4, mm))
        label.attemptResize(QgsLayoutSize(side, 8, mm))
        layout.addLayoutItem(label)
    legend = QgsLayoutItemLegend(layout)
    legend.setTitle("Classes")
    legend.setLinkedMap(item)
    legend.setAutoUpdateModel(False)
    root = legend.model().rootGroup()
    root.clear()
    node = root.addLayer(cls)
    QgsLegendRenderer.setNodeLegendStyle(node, QgsLegendStyle.Hidden)  # no layer name
    entries = legend.model().layerLegendNodes(node)
    keep = [i for i, e in enumerate(entries) if not str(e.data(0)).startswith("Band ")]
    QgsMapLayerLegendUtils.setLegendNodeOrder(node, keep)  # no "Band 1: ..." heading
    legend.model().refreshLayerLegend(node)
    layout.addLayoutItem(legend)
    legend.attemptMove(QgsLayoutPoint(2 * side + 15, 14, mm))
    exporter = QgsLayoutExporter(layout)
    settings = QgsLayoutExporter.ImageExportSettings()
    settings.dpi = dpi
    settings.generateWorldFile = False
    settings.exportMetadata = False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    result = exporter.exportToImage(str(tmp), settings)
    if result != QgsLayoutExporter.Success:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"error: QGIS could not write {out} (exporter result {result})")
    os.replace(tmp, out)
    return out


def _predict(args: argparse.Namespace) -> None:
    """Run the prediction with the rsfusion environment's Python, as the plugin does."""
    from .environment import EnvironmentNotFound, find_env
    from .runner import PredictRequest, predict_command

    try:
        env = find_env(args.python)
    except EnvironmentNotFound as err:
        raise SystemExit(f"error: {err}") from err
    # absolute: the prediction runs in the repository
    request = PredictRequest(
        os.path.abspath(args.ckpt), os.path.abspath(args.rgb),
        os.path.abspath(args.x) if args.x else None, os.path.abspath(args.pred_dir),
        vector=True, redo=True,
    )  # fmt: skip
    done = subprocess.run(predict_command(env.python, request), cwd=env.repo)
    if done.returncode != 0:
        raise SystemExit(done.returncode)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="render_qgis_picture", description=__doc__)
    p.add_argument("--rgb", type=Path, required=True, help="the orthophoto that was predicted")
    p.add_argument("--pred-dir", type=Path, required=True, help="predict.py's output folder")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--ckpt", type=Path, help="predict first with this checkpoint (--vector)")
    p.add_argument("--x", type=Path, help="the X raster (with --ckpt)")
    p.add_argument("--python", help="the rsfusion environment's Python (default: the checkout's)")
    p.add_argument("--dpi", type=int, default=150)
    args = p.parse_args(argv)
    if args.ckpt:
        _predict(args)
    stem = args.rgb.stem
    classes, gpkg = args.pred_dir / f"{stem}_classes.tif", args.pred_dir / f"{stem}.gpkg"
    if not classes.is_file():
        print(f"error: {classes}: no such file; predict first (or pass --ckpt)", file=sys.stderr)
        return 2
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if not os.environ.get("XDG_RUNTIME_DIR"):
        import tempfile

        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp()  # mode 700, as Qt wants
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    out = render(args.rgb, classes, gpkg, args.out, args.dpi)
    print(f"picture: {out}")
    return 0
