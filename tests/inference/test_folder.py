"""Folder runs: pairing by the card's patterns, CSV pairs, torchrun sharding, resume helpers."""

import os
from pathlib import Path

import pytest

from rsfusion.data.writers import staging_dir, staging_owner
from rsfusion.inference.folder import (
    Pair,
    PairingError,
    check_unique_outputs,
    output_stem,
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


def test_stale_partials_of_dead_processes_only_are_removed(tmp_path):
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    me = os.getpid()
    # earlier versions' names (pid only), every kind of file their writers made
    legacy_dead = [f".a_classes.tif.{dead}.partial", f".a_classes.tif.{dead}.partial.aux.xml",
                   f".a_classes.tif.{dead}.partial.ovr.tif", f".a.gpkg.{dead}.partial.gpkg",
                   f".a.gpkg.{dead}.partial.gpkg-wal", f".t[1]_classes.tif.{dead}.partial",
                   f".x.tif.{dead}.part"]  # fmt: skip
    legacy_alive = [f".a_probs.tif.{me}.partial", ".b_classes.tif.1.partial"]
    _touch(tmp_path, *legacy_dead, *legacy_alive, ".a_classes.tiled.tif", ".hidden_note")
    # this version's private folders, named with host and pid
    mine = staging_dir(tmp_path, "t[1]")
    stale = Path(str(mine).replace(f"-{me}-", f"-{dead}-"))
    other_host = Path(str(mine).replace(f"-{me}-", f"-{dead}-").replace(
        ".rsfusion-", ".rsfusion-elsewhere-"))  # fmt: skip
    for folder in (stale, other_host):
        folder.mkdir()
        _touch(folder, "t[1]_classes.tif", "overviews.tif", "a.gpkg-wal")
    removed = {p.name for p in remove_stale_partials(tmp_path)}
    assert removed == {*legacy_dead, stale.name}
    left = {p.name for p in tmp_path.iterdir()}
    assert {*legacy_alive, mine.name, other_host.name, ".a_classes.tiled.tif"} <= left
    assert staging_owner(mine.name)[1] == me and staging_owner(".hidden_note") is None


def test_output_names_keep_the_whole_file_name(tmp_path):
    odd = tmp_path / "d?q" / "t[1] ?.tif"
    assert output_stem(odd) == "t[1] ?"
    assert output_stem(f"vrt://{tmp_path}/a.tif?a_srs=EPSG:2056") == "a"
    pairs = [Pair(tmp_path / "d?q" / f"tile{i}.tif", None) for i in range(6)]
    check_unique_outputs(pairs)  # six tiles, six stems


def test_two_inputs_with_one_output_name_are_refused_naming_both(tmp_path):
    a, b = tmp_path / "north" / "tile.tif", tmp_path / "south" / "tile.tif"
    with pytest.raises(PairingError, match=rf"{a} and {b} would both write.*tile_classes"):
        check_unique_outputs([Pair(a, None), Pair(b, None)])
    with pytest.raises(PairingError, match=r"tile\.tif is listed twice"):
        check_unique_outputs([Pair(a, None), Pair(a, tmp_path / "dsm.tif")])
    with pytest.raises(PairingError, match="tile.vrt"):  # same stem, other extension
        check_unique_outputs([Pair(a, None), Pair(a.with_suffix(".vrt"), None)])


def test_a_pairs_file_that_is_not_text_is_a_pairing_error(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_bytes(b"\xff\xfe\x00rgb\x00\x81")
    with pytest.raises(PairingError, match="pairs.csv cannot be read as a CSV"):
        read_pairs_csv(csv)
