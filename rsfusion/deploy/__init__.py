"""Deployment: ONNX export with Deepness metadata, and ONNX Runtime prediction.

``python scripts/export.py --ckpt CKPT --onnx OUT.onnx`` (:mod:`rsfusion.cli.export`) writes a
model any ONNX runtime can run, with the metadata rsfusion and the Deepness QGIS plugin read;
:class:`OnnxModel` runs it like the torch model, so ``scripts/predict.py`` predicts with it
through the same windows, blending and writers. ``python scripts/quantize.py --ckpt CKPT``
(:mod:`rsfusion.deploy.quantize`) makes an int8 model for CPUs, calibrated on the checkpoint's
training tiles and checked against float32 before it is cached beside the checkpoint. onnx and
onnxruntime are imported when used (``pip install 'rsfusion[onnx]'``).
"""

from __future__ import annotations

from rsfusion.deploy.deepness import DEEPNESS_KEYS, DeepnessPlan, XFixed, deepness_plan, fixed_x
from rsfusion.deploy.onnx import (
    ExportResult,
    OnnxModel,
    export_onnx,
    load_onnx_predictor,
    read_onnx_export,
    read_onnx_meta,
)
from rsfusion.deploy.quantize import (
    QuantSettings,
    auto_int8,
    int8_source,
    load_int8_predictor,
)

__all__ = [
    "DEEPNESS_KEYS",
    "DeepnessPlan",
    "ExportResult",
    "OnnxModel",
    "QuantSettings",
    "XFixed",
    "auto_int8",
    "deepness_plan",
    "export_onnx",
    "fixed_x",
    "int8_source",
    "load_int8_predictor",
    "load_onnx_predictor",
    "read_onnx_export",
    "read_onnx_meta",
]
