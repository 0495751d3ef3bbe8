"""DeLiVER (Zhang et al., CVPR 2023, CMNeXt): CARLA scenes, RGB + depth / LiDAR / event, 25 classes.

``data_catalog/deliver.yaml`` describes the front-view release read by CMNeXt
(``<modality>/<condition>/<split>/<scene>/<frame>_<suffix>_front.png``): X = ``depth`` (8-bit,
repeated to 3 channels), ``hha`` (CMNeXt's "depth" input), ``lidar`` or ``event``; the weather
(cloud/fog/night/rain/sun) and sensor-failure scenes (motionblur, overexposure, underexposure,
lidarjitter, eventlowres) are card conditions (``data.condition``). The card cannot say two
things, done here: the sample id is a path (``cloud/train/MAP_1_point102/110100``: frame names
repeat across scenes), read back from each RGB file through the RGB pattern
(:class:`RGBPathSamples`); and the event images of the ``_eventlowres`` scenes are smaller than
the RGB, so they are resized to it with nearest interpolation as CMNeXt does.
"""

from __future__ import annotations

import re
import string
from pathlib import PurePosixPath
from typing import ClassVar

import numpy as np
from PIL import Image

from rsfusion.data.natural.base import NaturalRGBXDataset, SampleRef, list_samples
from rsfusion.data.natural.readers import SampleFormatError
from rsfusion.errors import UnknownNameError


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex reading ``{id}`` (any text) and ``{split}`` / ``{condition}`` (one folder name)
    back from a path made by ``pattern``, extension dropped (as ``id_from: path`` ids are).

    Example:
        >>> pattern_regex("{split}/0/{id}_image0_0.png").fullmatch("val/0/0345_image0_0")["id"]
        '0345'
    """
    stem = str(PurePosixPath(pattern).with_suffix(""))
    parts = []
    for literal, field, _, _ in string.Formatter().parse(stem):
        parts.append(re.escape(literal))
        if field == "id":
            parts.append("(?P<id>.+)")
        elif field:
            parts.append(f"(?P<{field}>[^/]+)")
    return re.compile("".join(parts))


class RGBPathSamples(NaturalRGBXDataset):
    """Samples listed by the card's glob of RGB files (``id_from: path``), each sample's id
    (and split folder, where the RGB pattern has ``{split}``) read back from its RGB path.

    For releases whose file names carry a modality suffix (DeLiVER ``_rgb_front``, ZJU-RGB-P
    ``_image0_0``) the glob's own ids cannot name the other modalities' files; this class turns
    ``val/0/0345_image0_0`` into id ``0345`` in split folder ``val``, so a card part may also
    read another part's folder (ZJU-RGB-P's test part is its val set). Card conditions filter
    with their ``match`` regex on the ids made here.
    """

    def list_samples(self) -> list[SampleRef]:
        pattern = self.card.modality(self.rgb).patterns[0]
        rx = pattern_regex(pattern)
        refs = []
        for ref in list_samples(self.card, self.root, self.preset, self.part):
            found = rx.fullmatch(ref.id)
            if found is None:
                raise SampleFormatError(
                    f"{self.root / ref.id}: a '{self.part}' sample that the RGB pattern "
                    f"'{pattern}' does not describe; the card's split parts must glob the RGB "
                    "files with id_from: path"
                )
            fields = found.groupdict()
            refs.append(SampleRef(fields["id"], fields.get("split") or ref.split, ref.condition))
        if self.condition is None:
            return refs
        if self.condition not in self.card.conditions:
            raise UnknownNameError(
                f"dataset card '{self.card.name}' has no condition '{self.condition}'; "
                f"choose one of {sorted(self.card.conditions)} or null"
            )
        match = self.card.conditions[self.condition].match
        return [r for r in refs if match is None or re.search(match, r.id)]


def resize_nearest(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(C, h, w)`` -> ``(C, height, width)``, nearest neighbour (source index floor(i * h /
    height), as ``torch.nn.functional.interpolate(mode="nearest")``)."""
    rows = np.arange(height) * arr.shape[-2] // height
    cols = np.arange(width) * arr.shape[-1] // width
    return arr[:, rows[:, None], cols[None, :]]


class DELIVER(RGBPathSamples):
    """DeLiVER front-view samples (id ``<condition>/<split>/<scene>/<frame>``), 1042 x 1042.

    Example:
        >>> ds = DELIVER("data/DELIVER", "val", x="event", condition="night")  # doctest: +SKIP
        >>> ds.samples[0].id  # doctest: +SKIP
        'night/val/MAP_2_point46/003200'
    """

    card_name = "deliver"
    resized_to_rgb: ClassVar[tuple[str, ...]] = ("event",)  # _eventlowres scenes

    def read_modality(self, name: str, ref: SampleRef) -> np.ndarray:
        """One modality, encoded; event images smaller than the RGB are resized (nearest)."""
        arr = super().read_modality(name, ref)
        if name not in self.resized_to_rgb:
            return arr
        rgb_path = self.find_file(self.card.modality(self.rgb).patterns, ref, "RGB")
        with Image.open(rgb_path) as img:
            width, height = img.size
        if arr.shape[-2:] == (height, width):
            return arr
        return resize_nearest(arr, height, width)
