"""Per-stage cross-modal fusion modules: DGFM (MoBaNet), DSCF (KTB), GPM (CPAL), FRM/FFM (CMX,
used by SegRGB-X) and DSRM (SegRGB-X)."""

from rsfusion.models.fusion.cmx import FFM, FRM
from rsfusion.models.fusion.dgfm import DGFM
from rsfusion.models.fusion.dscf import DSCF, dscf_stage_options
from rsfusion.models.fusion.dsrm import DSRM
from rsfusion.models.fusion.gpm import GPM, gpm_width

__all__ = ["DGFM", "DSCF", "DSRM", "FFM", "FRM", "GPM", "dscf_stage_options", "gpm_width"]
