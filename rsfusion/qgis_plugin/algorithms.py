"""The Processing algorithms ``rsfusion:predict`` (one pair) and ``rsfusion:predict_folder``.

Both collect predict.py's options from their parameters, run it in the rsfusion environment's
Python (:mod:`.runner`) and add the outputs to the project with their default styles (the
``.qml`` beside a raster, the GeoPackage's ``layer_styles``), top to bottom: polygons, classes,
confidence, probabilities.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsLayerTreeGroup,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsProject,
    QgsProviderRegistry,
)

from .environment import EnvironmentNotFound, find_env
from .runner import (
    PredictRequest,
    PredictRun,
    RunError,
    check_result,
    existing_outputs,
    predict_command,
)

__all__ = ["PredictAlgorithm", "PredictFolderAlgorithm"]

PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
DEVICES = ["auto", "cpu", "cuda"]
#: each output of predict.py: its name in the project, its output key, type and place (0: top)
LAYERS = {
    "vector": ("polygons", "VECTOR", QgsProcessingUtils.LayerHint.Vector, 0),
    "classes": ("classes", "CLASSES", QgsProcessingUtils.LayerHint.Raster, 1),
    "confidence": ("confidence", "CONFIDENCE", QgsProcessingUtils.LayerHint.Raster, 2),
    "probs": ("probabilities", "PROBABILITIES", QgsProcessingUtils.LayerHint.Raster, 3),
}
CHECKPOINT_FILTER = "rsfusion checkpoints (*.ckpt *.pt *.pth *.onnx);;All files (*.*)"
_KEEP: list[QgsProcessingLayerPostProcessorInterface] = []  # QGIS does not own them


class _Styled(QgsProcessingLayerPostProcessorInterface):
    """Loads an added layer's default style (QGIS's Processing adds result layers without it)
    and keeps one pair's layers in the order of :data:`LAYERS`."""

    def __init__(self, rank: int, siblings: dict[str, int]) -> None:
        super().__init__()
        self.rank, self.siblings = rank, siblings

    def postProcessLayer(self, layer, context, feedback) -> None:
        message, ok = layer.loadDefaultStyle()
        if not ok and feedback is not None:
            feedback.pushInfo(f"{layer.name()}: no default style ({message})")
        layer.triggerRepaint()
        self.siblings[layer.id()] = self.rank
        project = context.project() or QgsProject.instance()
        _arrange(project, self.siblings)


def _arrange(project: QgsProject, ranks: dict[str, int]) -> None:
    """Reorder the layer-tree nodes of ``ranks`` (layer id: place) among themselves."""
    nodes = [project.layerTreeRoot().findLayer(i) for i in ranks]
    nodes = [n for n in nodes if n is not None]
    if len(nodes) < 2 or len({id(n.parent()) for n in nodes}) != 1:
        return
    parent: QgsLayerTreeGroup = nodes[0].parent()
    slots = sorted(parent.children().index(n) for n in nodes)
    wanted = sorted(nodes, key=lambda n: ranks[n.layerId()])
    if [parent.children().index(n) for n in wanted] == slots:
        return
    clones = [n.clone() for n in wanted]
    for node in nodes:
        parent.removeChildNode(node)
    for slot, clone in zip(slots, clones):
        parent.insertChildNode(slot, clone)


class _PredictBase(QgsProcessingAlgorithm):
    """Parameters and run shared by the one-pair and the folder algorithm."""

    folder_mode = False

    def group(self) -> str:
        return "Segmentation"

    def groupId(self) -> str:
        return "segmentation"

    def createInstance(self) -> _PredictBase:
        return type(self)()

    def _add_model_parameters(self) -> None:
        self.addParameter(
            QgsProcessingParameterFile(
                "CHECKPOINT", "Model checkpoint (.ckpt written by rsfusion's train.py)",
                QgsProcessingParameterFile.File, fileFilter=CHECKPOINT_FILTER,
            )
        )  # fmt: skip

    def _add_options(self) -> None:
        for name, text in (
            ("DATASET", "Dataset of a generalist (joint) checkpoint whose classes to use"),
            ("MODALITY", "X modality the model is told (e.g. dsm, depth, thermal)"),
        ):
            self.addParameter(QgsProcessingParameterString(name, text, optional=True))
        window = QgsProcessingParameterNumber(
            "WINDOW", "Window size in pixels (not set: the training window)",
            QgsProcessingParameterNumber.Integer, optional=True, minValue=8,
        )  # fmt: skip
        overlap = QgsProcessingParameterNumber(
            "OVERLAP", "Overlap between windows in pixels (not set: a quarter of the window)",
            QgsProcessingParameterNumber.Integer, optional=True, minValue=0,
        )  # fmt: skip
        self.addParameter(window)
        self.addParameter(overlap)
        self.addParameter(
            QgsProcessingParameterEnum(
                "PRECISION", "Precision (auto: bf16 where the processor has it, else fp32)",
                PRECISIONS, defaultValue="auto", usesStaticStrings=True,
            )
        )  # fmt: skip
        for name, text in (
            ("PROBABILITIES", "Also write per-class probabilities"),
            ("CONFIDENCE", "Also write the confidence (highest probability)"),
            ("VECTOR", "Also write polygons (GeoPackage)"),
        ):
            self.addParameter(QgsProcessingParameterBoolean(name, text, defaultValue=False))
        self.addParameter(
            QgsProcessingParameterNumber(
                "MIN_AREA", "Smallest polygon kept (square CRS units; 0: all)",
                QgsProcessingParameterNumber.Double, defaultValue=0.0, minValue=0.0,
            )
        )  # fmt: skip
        self.addParameter(
            QgsProcessingParameterBoolean("COG", "Write Cloud Optimized GeoTIFFs", False)
        )
        advanced = [
            QgsProcessingParameterBoolean(
                "ALIGN", "Resample X onto the RGB grid (when their grids differ)", False
            ),
            QgsProcessingParameterNumber(
                "SIMPLIFY", "Polygon simplification tolerance (CRS units; 0: none)",
                QgsProcessingParameterNumber.Double, defaultValue=0.0, minValue=0.0,
            ),
            QgsProcessingParameterEnum(
                "DEVICE", "Device (auto: a GPU if there is one)", DEVICES, defaultValue="auto",
                usesStaticStrings=True,
            ),
        ]  # fmt: skip
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)

    def _request(
        self, parameters: dict[str, Any], context: QgsProcessingContext, rgb: str, x: str | None
    ) -> PredictRequest:
        def number(name: str) -> int | None:
            if parameters.get(name) is None:
                return None
            return self.parameterAsInt(parameters, name, context)

        # absolute: the prediction runs in another working directory (the repository)
        out = os.path.abspath(self.parameterAsString(parameters, "OUTPUT", context))
        Path(out).mkdir(parents=True, exist_ok=True)
        return PredictRequest(
            checkpoint=os.path.abspath(self.parameterAsFile(parameters, "CHECKPOINT", context)),
            rgb=_absolute(rgb), x=_absolute(x) if x else None, out=out,
            dataset=self.parameterAsString(parameters, "DATASET", context).strip() or None,
            modality=self.parameterAsString(parameters, "MODALITY", context).strip() or None,
            window=number("WINDOW"), overlap=number("OVERLAP"),
            precision=self.parameterAsEnumString(parameters, "PRECISION", context) or "auto",
            probs=self.parameterAsBool(parameters, "PROBABILITIES", context),
            confidence=self.parameterAsBool(parameters, "CONFIDENCE", context),
            vector=self.parameterAsBool(parameters, "VECTOR", context),
            min_area=self.parameterAsDouble(parameters, "MIN_AREA", context),
            simplify=self.parameterAsDouble(parameters, "SIMPLIFY", context),
            cog=self.parameterAsBool(parameters, "COG", context),
            align=self.parameterAsBool(parameters, "ALIGN", context),
            device=self.parameterAsEnumString(parameters, "DEVICE", context) or "auto",
            redo=not self.folder_mode or self.parameterAsBool(parameters, "REDO", context),
        )  # fmt: skip

    def _run(self, request: PredictRequest, feedback: QgsProcessingFeedback):
        from .provider import python_setting

        try:
            env = find_env(python_setting())
        except EnvironmentNotFound as err:
            raise QgsProcessingException(str(err)) from err
        command = predict_command(env.python, request)
        feedback.pushInfo(f"rsfusion Python: {env.python} (from {env.source})")
        feedback.pushCommandInfo(shlex.join(command))
        try:
            result = PredictRun(command, cwd=env.repo).run(feedback)
            check_result(result, feedback)
        except RunError as err:
            raise QgsProcessingException(str(err)) from err
        return result

    def _load(self, outputs: dict[str, Path], context: QgsProcessingContext) -> None:
        """Add one pair's outputs to the project when the algorithm completes."""
        if context.project() is None:
            return
        siblings: dict[str, int] = {}
        for name, path in outputs.items():
            if name not in LAYERS or not Path(path).exists():
                continue
            label, key, hint, rank = LAYERS[name]
            stem = Path(outputs["classes"]).stem.removesuffix("_classes")
            details = QgsProcessingContext.LayerDetails(
                f"{stem} {label}", context.project(), key, hint
            )
            processor = _Styled(rank, siblings)
            _KEEP.append(processor)
            details.setPostProcessor(processor)
            context.addLayerToLoadOnCompletion(str(path), details)


class PredictAlgorithm(_PredictBase):
    """``rsfusion:predict``: one orthophoto (RGB) and its X raster."""

    def name(self) -> str:
        return "predict"

    def displayName(self) -> str:
        return "Predict (RGB + X rasters)"

    def shortHelpString(self) -> str:
        return (
            "Segments an orthophoto (RGB) with its X raster (a DSM / nDSM or another modality "
            "on the same grid) using a trained rsfusion checkpoint. Writes the classes raster "
            "(class names and colours), optionally per-class probabilities, the confidence and "
            "polygons (GeoPackage) into the output folder, on the RGB raster's grid and CRS, "
            "and adds them to the project styled.\n\nThe model runs in the rsfusion "
            "environment's Python (installed with scripts/install_qgis_plugin.py; settable in "
            "Settings > Options > Processing > Providers > rsfusion or with RSFUSION_PYTHON), "
            "not in QGIS. Leave X empty for an RGB-only checkpoint. Outputs of the same name in "
            "the output folder are replaced."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self._add_model_parameters()
        self.addParameter(QgsProcessingParameterRasterLayer("RGB", "RGB raster (orthophoto)"))
        self.addParameter(
            QgsProcessingParameterRasterLayer(
                "X", "X raster (DSM / nDSM or other modality; empty for an RGB-only model)",
                optional=True,
            )
        )  # fmt: skip
        self._add_options()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        self.addOutput(QgsProcessingOutputRasterLayer("CLASSES", "Classes"))
        self.addOutput(QgsProcessingOutputRasterLayer("PROBABILITIES", "Probabilities"))
        self.addOutput(QgsProcessingOutputRasterLayer("CONFIDENCE", "Confidence"))
        self.addOutput(QgsProcessingOutputVectorLayer("VECTOR", "Polygons"))

    def processAlgorithm(self, parameters, context, feedback):
        rgb = _raster_path(self, parameters, "RGB", context)
        x = _raster_path(self, parameters, "X", context) if parameters.get("X") else None
        request = self._request(parameters, context, rgb, x)
        result = self._run(request, feedback)
        outputs = result.outputs[-1] if result.outputs else {}
        if "classes" not in outputs:
            raise QgsProcessingException("the prediction ended without naming its outputs")
        self._load(outputs, context)
        results = {"OUTPUT": request.out}
        results.update({LAYERS[k][1]: str(v) for k, v in outputs.items() if k in LAYERS})
        return results


class PredictFolderAlgorithm(_PredictBase):
    """``rsfusion:predict_folder``: every pair of an RGB folder and an X folder."""

    folder_mode = True

    def name(self) -> str:
        return "predict_folder"

    def displayName(self) -> str:
        return "Predict folders (RGB folder + X folder)"

    def shortHelpString(self) -> str:
        return (
            "Segments every orthophoto of an RGB folder with its X raster from the X folder "
            "(paired by name, as rsfusion's predict.py does) using a trained rsfusion "
            "checkpoint. Pairs whose outputs are all in the output folder already are skipped, "
            "so a cancelled run resumes where it stopped (tick 'Predict again' to redo them). "
            "Progress advances per finished pair. The outputs of each pair are the same as "
            "with 'Predict (RGB + X rasters)'."
        )

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:
        self._add_model_parameters()
        self.addParameter(
            QgsProcessingParameterFile("RGB", "RGB folder", QgsProcessingParameterFile.Folder)
        )
        self.addParameter(
            QgsProcessingParameterFile(
                "X", "X folder (empty for an RGB-only model)", QgsProcessingParameterFile.Folder,
                optional=True,
            )
        )  # fmt: skip
        self._add_options()
        self.addParameter(
            QgsProcessingParameterBoolean(
                "REDO", "Predict again pairs whose outputs exist already", False
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                "LOAD", "Add the outputs of the predicted pairs to the project", True
            )
        )
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        self.addOutput(QgsProcessingOutputMultipleLayers("CLASSES", "Classes rasters"))
        self.addOutput(QgsProcessingOutputNumber("PAIRS", "Pairs predicted or complete"))

    def processAlgorithm(self, parameters, context, feedback):
        rgb = self.parameterAsFile(parameters, "RGB", context)
        x = self.parameterAsFile(parameters, "X", context) or None
        request = self._request(parameters, context, rgb, x)
        result = self._run(request, feedback)
        pairs = [o for o in result.outputs if "classes" in o]
        pairs += [existing_outputs(request.out, stem) for stem in result.skipped]
        pairs = [o for o in pairs if "classes" in o]
        if self.parameterAsBool(parameters, "LOAD", context):
            for outputs in pairs:
                self._load(outputs, context)
        return {
            "OUTPUT": request.out,
            "CLASSES": [str(o["classes"]) for o in pairs],
            "PAIRS": len(result.finished),
        }


def _absolute(path: str) -> str:
    """An existing relative file or folder made absolute; anything else (a GDAL connection
    string such as ``/vsizip/...`` or ``NETCDF:...``) as it is."""
    return os.path.abspath(path) if not os.path.isabs(path) and os.path.exists(path) else path


def _raster_path(
    alg: QgsProcessingAlgorithm, parameters: dict[str, Any], name: str, context
) -> str:
    """The file behind a raster-layer parameter (predict.py reads files, not QGIS layers)."""
    layer = alg.parameterAsRasterLayer(parameters, name, context)
    if layer is None:
        raise QgsProcessingException(f"{name}: not a raster layer or file QGIS can open")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{name}: layer {layer.name()!r} is not a raster file ({layer.providerType()} "
            "provider); export it as a GeoTIFF first (Raster > Conversion > Translate)"
        )
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    return parts.get("path") or layer.source()
