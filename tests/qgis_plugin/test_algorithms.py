"""rsfusion:predict and rsfusion:predict_folder in QGIS: the same classes as predict.py, the
``error:`` line, outputs added to the project styled and in order, Cancel."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import rasterio

OPTIONS = {"WINDOW": "32", "OVERLAP": "8", "VECTOR": "1"}


def _predict(*args: object) -> None:
    """scripts/predict.py's main, in this process (torch is imported already)."""
    from rsfusion.cli.predict import main

    assert main([str(a) for a in args]) == 0


def _classes(path: Path) -> tuple[np.ndarray, object, object]:
    with rasterio.open(path) as src:
        return src.read(1), src.crs, src.transform


def test_qgis_process_gives_predict_py_classes_bit_for_bit(qgis, ckpt, pair, tmp_path):
    rgb, x = pair
    out_qgis, out_cli = tmp_path / "qgis", tmp_path / "cli"
    args = [f"{k}={v}" for k, v in OPTIONS.items()]
    # paths relative to where qgis_process runs (the prediction runs elsewhere)
    ckpt_rel = os.path.relpath(ckpt, tmp_path)
    done = qgis.process("run", "rsfusion:predict", "--", f"CHECKPOINT={ckpt_rel}", f"RGB={rgb}",
                        f"X={x}", "OUTPUT=qgis", *args, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 pair(s)" in done.stdout  # predict.py's lines reach QGIS's log
    stem = rgb.stem
    assert f"CLASSES:\t{out_qgis / f'{stem}_classes.tif'}" in done.stdout
    assert f"VECTOR:\t{out_qgis / f'{stem}.gpkg'}" in done.stdout
    _predict("--ckpt", ckpt, "--rgb", rgb, "--x", x, "--out", out_cli, "--window", 32,
             "--overlap", 8, "--vector")  # fmt: skip
    a, crs_a, transform_a = _classes(out_qgis / f"{stem}_classes.tif")
    b, crs_b, transform_b = _classes(out_cli / f"{stem}_classes.tif")
    assert a.dtype == b.dtype and np.array_equal(a, b)
    assert (crs_a, transform_a) == (crs_b, transform_b)
    with rasterio.open(rgb) as src:
        assert (crs_a, transform_a) == (src.crs, src.transform)


def test_a_refused_input_shows_the_error_line(qgis, pair, tmp_path):
    rgb, _ = pair
    missing = tmp_path / "missing.ckpt"
    done = qgis.process("run", "rsfusion:predict", "--", f"CHECKPOINT={missing}", f"RGB={rgb}",
                        f"OUTPUT={tmp_path / 'out'}")  # fmt: skip
    assert done.returncode != 0
    assert re.search(rf"^ERROR:\terror: .*{re.escape(str(missing))}", done.stderr, re.M)
    assert "Traceback" not in done.stdout + done.stderr


def test_rsfusion_python_overrides_the_recorded_python(qgis, pair, tmp_path):
    rgb, _ = pair
    nowhere = tmp_path / "nowhere" / "python"
    done = qgis.process("run", "rsfusion:predict", "--", f"CHECKPOINT={tmp_path / 'm.ckpt'}",
                        f"RGB={rgb}", f"OUTPUT={tmp_path / 'out'}", RSFUSION_PYTHON=str(nowhere))  # fmt: skip
    assert done.returncode != 0
    assert f"the environment variable RSFUSION_PYTHON names {nowhere}" in done.stderr


FOLDER = """
context = QgsProcessingContext()
project = QgsProject.instance()
context.setProject(project)
feedback = QgsProcessingFeedback()
alg = QgsApplication.processingRegistry().algorithmById("rsfusion:predict_folder")
params = {"CHECKPOINT": VALUES["ckpt"], "RGB": VALUES["rgb"], "X": VALUES["x"],
          "OUTPUT": VALUES["out"], "VECTOR": True, "PROBABILITIES": True, "CONFIDENCE": True,
          "LOAD": True}
results, ok = alg.run(params, context, feedback)
from processing.gui.Postprocessing import handleAlgorithmResults
handleAlgorithmResults(alg, context, feedback)

def legend(layer):
    if layer.type() == QgsMapLayerType.RasterLayer:
        return [label for label, _ in layer.renderer().legendSymbologyItems()]
    return [item.label() for item in layer.renderer().legendSymbolItems()]

def fresh(layer):
    if layer.type() == QgsMapLayerType.RasterLayer:
        copy = QgsRasterLayer(layer.source(), "fresh")
    else:
        copy = QgsVectorLayer(layer.source(), "fresh", "ogr")
    copy.loadDefaultStyle()
    return copy

layers, kept = [], []  # a layer must outlive the use of its renderer
for node in project.layerTreeRoot().findLayers():
    layer = node.layer()
    copy = fresh(layer)
    kept.append(copy)
    layers.append({"name": layer.name(), "renderer": layer.renderer().type(),
                   "legend": legend(layer), "default": legend(copy),
                   "default_renderer": copy.renderer().type()})
done({"ok": ok, "pairs": results.get("PAIRS"), "layers": layers})
"""


def test_folder_outputs_are_added_to_the_project_styled(qgis, ckpt, pair, predicted):
    rgb, x = pair
    out, classes, stem = predicted.out, predicted.classes, predicted.stem
    # complete outputs: the folder algorithm skips the pair (resume) and still loads its layers
    found = qgis.pyqgis(FOLDER, ckpt=str(ckpt), rgb=str(rgb.parent), x=str(x.parent), out=str(out))
    assert found["ok"] and found["pairs"] == 1
    layers = found["layers"]
    assert [layer["name"] for layer in layers] == [
        f"{stem} polygons",
        f"{stem} classes",
        f"{stem} confidence",
        f"{stem} probabilities",
    ]  # top to bottom
    for layer in layers:  # each with its default style, as when opened from the browser
        assert (layer["renderer"], layer["legend"]) == (
            layer["default_renderer"],
            layer["default"],
        ), layer["name"]
    polygons, classes_layer = layers[0], layers[1]
    assert classes_layer["renderer"] == "paletted" and classes_layer["legend"] == classes
    assert polygons["renderer"] == "categorizedSymbol" and set(polygons["legend"]) <= set(classes)
    assert layers[2]["renderer"] == "singlebandpseudocolor"


CANCEL = """
class Cancelling(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.timer, self.listed, self.errors = None, None, []

    def pushConsoleInfo(self, info):
        super().pushConsoleInfo(info)
        if "pair(s)" in info and self.timer is None:
            self.timer = threading.Timer(1.5, self.press_cancel)
            self.timer.start()

    def press_cancel(self):
        self.listed = sorted(os.listdir(VALUES["out"]))
        self.cancel()

    def reportError(self, error, fatalError=False):
        super().reportError(error, fatalError)
        self.errors.append(error)

context = QgsProcessingContext()
context.setProject(QgsProject.instance())
feedback = Cancelling()
alg = QgsApplication.processingRegistry().algorithmById("rsfusion:predict")
params = {"CHECKPOINT": VALUES["ckpt"], "RGB": VALUES["rgb"], "X": VALUES["x"],
          "OUTPUT": VALUES["out"], "WINDOW": 32, "OVERLAP": 24, "PROBABILITIES": True}
start = time.monotonic()
results, ok = alg.run(params, context, feedback)
done({"ok": ok, "seconds": time.monotonic() - start, "listed": feedback.listed,
      "after": sorted(os.listdir(VALUES["out"])), "errors": feedback.errors})
"""


def test_cancel_in_qgis_stops_the_prediction_leaving_nothing(qgis, ckpt, slow_pair, tmp_path):
    rgb, x = slow_pair
    out = tmp_path / "out"
    found = qgis.pyqgis(CANCEL, ckpt=str(ckpt), rgb=str(rgb), x=str(x), out=str(out))
    assert not found["ok"] and found["seconds"] < 90  # the whole job takes minutes
    assert found["listed"]  # it was writing (a hidden staging folder) when Cancel was pressed
    assert found["after"] == []  # nothing under a final name, no temporary file
    assert any(e.startswith("cancelled (interrupted: ") for e in found["errors"])
