"""UrbanLF (Sheng et al., TCSVT 2022): light fields of urban scenes, 14 classes, Real + Syn.

``data_catalog/urbanlf.yaml`` describes the official layout (``UrbanLF_Real/``,
``UrbanLF_Syn/``) and CMNeXt's copy (``real/``, ``Syn/``): labels from ``label.npy`` (Real) or
``5_5_label.npy`` (Syn), 0 and 255 void. What the card cannot say: CMNeXt reads Real's labels
from the colour-coded ``label.png``, so a copy may hold only that. Where no ``.npy`` label
exists, the PNG beside it is decoded here by the card's palette, every colour exactly (black
is the class ``others``, so the ISPRS decoder, which reserves black, does not apply); a colour
outside the palette is an error naming the file and the pixel.
"""

from __future__ import annotations

import numpy as np

from rsfusion.data.natural.base import NaturalRGBXDataset, SampleRef
from rsfusion.data.natural.readers import SampleFormatError, read_file

#: colour-coded labels read where a sample has no ``.npy`` one (Real, Syn)
PNG_LABELS = ("{id}/label.png", "{id}/5_5_label.png")


class UrbanLF(NaturalRGBXDataset):
    """UrbanLF samples (id = the folder path, e.g. ``real/train/Image17``).

    Example:
        >>> ds = UrbanLF("data/UrbanLF", "val", x="view_1_1", condition="real")  # doctest: +SKIP
        >>> ds.samples[0].id  # doctest: +SKIP
        'UrbanLF_Real/val/Image301'
    """

    card_name = "urbanlf"

    def read_labels(self, ref: SampleRef) -> np.ndarray:
        """Class indices from the ``.npy`` labels, else from the colour-coded PNG."""
        spec = self.card.labels
        assert spec is not None
        if any((self.root / p.format(**ref.fields())).is_file() for p in spec.patterns):
            return super().read_labels(ref)
        path = self.find_file([*spec.patterns, *PNG_LABELS], ref, "label")
        return self.decode_colours(read_file(path, as_rgb=True), str(path))

    def decode_colours(self, rgb: np.ndarray, source: str) -> np.ndarray:
        """``(3, H, W)`` colours -> class indices through the card's palette (exact match)."""
        codes = (rgb[0].astype(np.int64) << 16) | (rgb[1].astype(np.int64) << 8) | rgb[2]
        palette = np.array([(r << 16) | (g << 8) | b for r, g, b in self.card.palette])
        order = np.argsort(palette)
        pos = np.minimum(np.searchsorted(palette[order], codes), len(palette) - 1)
        known = palette[order][pos] == codes
        if not known.all():
            row, col = (int(v) for v in np.argwhere(~known)[0])
            colour = tuple(int(v) for v in rgb[:, row, col])
            raise SampleFormatError(
                f"{source}: colour {colour} at pixel (row {row}, col {col}) is not one of the "
                f"card's {self.card.num_classes} class colours; the labels are damaged or of "
                "another dataset"
            )
        return order[pos].astype(np.int64)

    def file_groups(self) -> list[tuple[str, ...]]:
        """As the base class, a label being found as ``.npy`` or as the colour PNG."""
        groups = super().file_groups()
        return [*groups[:-1], (*groups[-1], *PNG_LABELS)]
