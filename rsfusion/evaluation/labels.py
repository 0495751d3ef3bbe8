"""Labels to score against: which raster of each tile (eroded or full), read as class ids.

ISPRS tiles come with two label rasters: the full ground truth and the eroded one
(``*_noBoundary*``) whose boundary pixels are black, i.e. ignored. The published protocol scores
on the eroded labels; :func:`tile_labels` picks them (or the full ones, when asked) and refuses
a tile without them instead of falling back silently. Colour-coded rasters are decoded through
the palette by :class:`rsfusion.data.labels.PaletteDecoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rsfusion.errors import MissingFileError

#: the label choices: ``eroded`` and ``full`` for every tile; ``eroded-or-full`` takes the full
#: labels only for a tile without eroded ones (recorded per tile in metrics.json)
LABEL_CHOICES = ("eroded", "full", "eroded-or-full")


def read_labels(source: str, palette: list, ignore_index: int) -> np.ndarray:
    """Class ids of a label raster: colour-coded through the palette, or single-band ids.

    Raises:
        LabelColourError: a colour that is not in ``palette`` (nor black), naming the file.
    """
    import rasterio
    import torch

    from rsfusion.data.labels import PaletteDecoder

    with rasterio.open(source) as src:
        data = src.read()
    if data.shape[0] == 1:
        return data[0].astype(np.int64)
    return PaletteDecoder(palette, ignore_index)(torch.from_numpy(data), source).numpy()


def read_classes(path: Path) -> tuple[np.ndarray, int | None]:
    """A classes raster written by prediction (band 1, as int64) and its nodata value."""
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1).astype(np.int64), None if src.nodata is None else int(src.nodata)


def tile_labels(
    tiles: list[Any], wanted: str, card: Any, root: str | Path, split: str
) -> dict[str, tuple[Any, str]]:
    """Each tile's label raster and its kind ('eroded' or 'full') for ``--labels wanted``.

    ``eroded`` and ``full`` take exactly that kind for every tile; ``eroded-or-full`` takes the
    full labels where a tile has no eroded ones. Never falls back silently.

    Raises:
        MissingFileError: a tile lacks the labels asked for (the message names the files
            looked for and the fix).
    """
    chosen: dict[str, tuple[Any, str]] = {}
    missing: list[str] = []
    for tile in tiles:
        tid = str(tile.tile_id)
        if wanted == "eroded-or-full" and tile.eroded is None:
            kind = "full"
        else:
            kind = "full" if wanted == "full" else "eroded"
        raster = tile.eroded if kind == "eroded" else tile.label
        if raster is None:
            where = [str(Path(root) / card.format_pattern(p, tid)) for p in
                     card.label_patterns.get(kind, ())]  # fmt: skip
            missing.append(f"tile {tid} ({' or '.join(where) or 'no pattern in the card'})")
            continue
        chosen[tid] = (raster, kind)
    if missing:
        if wanted == "full":
            fix = "extract the full ground truth there, or score on the eroded labels: --labels eroded"
        else:
            fix = (
                "extract the eroded (noBoundary) ground truth there, or score on the full labels "
                "and say so: --labels full (every tile) or --labels eroded-or-full (full labels "
                "only for the tiles without eroded ones; metrics.json records each tile's labels)"
            )
        raise MissingFileError(
            f"{len(missing)} {split} tile(s) have no {wanted} labels: {'; '.join(missing)}. "
            f"Fix: {fix}"
        )
    return chosen
