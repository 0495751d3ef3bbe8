"""Models: baselines and the dual-stream recipes. Importing this registers them all."""

from rsfusion.models import baselines, ktb, mobanet  # noqa: F401
from rsfusion.models.base import ModelSpec, build_model

__all__ = ["ModelSpec", "build_model"]
