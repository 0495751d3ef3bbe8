"""Release archives as downloaded: Potsdam and Vaihingen from their archives (member layouts as
published: torchgeo's test archives, mmsegmentation's converter), checksums, one atomic
unpacking, a file manager's nested extraction, and errors naming the archive."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

from rsfusion.catalog import load_card
from rsfusion.data import archives
from rsfusion.data.archives import Archive, archives_of, search_roots, unpack, where_from
from rsfusion.data.isprs import ISPRSDataset, Potsdam, Vaihingen
from rsfusion.data.natural.base import NaturalRGBXDataset
from rsfusion.errors import ConfigError, SampleFileError, TileError

DATA = Path(__file__).parent


def _zip(path: Path, root: Path, members: list[str]) -> Path:
    """A zip at ``path`` holding ``root/<member>`` under the name ``member``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in members:
            zf.write(root / member, member)
    return path


def _rel(root: Path, pattern: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))


def _potsdam_archives(dst: Path, src: Path) -> None:
    """The fixture packed as the release archives: product folders inside their archives,
    labels at the archives' top level (torchgeo's tests/data/potsdam/5_Labels_all.zip)."""
    for folder in ("1_DSM_normalisation", "2_Ortho_RGB"):
        _zip(dst / f"{folder}.zip", src, _rel(src, f"{folder}/*"))
    _zip(dst / "5_Labels_all.zip", src, _rel(src, "top_potsdam_*_label.tif"))
    _zip(dst / "5_Labels_all_noBoundary.zip", src, _rel(src, "*_label_noBoundary.tif"))


def _quiet(cls, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return cls(*args, **kwargs)


def _no_staging(root: Path) -> bool:
    return not [p for p in root.iterdir() if p.name.endswith(".partial")]


def test_card_archives_say_what_they_hold():
    card = load_card("potsdam")
    names = {a.name: a for a in archives_of(card)}
    assert names["5_Labels_all.zip"].holds == ("labels.full",)
    assert names["4_Ortho_RGBIR.zip"].md5 == "c4a8f7d8c7196dd4eba4addd0aae10c1"
    assert not names["1_DSM.rar"].unpackable and names["2_Ortho_RGB.zip"].unpackable
    assert Archive("x.tar.gz", None, ()).stem == "x"
    assert search_roots(card, Path("/d"), "rgb") == [Path("/d"), Path("/d/2_Ortho_RGB")]
    assert Archive("a.zip", None, ("labels",)).holds_entry("labels.eroded")
    assert Archive("a.zip", None, ("labels.full",)).holds_entry("labels")


def test_potsdam_loads_from_the_archives_as_downloaded(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    _potsdam_archives(root, potsdam_root)
    ds = _quiet(Potsdam, root, split="test", x="ndsm")
    assert [t.tile_id for t in ds.tiles] == ["2_13", "3_13"]
    assert (root / "top_potsdam_2_13_label.tif").is_file()  # where 5_Labels_all.zip puts it
    assert ds.tiles[0].eroded.path == root / "top_potsdam_2_13_label_noBoundary.tif"
    assert (root / "2_Ortho_RGB" / "top_potsdam_2_13_RGB.tif").is_file()
    assert _no_staging(root)
    reference = _quiet(Potsdam, potsdam_root, split="test", x="ndsm")
    left, _, _, top = reference.tiles[0].rgb.grid.bounds
    query = (slice(left, left + 0.8, 0.05), slice(top - 0.8, top, 0.05), slice(None))
    for key in ("image", "image_x", "mask"):
        assert (ds[query][key] == reference[query][key]).all()
    stamp = (root / "top_potsdam_2_13_label.tif").stat().st_mtime_ns
    _quiet(Potsdam, root, split="test", x="ndsm")  # unpacked once: not again
    assert (root / "top_potsdam_2_13_label.tif").stat().st_mtime_ns == stamp


def test_a_file_managers_nested_extraction_is_found(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    for folder in ("2_Ortho_RGB", "1_DSM_normalisation"):  # "extract to <archive name>/"
        shutil.copytree(potsdam_root / folder, root / folder / folder)
    (root / "5_Labels_all").mkdir(parents=True)
    for label in potsdam_root.glob("top_potsdam_*_label.tif"):
        shutil.copy(label, root / "5_Labels_all" / label.name)
    ds = _quiet(Potsdam, root, split="train", x="ndsm")
    assert ds.tiles[0].rgb.path == root / "2_Ortho_RGB/2_Ortho_RGB/top_potsdam_2_10_RGB.tif"
    assert ds.tiles[1].label.path == root / "5_Labels_all/top_potsdam_2_11_label.tif"


def test_missing_labels_name_the_archives(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    shutil.copytree(potsdam_root / "2_Ortho_RGB", root / "2_Ortho_RGB")
    with pytest.raises(TileError) as err:
        _quiet(Potsdam, root, split="train", x=None)
    msg = str(err.value)
    assert "tile 2_10" in msg and f"{root}/top_potsdam_2_10_label.tif" in msg
    assert "It comes in any of 5_Labels_all.zip, 5_Labels_all_noBoundary.zip, " in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TileError, match=r"no tile .* It comes in 2_Ortho_RGB.zip: put the"):
        _quiet(Potsdam, empty, split="train", x=None)


def test_the_dsm_rar_is_named_with_the_command(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    shutil.copytree(potsdam_root, root, ignore=shutil.ignore_patterns("1_DSM", "*.py"))
    (root / "1_DSM.rar").write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(TileError, match=r"1_DSM.rar, which rsfusion cannot unpack: .*unrar x"):
        _quiet(Potsdam, root, split="train", x="dsm")


def test_md5_is_checked_where_published(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    _potsdam_archives(root, potsdam_root)
    _zip(root / "4_Ortho_RGBIR.zip", potsdam_root, _rel(potsdam_root, "4_Ortho_RGBIR/*"))
    with pytest.raises(TileError, match=r"4_Ortho_RGBIR.zip: md5 differs from .*c4a8f7d8"):
        _quiet(Potsdam, root, split="test", rgb="rgbir", x=None)
    assert not (root / "4_Ortho_RGBIR").exists() and _no_staging(root)
    digest = hashlib.md5((root / "4_Ortho_RGBIR.zip").read_bytes()).hexdigest()
    assert unpack(Archive("4_Ortho_RGBIR.zip", digest, ("rgbir",)), root, TileError)


def test_a_damaged_archive_leaves_nothing_under_final_names(potsdam_root, tmp_path):
    root = tmp_path / "Potsdam"
    _potsdam_archives(root, potsdam_root)
    path = root / "2_Ortho_RGB.zip"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TileError, match=r"2_Ortho_RGB.zip cannot be read as an archive"):
        _quiet(Potsdam, root, split="test", x=None)
    assert not (root / "2_Ortho_RGB").exists() and _no_staging(root)


def test_an_interrupted_unpacking_is_completed_next_time(potsdam_root, tmp_path, monkeypatch):
    root = tmp_path / "Potsdam"
    _potsdam_archives(root, potsdam_root)
    moved = []

    def replace_then_fail(src, dst):
        if moved:
            raise KeyboardInterrupt  # killed after the first member
        moved.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(archives.os, "replace", replace_then_fail)
    with pytest.raises(KeyboardInterrupt):
        unpack(Archive("2_Ortho_RGB.zip", None, ("rgb",)), root, TileError)
    monkeypatch.undo()
    assert len(list((root / "2_Ortho_RGB").iterdir())) == 1 and _no_staging(root)
    ds = _quiet(Potsdam, root, split="test", x=None)
    assert len(list((root / "2_Ortho_RGB").iterdir())) == 4 and len(ds.tiles) == 2


def test_a_tar_member_outside_the_root_is_refused(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (tmp_path / "evil.txt").write_text("x")
    with tarfile.open(root / "a.tar", "w") as tf:
        tf.add(tmp_path / "evil.txt", arcname="../evil2.txt")
    with pytest.raises(TileError, match=r"a.tar holds '../evil2.txt', a path outside"):
        unpack(Archive("a.tar", None, ("rgb",)), root, TileError)
    assert not (tmp_path / "evil2.txt").exists() and _no_staging(root)


def test_vaihingen_loads_from_its_archives(vaihingen_root, tmp_path):
    root = tmp_path / "Vaihingen"
    _zip(
        root / "ISPRS_semantic_labeling_Vaihingen.zip",
        vaihingen_root,
        _rel(vaihingen_root, "top/*") + _rel(vaihingen_root, "dsm/*"),
    )
    gt = [f"top_mosaic_09cm_area{a}.tif" for a in (1, 2, 3, 4, 5)]
    _zip(root / "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip", vaihingen_root, gt)
    with pytest.raises(TileError, match="md5 differs from the published 462b8dca"):
        _quiet(Vaihingen, root, split="train")  # the fakes are not the published archives
    card = load_card("vaihingen")
    text = card.path.read_text()
    for entry in card.files[:2]:  # the published md5s -> those of the fake archives
        fake = hashlib.md5((root / entry["name"]).read_bytes()).hexdigest()
        text = text.replace(entry["md5"], fake)
    (tmp_path / "vaihingen.yaml").write_text(text)
    ds = _quiet(ISPRSDataset, root, card=load_card(tmp_path / "vaihingen.yaml"), split="train")
    assert [t.tile_id for t in ds.tiles] == ["1", "3", "5"]
    assert ds.tiles[0].label.path == root / "top_mosaic_09cm_area1.tif"
    assert ds.tiles[0].rgb.path == root / "top" / "top_mosaic_09cm_area1.tif"


def test_a_natural_release_archive_is_unpacked_and_named(nyudepthv2_root, tmp_path):
    text = load_card("nyudepthv2").path.read_text()
    card_path = tmp_path / "nyu.yaml"
    card_path.write_text(
        text + "files:\n  - {name: NYUDepthv2.zip, md5: null, "
        "holds: [rgb, depth, hha, labels, splits]}\n"
    )
    card = load_card(card_path)
    root = tmp_path / "NYUDepthv2"
    root.mkdir()
    with pytest.raises(SampleFileError, match=r"train.txt .* It comes in NYUDepthv2.zip"):
        NaturalRGBXDataset(root, "train", card=card, x="depth")
    members = [p.relative_to(nyudepthv2_root).as_posix() for p in nyudepthv2_root.rglob("*")
               if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts]  # fmt: skip
    _zip(root / "NYUDepthv2.zip", nyudepthv2_root, members)
    ds = NaturalRGBXDataset(root, "train", card=card, x="depth")
    assert [r.id for r in ds.samples] == ["2", "3", "4"] and ds[0]["image_x"].shape[0] == 3
    assert (root / "Depth" / "2.png").is_file() and _no_staging(root)
    assert "NYUDepthv2.zip" in where_from(card, root, "depth")


def test_malformed_archive_entries_name_the_card(tmp_path):
    text = load_card("vaihingen").path.read_text()
    path = tmp_path / "v.yaml"
    path.write_text(text.replace("md5: null,", "md5: abc,"))
    with pytest.raises(ConfigError, match=r"v.yaml: files\[2\]: md5 'abc'"):
        archives_of(load_card(path))


def test_vaihingen_nested_by_a_file_manager(vaihingen_root, tmp_path):
    root = tmp_path / "Vaihingen"
    inner = root / "ISPRS_semantic_labeling_Vaihingen"  # "extract to <archive name>/"
    for folder in ("top", "dsm"):
        shutil.copytree(vaihingen_root / folder, inner / folder)
    for area in (1, 3, 5):  # the ground truth extracted into the root itself
        shutil.copy(vaihingen_root / f"top_mosaic_09cm_area{area}.tif", root)
    ds = _quiet(Vaihingen, root, split="train")
    assert [t.tile_id for t in ds.tiles] == ["1", "3", "5"]
    assert ds.tiles[0].rgb.path == inner / "top" / "top_mosaic_09cm_area1.tif"
    assert ds.tiles[0].x.path == inner / "dsm" / "dsm_09cm_matching_area1.tif"
    assert ds.tiles[0].label.path == root / "top_mosaic_09cm_area1.tif"
