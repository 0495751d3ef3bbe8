"""Decoder heads on a fused feature pyramid, and single-modality auxiliary heads."""

from rsfusion.models.heads.aux import AuxHead
from rsfusion.models.heads.ham import NMF2D, Hamburger, LightHamHead
from rsfusion.models.heads.segformer import SegFormerHead
from rsfusion.models.heads.upernet import ConvBNAct, UPerNetHead

__all__ = [
    "NMF2D",
    "AuxHead",
    "ConvBNAct",
    "Hamburger",
    "LightHamHead",
    "SegFormerHead",
    "UPerNetHead",
]
