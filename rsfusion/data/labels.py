"""Colour-coded label rasters (ISPRS) decoded to class ids through a dataset card's palette."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from rsfusion.errors import LabelColourError


def _codes(rgb: Tensor) -> Tensor:
    rgb = rgb.long()
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


class PaletteDecoder:
    """Map (3, H, W) colour labels to (H, W) class ids; black (boundary, padding) -> ignore.

    Args:
        palette: one RGB colour per class, in class order.
        ignore_index: id given to black pixels (eroded boundaries and window padding).

    Example:
        >>> dec = PaletteDecoder([(255, 255, 255), (0, 0, 255)], ignore_index=255)
        >>> dec(torch.tensor([[[255, 0]], [[255, 0]], [[255, 255]]])).tolist()
        [[0, 1]]
    """

    def __init__(self, palette: Sequence[Sequence[int]], ignore_index: int) -> None:
        colours = torch.tensor([list(c) for c in palette], dtype=torch.long)
        codes = _codes(colours.T[:, :, None])[:, 0]
        if (codes == 0).any():
            raise ValueError("black (0, 0, 0) is reserved for boundaries and cannot be a class")
        self.palette = [tuple(int(v) for v in c) for c in palette]
        self.ignore_index = ignore_index
        order = torch.argsort(codes)
        self._sorted = torch.cat([torch.zeros(1, dtype=torch.long), codes[order]])
        self._ids = torch.cat([torch.tensor([ignore_index]), order])

    def __call__(self, rgb: Tensor, source: str = "label raster") -> Tensor:
        """Decode; ``source`` names the file (or window) in the error for unknown colours."""
        if rgb.ndim != 3 or rgb.shape[0] != 3:
            raise LabelColourError(
                f"{source}: colour-coded labels need 3 bands, got shape {tuple(rgb.shape)}"
            )
        arr = rgb.numpy().astype(np.int64, copy=False)
        codes = (arr[0] << 16) | (arr[1] << 8) | arr[2]
        table = self._sorted.numpy()
        pos = np.minimum(np.searchsorted(table, codes), len(table) - 1)
        known = table[pos] == codes
        if not known.all():
            row, col = (int(v) for v in np.argwhere(~known)[0])
            colour = tuple(int(v) for v in rgb[:, row, col])
            raise LabelColourError(
                f"{source}: colour {colour} at pixel (row {row}, col {col}) is not in the "
                f"palette {self.palette} (+ black for boundaries). The labels are damaged or "
                "belong to another dataset; fix the file or the card's class colours."
            )
        return torch.from_numpy(self._ids.numpy()[pos])
