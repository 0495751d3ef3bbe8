"""FMB (Liu et al., ICCV 2023, SegMiF): RGB-infrared, 15 classes, 1220/280.

The layout, the thermal encodings and the labels are in ``data_catalog/fmb.yaml``. What the
card cannot say: SegMiF reads ``Infrared/`` with ``cv2.imread(path, 0)``, i.e. as grey whatever
the file stores, and copies of the release with 3-channel infrared PNGs exist. This subclass
reads those as grey (ITU-R 601 weights, as OpenCV's PNG decoder), so both copies load alike.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from rsfusion.data.natural.base import NaturalRGBXDataset, SampleRef
from rsfusion.data.natural.encodings import apply_ops
from rsfusion.data.natural.readers import SampleFormatError, read_file

GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_grey(stored: np.ndarray) -> np.ndarray:
    """``(3 or 4, H, W)`` colour -> ``(1, H, W)`` grey in the stored dtype (alpha dropped)."""
    grey = np.tensordot(GREY_WEIGHTS, stored[:3].astype(np.float64), axes=1)
    return np.round(grey)[None].astype(stored.dtype)


class FMB(NaturalRGBXDataset):
    """FMB samples (``Visible/``, ``Infrared/``, ``Label/`` under ``train/`` and ``test/``).

    Example:
        >>> ds = FMB("data/FMB", "test", x="infrared")  # doctest: +SKIP
        >>> len(ds), ds[0]["image_x"].shape  # doctest: +SKIP
        (280, torch.Size([3, 600, 800]))
    """

    card_name = "fmb"
    grey_modalities: ClassVar[tuple[str, ...]] = ("infrared",)

    def read_modality(self, name: str, ref: SampleRef) -> np.ndarray:
        if name not in self.grey_modalities:
            return super().read_modality(name, ref)
        mod = self.card.modality(name)
        path = self.find_file(mod.patterns, ref, f"'{name}'")
        stored = read_file(path, mod.key, mod.channels_first)
        if stored.shape[0] in (3, 4):
            stored = to_grey(stored)
        if stored.shape[0] != 1:
            raise SampleFormatError(
                f"{path}: has {stored.shape[0]} channels; '{name}' is grey (1, 3 or 4 channels)"
            )
        return apply_ops(stored, mod.encoding(self.encodings.get(name)).ops, str(path))
