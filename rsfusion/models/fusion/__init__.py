"""Per-stage cross-modal fusion modules (DGFM, ...)."""

from rsfusion.models.fusion.dgfm import DGFM
from rsfusion.models.fusion.dscf import DSCF, dscf_stage_options

__all__ = ["DGFM", "DSCF", "dscf_stage_options"]
