"""Per-stage cross-modal fusion modules: DGFM (MoBaNet), DSCF (KTB), GPM (CPAL)."""

from rsfusion.models.fusion.dgfm import DGFM
from rsfusion.models.fusion.dscf import DSCF, dscf_stage_options
from rsfusion.models.fusion.gpm import GPM, gpm_width

__all__ = ["DGFM", "DSCF", "GPM", "dscf_stage_options", "gpm_width"]
