"""Palette decoding of colour-coded labels."""

import pytest
import torch

from rsfusion.catalog import load_card
from rsfusion.data.labels import PaletteDecoder
from rsfusion.errors import LabelColourError


def _paint(colours):
    """(3, 1, N) image from a list of RGB triples."""
    return torch.tensor(colours, dtype=torch.uint8).T.reshape(3, 1, -1)


def test_decodes_every_isprs_colour_and_black_to_ignore():
    card = load_card("vaihingen")
    dec = PaletteDecoder(card.palette, card.ignore_index)
    rgb = _paint([*card.palette, (0, 0, 0)])
    assert dec(rgb).tolist() == [[0, 1, 2, 3, 4, 5, 255]]


def test_unknown_colour_names_colour_position_and_source():
    card = load_card("vaihingen")
    dec = PaletteDecoder(card.palette, card.ignore_index)
    rgb = torch.zeros(3, 4, 5, dtype=torch.uint8)
    rgb[:, 2, 3] = torch.tensor([12, 34, 56])
    with pytest.raises(LabelColourError) as err:
        dec(rgb, source="area7.tif")
    msg = str(err.value)
    assert "(12, 34, 56)" in msg and "row 2, col 3" in msg and "area7.tif" in msg


def test_black_class_is_refused():
    with pytest.raises(ValueError, match="reserved"):
        PaletteDecoder([(0, 0, 0), (1, 1, 1)], 255)
