"""Checks run once before training, so bad input fails before the first step, not hours in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import rasterio

from rsfusion.data.labels import LabelColourError
from rsfusion.data.tiles import GeoRaster


def check_label_colours(raster: GeoRaster, palette: Sequence[Sequence[int]]) -> None:
    """Stream a colour-coded label raster block by block; every colour must be in the palette.

    Black (boundaries in the eroded labels) is always allowed. The error names the file, the
    first unknown colour and its pixel position in the file.
    """
    allowed = np.zeros(1 << 24, dtype=bool)
    for r, g, b in [*palette, (0, 0, 0)]:
        allowed[(r << 16) | (g << 8) | b] = True
    with rasterio.open(raster.source) as src:
        if src.count != 3:
            raise LabelColourError(
                f"labels {raster.path} have {src.count} band(s); colour-coded labels need 3 "
                "(red, green, blue)"
            )
        for _, window in src.block_windows(1):
            rgb = src.read(window=window).astype(np.int32)
            codes = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
            bad = ~allowed[codes]
            if bad.any():
                row, col = (int(v) for v in np.argwhere(bad)[0])
                colour = tuple(int(rgb[i, row, col]) for i in range(3))
                raise LabelColourError(
                    f"labels {raster.path}: colour {colour} at pixel (row "
                    f"{row + int(window.row_off)}, col {col + int(window.col_off)}) is not in the "
                    f"palette {[tuple(c) for c in palette]} (+ black for boundaries). Fix the "
                    "file, or the dataset card's class colours if the labels use another coding."
                )
