"""SUN RGB-D (Song et al., CVPR 2015): 37 classes, the official 5285/5050 split.

Everything is in ``data_catalog/sunrgbd.yaml``: the DFormer release layout (RGB/, Depth/,
labels/, train.txt/test.txt), depth encodings (``repeat3`` as the papers; ``metres`` decodes
the toolbox's 16-bit storage with its bits rotated by 3, and refuses DFormer's 8-bit RGBA PNGs,
which are read as one grey channel) and the label mapping 0 -> ignore, 1..37 -> 0..36. Images differ in size: configs crop per sample on the CPU (``data.crop``).
"""

from __future__ import annotations

from rsfusion.data.natural.base import NaturalRGBXDataset


class SUNRGBD(NaturalRGBXDataset):
    """SUN RGB-D samples; sizes vary (Kinect v1/v2, Xtion, RealSense images).

    Example:
        >>> ds = SUNRGBD("data/SUNRGBD", "test", x="depth")  # doctest: +SKIP
        >>> len(ds)  # doctest: +SKIP
        5050
    """

    card_name = "sunrgbd"
