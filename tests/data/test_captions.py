"""Captions files for MA-CLIP pre-training: reading, one-line errors, ids, template captions."""

from __future__ import annotations

import numpy as np
import pytest

from rsfusion.data.captions import (
    caption_for,
    match_captions,
    read_captions,
    template_caption,
    window_id,
    write_captions,
)
from rsfusion.errors import MissingFileError, PairingError, SampleFormatError


def test_a_tsv_file_reads_ids_and_captions(tmp_path):
    path = tmp_path / "nyu.tsv"
    path.write_text(
        "# sample id<TAB>caption\n\n2\tA kitchen with a table,  chairs.\n"
        "cloud/train/MAP_1/000001\t  a street in fog \n",
        encoding="utf-8",
    )
    assert read_captions(path) == {
        "2": "A kitchen with a table,  chairs.",
        "cloud/train/MAP_1/000001": "a street in fog",
    }


def test_a_jsonl_file_reads_the_same(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_text('{"id": 2, "caption": "a kitchen"}\n# note\n{"id": "3", "caption": "x"}\n')
    assert read_captions(path) == {"2": "a kitchen", "3": "x"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1\tok\n2 no tab here\n", "line 2: no tab between sample id and caption"),
        ("1\tok\n1\tagain\n", "line 2: sample id '1' has a caption already"),
        ("1\t   \n", "line 1: sample '1' has an empty caption"),
        ("\tcaption\n", "line 1: empty sample id"),
        ("1\ta\tb\n", "line 1: more than one tab"),
        ("# only a comment\n", "no captions in the file"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "caps.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SampleFormatError, match=message) as info:
        read_captions(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_json_missing_file_and_bad_encoding(tmp_path):
    bad = tmp_path / "caps.jsonl"
    bad.write_text('{"id": 1, "caption": "a"}\n{"id": 2,\n')
    with pytest.raises(SampleFormatError, match="caps.jsonl, line 2: not JSON"):
        read_captions(bad)
    with pytest.raises(MissingFileError, match="--template-captions"):
        read_captions(tmp_path / "none.tsv")
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("1\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(SampleFormatError, match="not UTF-8"):
        read_captions(latin)


def test_written_captions_read_back(tmp_path):
    captions = {"1:0:0": "an aerial photo\twith\nroads", "2": "a room"}
    path = write_captions(tmp_path / "out" / "caps.tsv", captions)
    assert read_captions(path) == {"1:0:0": "an aerial photo with roads", "2": "a room"}
    assert [p.name for p in path.parent.iterdir()] == ["caps.tsv"]


def test_a_window_falls_back_to_its_tiles_caption():
    captions = {"3": "tile three", "3:0:128": "this window"}
    assert caption_for(window_id("3", 0, 128), captions) == "this window"
    assert caption_for("3:128:0", captions) == "tile three"
    assert caption_for("4:0:0", captions) is None and caption_for("5", captions) is None
    assert match_captions(["3:0:128", "3:5:5"], captions, "f.tsv") == ["this window", "tile three"]
    with pytest.raises(PairingError, match="f.tsv: no caption for 2 of 3 samples.*'4:0:0', '9'"):
        match_captions(["3", "4:0:0", "9"], captions, "f.tsv")


def test_template_caption_lists_classes_by_area():
    names = ["road", "car", "sky", "low_vegetation"]
    mask = np.array([[2, 2, 2, 0], [2, 0, 0, 3], [255, 255, 1, 3]])
    assert template_caption(mask, names) == "a photo with sky, road, low vegetation and car"
    assert template_caption(mask, names, max_classes=2) == "a photo with sky and road"
    assert template_caption(mask, names, min_fraction=0.25) == "a photo with sky and road"
    assert template_caption(np.zeros((2, 2), int), names, subject="an aerial photo") == (
        "an aerial photo with road"
    )
    assert template_caption(np.full((2, 2), 255), names) == "a photo"
    tie = np.array([1, 0])  # equal areas: class order
    assert template_caption(tie, names) == "a photo with road and car"
