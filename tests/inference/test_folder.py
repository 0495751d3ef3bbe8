"""Folder runs: pairing by the card's patterns, CSV pairs, torchrun sharding, resume helpers."""

import os

import pytest

from rsfusion.inference.folder import (
    Pair,
    PairingError,
    outputs_done,
    pair_folders,
    read_pairs_csv,
    remove_stale_partials,
    shard,
)


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return folder


def test_potsdam_pairs_follow_the_card_zero_padding(tmp_path):
    rgb = _touch(tmp_path / "rgb", "top_potsdam_2_10_RGB.tif", "top_potsdam_7_8_RGB.tif")
    x = _touch(tmp_path / "x", "dsm_potsdam_07_08.tif", "dsm_potsdam_02_10.tif", "notes.txt")
    pairs = pair_folders(rgb, x, "potsdam", "rgb", "dsm")
    assert [(p.rgb.name, p.x.name) for p in pairs] == [
        ("top_potsdam_2_10_RGB.tif", "dsm_potsdam_02_10.tif"),
        ("top_potsdam_7_8_RGB.tif", "dsm_potsdam_07_08.tif"),
    ]


def test_vaihingen_pairs_and_unknown_names_pair_by_name(tmp_path):
    rgb = _touch(tmp_path / "rgb", "top_mosaic_09cm_area11.tif", "my_tile.tif")
    x = _touch(tmp_path / "x", "dsm_09cm_matching_area11.tif", "dsm_09cm_matching_area1.tif",
               "my_tile.tif")  # fmt: skip
    pairs = pair_folders(rgb, x, "vaihingen", "rgb", "dsm")
    assert {p.rgb.name: p.x.name for p in pairs} == {
        "top_mosaic_09cm_area11.tif": "dsm_09cm_matching_area11.tif",  # not area1
        "my_tile.tif": "my_tile.tif",
    }


def test_unpaired_files_are_listed_with_the_fix(tmp_path):
    rgb = _touch(tmp_path / "rgb", "top_mosaic_09cm_area2.tif", "lonely.tif")
    x = _touch(tmp_path / "x", "dsm_09cm_matching_area2.tif")
    with pytest.raises(PairingError, match=r"lonely\.tif.*--pairs"):
        pair_folders(rgb, x, "vaihingen", "rgb", "dsm")
    with pytest.raises(PairingError, match="no raster files"):
        pair_folders(_touch(tmp_path / "empty"), x)


def test_csv_pairs_resolve_relative_paths_and_name_bad_lines(tmp_path):
    _touch(tmp_path / "d", "a.tif", "a_dsm.tif", "b.tif")
    csv = tmp_path / "pairs.csv"
    csv.write_text("rgb,x\nd/a.tif,d/a_dsm.tif\nd/b.tif,\n")
    pairs = read_pairs_csv(csv)
    assert pairs == [Pair((tmp_path / "d/a.tif").resolve(), (tmp_path / "d/a_dsm.tif").resolve()),
                     Pair((tmp_path / "d/b.tif").resolve(), None)]  # fmt: skip
    csv.write_text("rgb,x\nd/a.tif,d/missing.tif\n")
    with pytest.raises(PairingError, match="line 2: no such file"):
        read_pairs_csv(csv)


def test_shards_cover_every_pair_once():
    pairs = [Pair(p, None) for p in map(str, range(7))]
    shards = [shard(pairs, r, 3) for r in range(3)]
    assert sorted(str(p.rgb) for s in shards for p in s) == sorted(map(str, range(7)))
    assert [len(s) for s in shards] == [3, 2, 2]
    with pytest.raises(ValueError, match="rank 3"):
        shard(pairs, 3, 3)


def test_resume_helpers(tmp_path):
    names = ["{stem}_classes.tif", "{stem}.gpkg"]
    _touch(tmp_path, "a_classes.tif")
    assert not outputs_done(tmp_path, "a", names)
    _touch(tmp_path, "a.gpkg")
    assert outputs_done(tmp_path, "a", names)
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    _touch(tmp_path, f".a_classes.tif.{dead}.partial", f".a_probs.tif.{os.getpid()}.partial",
           ".a_classes.tiled.tif", ".b_classes.tif.1.partial")  # fmt: skip
    removed = {p.name for p in remove_stale_partials(tmp_path, "a")}
    assert removed == {f".a_classes.tif.{dead}.partial", ".a_classes.tiled.tif"}
    assert (tmp_path / f".a_probs.tif.{os.getpid()}.partial").exists()  # a live writer's
