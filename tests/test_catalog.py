"""Dataset cards: loading, tile-id fields, patterns, splits."""

import pytest

from rsfusion.catalog import list_cards, load_card


def test_shipped_cards_load():
    assert {"vaihingen", "potsdam"} <= set(list_cards())
    card = load_card("vaihingen")
    assert card.num_classes == 6
    assert card.class_names[-1] == "clutter"
    assert card.metric_classes == [0, 1, 2, 3, 4]
    assert card.palette[1] == (0, 0, 255)


def test_potsdam_patterns_zero_pad_dsm_but_not_orthophoto():
    card = load_card("potsdam")
    assert card.format_pattern(card.modality("rgb").patterns[0], "2_10") == (
        "2_Ortho_RGB/top_potsdam_2_10_RGB.tif"
    )
    assert card.format_pattern(card.modality("dsm").patterns[0], "2_10") == (
        "1_DSM/dsm_potsdam_02_10.tif"
    )
    assert card.format_pattern(card.modality("ndsm").patterns[0], "6_7") == (
        "1_DSM_normalisation/dsm_potsdam_06_07_normalized_lastools.jpg"
    )


def test_splits_official_and_lineage():
    card = load_card("vaihingen")
    official = card.split()
    assert len(official["train"]) == 16 and len(official["test"]) == 17
    assert not set(official["train"]) & set(official["test"])
    assert card.split("ftransunet")["test"] == ("5", "15", "21", "30")
    potsdam = load_card("potsdam")
    assert "7_10" in potsdam.split("official")["train"]
    assert "7_10" not in potsdam.split("mobanet")["train"]


def test_errors_name_the_fix():
    with pytest.raises(FileNotFoundError, match="did you mean 'vaihingen'"):
        load_card("vaihigen")
    card = load_card("vaihingen")
    with pytest.raises(KeyError, match="choose one of"):
        card.modality("lidar")
    with pytest.raises(ValueError, match="does not have the 2 part"):
        load_card("potsdam").tile_fields_of("7")
