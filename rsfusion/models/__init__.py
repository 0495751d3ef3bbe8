"""Models: baselines and the dual-stream recipes. Importing this registers them all."""

from rsfusion.models import baselines, cpal, ktb, mobanet, segrgbx  # noqa: F401
from rsfusion.models.base import ModelSpec, SampleMeta, SegmentationModel, build_model
from rsfusion.models.engine import DualStreamEngine, Recipe, StageOutput

__all__ = [
    "DualStreamEngine",
    "ModelSpec",
    "Recipe",
    "SampleMeta",
    "SegmentationModel",
    "StageOutput",
    "build_model",
]
