"""Labels to score against: eroded or full per tile, never a silent fallback; colours to ids."""

from __future__ import annotations

import types

import numpy as np
import pytest
import rasterio

from rsfusion.catalog import load_card
from rsfusion.errors import LabelColourError, MissingFileError
from rsfusion.evaluation.labels import read_classes, read_labels, tile_labels


def _tile(tid, eroded=True):
    """A tile as :func:`rsfusion.data.tiles.find_tiles` gives it: its label rasters by name."""
    label = types.SimpleNamespace(name=f"full{tid}")
    kept = types.SimpleNamespace(name=f"eroded{tid}") if eroded else None
    return types.SimpleNamespace(tile_id=tid, label=label, eroded=kept)


def test_each_tile_gets_the_labels_asked_for_and_a_missing_kind_is_refused(tmp_path):
    card = load_card("vaihingen")
    tiles = [_tile("2"), _tile("4", eroded=False)]
    mixed = tile_labels(tiles, "eroded-or-full", card, tmp_path, "test")
    assert {t: (r.name, kind) for t, (r, kind) in mixed.items()} == {
        "2": ("eroded2", "eroded"), "4": ("full4", "full")
    }  # fmt: skip
    assert {kind for _, kind in tile_labels(tiles, "full", card, tmp_path, "test").values()} == {
        "full"
    }  # fmt: skip
    with pytest.raises(MissingFileError) as caught:
        tile_labels(tiles, "eroded", card, tmp_path, "val")
    message = str(caught.value)
    assert message.startswith("1 val tile(s) have no eroded labels: tile 4 (")
    assert str(tmp_path / "top_mosaic_09cm_area4_noBoundary.tif") in message
    assert "--labels full" in message and "--labels eroded-or-full" in message


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_colour_labels_are_read_as_class_ids_and_unknown_colours_refused(vaihingen_root, tmp_path):
    card = load_card("vaihingen")
    source = vaihingen_root / "top_mosaic_09cm_area2_noBoundary.tif"
    ids = read_labels(str(source), card.palette, 255)
    with rasterio.open(source) as src:
        colours = src.read()
    assert ids.shape == colours.shape[1:]
    for i, colour in enumerate(card.palette):  # every pixel of a class colour has its id
        assert (ids[(colours.transpose(1, 2, 0) == colour).all(-1)] == i).all()
    assert ((ids == 255) == (colours == 0).all(0)).all()  # black boundaries: ignored
    profile = {"driver": "GTiff", "width": 4, "height": 3, "dtype": "uint8"}
    single = tmp_path / "ids.tif"
    with rasterio.open(single, "w", count=1, nodata=255, **profile) as dst:
        dst.write(np.arange(12, dtype=np.uint8).reshape(1, 3, 4))
    assert read_labels(str(single), card.palette, 255).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                                     [8, 9, 10, 11]]  # fmt: skip
    assert read_classes(single)[1] == 255
    odd = tmp_path / "odd.tif"
    with rasterio.open(odd, "w", count=3, **profile) as dst:
        dst.write(np.full((3, 3, 4), 7, np.uint8))
    with pytest.raises(LabelColourError, match="odd.tif: colour \\(7, 7, 7\\)"):
        read_labels(str(odd), card.palette, 255)
