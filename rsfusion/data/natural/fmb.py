"""FMB (Liu et al., ICCV 2023, SegMiF): RGB-infrared, 15 classes, 1220/280.

The layout, the thermal encodings and the labels are in ``data_catalog/fmb.yaml``, including
what copies differ in: SegMiF reads ``Infrared/`` with ``cv2.imread(path, 0)``, i.e. as grey
whatever the file stores, and copies with 3- or 4-channel infrared PNGs exist; the card's
``channel_variants`` read those as grey (ITU-R 601 weights, as OpenCV's PNG decoder), so every
copy loads alike. Labels are read from channel 0 of ``Label/`` files with 255 = ignore, as the
CMNeXt-style FMB loaders do.
"""

from __future__ import annotations

from rsfusion.data.natural.base import NaturalRGBXDataset
from rsfusion.data.natural.readers import GREY_WEIGHTS, to_grey

__all__ = ["FMB", "GREY_WEIGHTS", "to_grey"]


class FMB(NaturalRGBXDataset):
    """FMB samples (``Visible/``, ``Infrared/``, ``Label/`` under ``train/`` and ``test/``).

    Example:
        >>> ds = FMB("data/FMB", "test", x="infrared")  # doctest: +SKIP
        >>> len(ds), ds[0]["image_x"].shape  # doctest: +SKIP
        (280, torch.Size([3, 600, 800]))
    """

    card_name = "fmb"
