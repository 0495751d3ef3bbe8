"""MFNet (Ha et al., IROS 2017): RGB-thermal urban driving, 9 classes, 784 / 392 / 393.

``data_catalog/mfnet.yaml`` describes the ``ir_seg_dataset`` release (4-channel
``images/<name>.png``, ``labels/<name>.png``, split files). What the card cannot say: the
release ships ``make_flip.py``, which writes horizontally mirrored copies ``<name>_flip``, and
split files of some copies name such copies. Mirrored copies are not frames of the benchmark
(this package mirrors on the fly with ``augment.hflip``), so names ending in ``_flip`` are
skipped, with their count in the log, and never silently trained on.
"""

from __future__ import annotations

import logging

from rsfusion.data.natural.base import NaturalRGBXDataset, SampleRef

log = logging.getLogger(__name__)

FLIP_SUFFIX = "_flip"


class MFNet(NaturalRGBXDataset):
    """MFNet samples (id = the 5-digit frame and D/N, e.g. ``00001D``).

    Example:
        >>> ds = MFNet("data/ir_seg_dataset", "train", x="thermal")  # doctest: +SKIP
        >>> len(ds)  # doctest: +SKIP
        784
    """

    card_name = "mfnet"

    def list_samples(self) -> list[SampleRef]:
        """The split file's frames, without the ``_flip`` copies (counted in the log)."""
        refs = super().list_samples()
        flips = [r.id for r in refs if r.id.endswith(FLIP_SUFFIX)]
        if flips:
            kept = [r for r in refs if not r.id.endswith(FLIP_SUFFIX)]
            log.warning(
                "mfnet %s: skipped %d '%s' entries of the split file (e.g. %s): mirrored "
                "copies written by the release's make_flip.py, not benchmark frames (training "
                "mirrors on the fly, augment.hflip); %d frames kept",
                self.part, len(flips), FLIP_SUFFIX, flips[0], len(kept),
            )  # fmt: skip
            refs = kept
        return refs
