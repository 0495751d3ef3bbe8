"""The demo scene generator and the committed fake datasets it also writes."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsfusion.catalog import load_card
from rsfusion.cli.make_demo import main as make_demo_main
from rsfusion.data.demo import BUILDING, IMPERVIOUS, LOW_VEG, TREE, make_demo_scene, synth_scene

DATA = Path(__file__).parent


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform


def test_files_at_card_patterns_share_one_grid(tmp_path):
    make_demo_scene(tmp_path, areas=[1, 2], size=48)
    card = load_card("vaihingen")
    for area in ("1", "2"):
        paths = [
            tmp_path / card.format_pattern(card.modality(m).patterns[0], area)
            for m in ("rgb", "dsm")
        ]
        paths += [
            tmp_path / card.format_pattern(card.label_patterns[k][0], area)
            for k in ("full", "eroded")
        ]
        grids = [_read(p)[1:] for p in paths]
        assert all(g == grids[0] for g in grids) and grids[0][0] == "EPSG:32632"
        colours = {tuple(c) for c in _read(paths[2])[0].reshape(3, -1).T}
        assert colours <= set(card.palette)
        eroded = {tuple(c) for c in _read(paths[3])[0].reshape(3, -1).T}
        assert (0, 0, 0) in eroded and eroded <= set(card.palette) | {(0, 0, 0)}
    assert not list(tmp_path.rglob("*.part"))


def test_elevation_is_needed_to_tell_roofs_from_roads():
    scene = synth_scene(np.random.default_rng(3), (320, 320))
    img, cls, height = scene.image.astype(float), scene.classes, scene.ndsm
    for a, b in ((BUILDING, IMPERVIOUS), (TREE, LOW_VEG)):
        colour_gap = np.abs(img[:, cls == a].mean(1) - img[:, cls == b].mean(1)).max()
        spread = img[:, cls == b].std(1).mean()
        assert colour_gap < 2 * spread  # colour distributions overlap (d-prime < 2)
        assert np.median(height[cls == a]) - np.median(height[cls == b]) > 3.0  # heights do not


def test_seeded_and_ungeoreferenced(tmp_path):
    make_demo_scene(tmp_path / "a", areas=[1], size=32, seed=1)
    make_demo_scene(tmp_path / "b", areas=[1], size=32, seed=1)
    make_demo_scene(tmp_path / "c", areas=[1], size=32, seed=2)
    make_demo_scene(tmp_path / "d", areas=[1], size=32, seed=1, georeferenced=False)
    rel = "dsm/dsm_09cm_matching_area1.tif"
    a, b, c, d = (_read(tmp_path / x / rel) for x in "abcd")
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
    assert np.array_equal(a[0], d[0]) and d[1] is None and d[2] == rasterio.Affine.identity()


def test_cli_writes_the_scene(tmp_path, capsys):
    assert make_demo_main(["--out", str(tmp_path / "demo"), "--size", "24", "--areas", "1"]) == 0
    assert (tmp_path / "demo" / "top" / "top_mosaic_09cm_area1.tif").is_file()
    assert "4 rasters" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["vaihingen", "potsdam"])
def test_committed_fixture_matches_its_generator(name, tmp_path):
    spec = importlib.util.spec_from_file_location(f"gen_{name}", DATA / name / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(DATA / name)
        for p in (DATA / name).rglob("*")
        if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts
    )
    assert fresh == committed
    for rel in fresh:
        if rel.suffix in (".tif", ".jpg"):
            new, old = _read(tmp_path / rel), _read(DATA / name / rel)
            assert np.array_equal(new[0], old[0]) and new[1:] == old[1:], rel
        else:
            assert (tmp_path / rel).read_text() == (DATA / name / rel).read_text()
