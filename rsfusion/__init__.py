"""rsfusion: multimodal (RGB+X) semantic segmentation on one dual-stream engine."""

__version__ = "0.1.0"
