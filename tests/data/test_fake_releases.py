"""The committed fake releases of the natural RGB-X benchmarks stay what their data.py documents.

Each ``tests/data/<name>/data.py`` regenerates its tree bit-for-bit (same files, same decoded
content); every file matches one documented pattern with the documented dtype and channels;
and the cross-file conventions loaders rely on (pairing, split lists, label ranges) hold.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(__file__).parent
# pattern (relative, "/"-separated, fnmatch per part) -> (format, dtype, channels or npy ndim)
SPECS: dict[str, dict[str, tuple[str, str, int]]] = {
    "mfnet": {
        "images/*.png": ("png", "uint8", 4),
        "labels/*.png": ("png", "uint8", 1),
        "*.txt": ("txt", "", 0),
    },
    "fmb": {
        "*/Visible/*.png": ("png", "uint8", 3),
        "*/Infrared/*.png": ("png", "uint8", 1),
        "*/Label/*.png": ("png", "uint8", 1),
        "*/color/*.png": ("png", "uint8", 3),
    },
    "pst900": {
        "*/rgb/*.png": ("png", "uint8", 3),
        "*/thermal/*.png": ("png", "uint8", 1),
        "*/thermal_raw/*.png": ("png", "uint16", 1),
        "*/depth/*.png": ("png", "uint16", 1),
        "*/labels/*.png": ("png", "uint8", 1),
    },
    "deliver": {
        "img/*/*/*/*_rgb_front.png": ("png", "uint8", 3),
        "depth/*/*/*/*_depth_front.png": ("png", "uint8", 1),
        "hha/*/*/*/*_depth_front.png": ("png", "uint8", 3),
        "lidar/*/*/*/*_lidar_front.png": ("png", "uint8", 3),
        "event/*/*/*/*_event_front.png": ("png", "uint8", 3),
        "semantic/*/*/*/*_semantic_front.png": ("png", "uint8", 3),
    },
    "mcubes": {
        "polL_color/*.png": ("png", "uint8", 3),
        "polL_aolp_sin/*.npy": ("npy", "float32", 2),
        "polL_aolp_cos/*.npy": ("npy", "float32", 2),
        "polL_dolp/*.npy": ("npy", "float32", 2),
        "NIR_warped/*.png": ("png", "uint8", 1),
        "NIR_warped_mask/*.png": ("png", "uint8", 1),
        "GT/*.png": ("png", "uint8", 1),
        "SS/*.png": ("png", "uint8", 1),
        "SSGT4MS/*.png": ("png", "uint8", 1),
        "list_folder/*.txt": ("txt", "", 0),
    },
    "zju_rgbp": {
        "*/0/*_image0_0.png": ("png", "uint8", 3),
        "*/aolp2/*_aolp.png": ("png", "uint8", 3),
        "*/label/*_image0.png": ("png", "uint8", 1),  # palette ("P") PNGs
    },
    "urbanlf": {
        "UrbanLF_*/*/Image*/[1-9]_[1-9].png": ("png", "uint8", 3),
        "UrbanLF_Real/*/Image*/label.npy": ("npy", "uint8", 2),
        "UrbanLF_Real/*/Image*/label.png": ("png", "uint8", 3),
        "UrbanLF_Syn/*/Image*/5_5_label.npy": ("npy", "uint8", 2),
        "UrbanLF_Syn/*/Image*/5_5_label.png": ("png", "uint8", 3),
        "UrbanLF_Syn/*/Image*/5_5_disparity.npy": ("npy", "float32", 2),
    },
    "ddd17": {
        "images/*/*.png": ("png", "uint8", 1),
        "labels/*/*.png": ("png", "uint8", 1),
        "events/*/*.npy": ("npy", "float32", 3),
    },
}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"fake_{name}", DATA / name / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> list[str]:
    """Relative paths of the release files under ``root`` (not the generator itself)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != "data.py" and "__pycache__" not in p.parts
    )


def _matches(rel: str, pattern: str) -> bool:
    parts, pats = rel.split("/"), pattern.split("/")
    return len(parts) == len(pats) and all(map(fnmatchcase, parts, pats))


def _read(path: Path):
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".txt":
        return path.read_text().split()
    with Image.open(path) as im:
        return np.asarray(im)


def _names(folder: Path, suffix: str = "") -> set[str]:
    return {p.name.removesuffix(suffix) for p in folder.iterdir()}


def _check_mfnet(root: Path) -> None:
    lists = {p.stem: p.read_text().split() for p in root.glob("*.txt")}
    assert set(lists) == {"train", "val", "test", "test_day", "test_night"}
    main = [set(lists[s]) for s in ("train", "val", "test")]
    assert not (main[0] & main[1] or main[0] & main[2] or main[1] & main[2])
    assert set(lists["test_day"]) | set(lists["test_night"]) == main[2]
    assert all(n.endswith("D") for n in lists["test_day"])
    assert all(n.endswith("N") for n in lists["test_night"])
    for name in set().union(*main):
        assert re.fullmatch(r"\d{5}[DN]", name)
        rgbt, label = _read(root / f"images/{name}.png"), _read(root / f"labels/{name}.png")
        assert rgbt.shape[:2] == label.shape and label.max() <= 8


def _check_fmb(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test", "train"]
    for split in ("train", "test"):
        folders = ("Visible", "Infrared", "Label", "color")
        names = [_names(root / split / f) for f in folders]
        assert all(n == names[0] for n in names)
        for name in names[0]:
            label, colour = (
                _read(root / split / "Label" / name),
                _read(root / split / "color" / name),
            )
            assert label.max() <= 14
            # the colour rendering is a function of the id, black exactly where unlabelled
            codes = colour.astype(np.int64) @ np.array([65536, 256, 1])
            for k in np.unique(label):
                assert len(np.unique(codes[label == k])) == 1
            assert ((codes == 0) == (label == 0)).all()


def _check_pst900(root: Path) -> None:
    for split in ("train", "test"):
        folders = ("rgb", "thermal", "thermal_raw", "depth", "labels")
        names = [_names(root / split / f) for f in folders]
        assert all(n == names[0] for n in names)
        for name in names[0]:
            assert re.fullmatch(r"\d+_bag\w+_rect_rgb_frame\d{10}\.png", name)
            assert _read(root / split / "labels" / name).max() <= 4


def _check_deliver(root: Path) -> None:
    scene_re = (
        r"MAP_\d+_point\d+(_(motionblur|overexposure|underexposure|lidarjitter|eventlowres))?"
    )
    rgbs = sorted((root / "img").rglob("*_rgb_front.png"))
    for rgb in rgbs:
        cond, split, scene = rgb.relative_to(root / "img").parts[:3]
        assert cond in {"cloud", "fog", "night", "rain", "sun"} and split in {
            "train",
            "val",
            "test",
        }
        assert re.fullmatch(scene_re, scene) and re.fullmatch(r"\d{6}_rgb_front\.png", rgb.name)
        path = rgb.as_posix()
        # CMNeXt derives every other modality by string replacement of the RGB path
        others = {
            m: Path(path.replace("/img/", f"/{m}/").replace("_rgb", f"_{s}"))
            for m, s in (("hha", "depth"), ("depth", "depth"), ("lidar", "lidar"))
            + (("event", "event"), ("semantic", "semantic"))
        }
        size = _read(rgb).shape[:2]
        sem = _read(others["semantic"])
        assert sem.shape[:2] == size and sem[..., 0].max() <= 25
        event = _read(others["event"])
        if scene.endswith("_eventlowres"):
            assert event.shape[0] < size[0] and event.shape[1] < size[1]
        else:
            assert event.shape[:2] == size
    assert len(rgbs) == len(list((root / "semantic").rglob("*.png")))


def _check_mcubes(root: Path) -> None:
    lists = {p.stem: p.read_text().split() for p in (root / "list_folder").glob("*.txt")}
    assert set(lists) == {"all", "train", "val", "test"}
    parts = [lists[s] for s in ("train", "val", "test")]
    assert sorted(sum(parts, [])) == sorted(lists["all"]) == sorted(set(lists["all"]))
    for name in lists["all"]:
        assert re.fullmatch(r"outscene\d+_\d+_\d{10}", name)
        gt = _read(root / "GT" / f"{name}.png")
        assert set(np.unique(gt).tolist()) <= set(range(20)) | {255}
        s, c = (np.load(root / f"polL_aolp_{k}/{name}.npy") for k in ("sin", "cos"))
        dolp = np.load(root / f"polL_dolp/{name}.npy")
        assert np.allclose(s**2 + c**2, 1, atol=1e-5) and dolp.min() >= 0 and dolp.max() <= 1
        for folder in ("polL_color", "NIR_warped", "NIR_warped_mask", "SS", "SSGT4MS"):
            assert _read(root / folder / f"{name}.png").shape[:2] == gt.shape


# Road-Former's colours (RGB) of file ids 0..8: the PASCAL VOC colour map
ZJU_COLOURS = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128)]
ZJU_COLOURS += [(0, 128, 128), (128, 128, 128), (64, 0, 0)]


def _check_zju_rgbp(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["train", "val"]
    for split in ("train", "val"):
        stems = _names(root / split / "0", "_image0_0.png")
        assert stems == _names(root / split / "aolp2", "_aolp.png")
        assert stems == _names(root / split / "label", "_image0.png")
        for stem in stems:
            with Image.open(root / split / "label" / f"{stem}_image0.png") as im:
                assert im.mode == "P"
                ids, rgb = np.asarray(im), np.asarray(im.convert("RGB"))
            assert ids.max() <= 8
            assert np.array_equal(rgb, np.array(ZJU_COLOURS, np.uint8)[ids])


URBANLF_COLOURS = [(168, 198, 168), (198, 0, 0), (202, 154, 198), (0, 0, 0), (100, 198, 198)]
URBANLF_COLOURS += [(198, 100, 0), (52, 42, 198), (154, 52, 192), (198, 0, 168), (0, 198, 0)]
URBANLF_COLOURS += [(198, 186, 90), (108, 107, 161), (156, 200, 26), (158, 179, 202)]


def _check_urbanlf(root: Path) -> None:
    for folder in sorted(root.glob("UrbanLF_*/*/Image*")):
        split = folder.parent.name
        views = sorted(p.stem for p in folder.glob("[1-9]_[1-9].png"))
        assert views == [f"{u}_{v}" for u in range(1, 10) for v in range(1, 10)]
        labels = sorted(folder.glob("*label*"))
        if split == "test":
            assert not labels
            continue
        stem = "label" if folder.parts[-3] == "UrbanLF_Real" else "5_5_label"
        ids = np.load(folder / f"{stem}.npy")
        colour = _read(folder / f"{stem}.png")
        assert (
            ids.shape == _read(folder / "5_5.png").shape[:2] and 1 <= ids.min() <= ids.max() <= 14
        )
        assert (colour == np.array(URBANLF_COLOURS, np.uint8)[ids - 1]).all()


def _check_ddd17(root: Path) -> None:
    for split in ("train", "test"):
        stems = _names(root / "images" / split, ".png")
        assert stems == _names(root / "labels" / split, ".png")
        assert stems == _names(root / "events" / split, ".npy")
        assert all(re.fullmatch(r"rec\d{10}_export_\d+", s) for s in stems)
        assert all(s.startswith("rec1487417411") == (split == "test") for s in stems)
        for stem in stems:
            label = _read(root / "labels" / split / f"{stem}.png")
            events = np.load(root / "events" / split / f"{stem}.npy")
            assert set(np.unique(label).tolist()) <= set(range(6)) | {255}
            assert events.shape == (*label.shape, 6) and events.min() >= 0


CHECKS: dict[str, Callable[[Path], None]] = {
    "mfnet": _check_mfnet,
    "fmb": _check_fmb,
    "pst900": _check_pst900,
    "deliver": _check_deliver,
    "mcubes": _check_mcubes,
    "zju_rgbp": _check_zju_rgbp,
    "urbanlf": _check_urbanlf,
    "ddd17": _check_ddd17,
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_generator_reproduces_the_committed_tree(name, tmp_path):
    committed = DATA / name
    _module(name).generate(tmp_path)
    files = _tree(committed)
    assert files and _tree(tmp_path) == files
    for rel in files:
        old, new = _read(committed / rel), _read(tmp_path / rel)
        if isinstance(old, list):
            assert old == new, rel
        else:
            assert old.dtype == new.dtype and np.array_equal(old, new), rel


@pytest.mark.parametrize("name", sorted(SPECS))
def test_files_decode_as_documented(name):
    root, spec = DATA / name, SPECS[name]
    files = _tree(root)
    assert sum((root / f).stat().st_size for f in files) < 150_000
    used = set()
    for rel in files:
        hits = [p for p in spec if _matches(rel, p)]
        assert len(hits) == 1, f"{name}/{rel} matches {hits}, expected one documented pattern"
        used.add(hits[0])
        fmt, dtype, channels = spec[hits[0]]
        arr = _read(root / rel)
        if fmt == "txt":
            assert arr and all(re.fullmatch(r"\w+", n) for n in arr), rel
            continue
        assert arr.dtype == np.dtype(dtype), f"{rel}: {arr.dtype}"
        if fmt == "npy":
            assert arr.ndim == channels, f"{rel}: shape {arr.shape}"
        else:
            assert (arr.shape[2] if arr.ndim == 3 else 1) == channels, f"{rel}: {arr.shape}"
    assert used == set(spec), f"{name}: no file for {set(spec) - used}"
    CHECKS[name](root)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_generator_documents_layout_counts_and_source(name):
    doc = _module(name).__doc__
    assert "Source:" in doc and "Real counts:" in doc and "Fixture:" in doc
