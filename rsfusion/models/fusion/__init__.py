"""Per-stage cross-modal fusion modules (DGFM, ...)."""

from rsfusion.models.fusion.dgfm import DGFM

__all__ = ["DGFM"]
