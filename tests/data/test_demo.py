"""The demo scene generator and the committed fake datasets it also writes."""

import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from rsfusion.catalog import load_card
from rsfusion.cli.make_demo import main as make_demo_main
from rsfusion.data.demo import (
    BUILDING,
    DEMO_AREAS,
    DEMO_TEST_AREAS,
    DEMO_TRAIN_AREAS,
    DEMO_VAL_AREAS,
    IMPERVIOUS,
    LOW_VEG,
    TREE,
    make_demo_scene,
    synth_scene,
)
from rsfusion.data.writers import encode_labels, write_geotiff

DATA = Path(__file__).parent
CARD = load_card("vaihingen")


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(), src.crs, src.transform


def _paths(root, area):
    """Orthophoto, DSM, full and eroded labels of one Vaihingen area, at the card's patterns."""
    pats = [CARD.modality(m).patterns[0] for m in ("rgb", "dsm")]
    pats += [CARD.label_patterns[k][0] for k in ("full", "eroded")]
    return [root / CARD.format_pattern(p, str(area)) for p in pats]


def _decode(labels):
    """(3, H, W) colours -> class ids; 255 for black, -1 for a colour outside the palette."""
    ids = np.full(labels.shape[1:], -1)
    for i, colour in enumerate([*CARD.palette, (0, 0, 0)]):
        ids[(labels == np.array(colour)[:, None, None]).all(0)] = i if i < 6 else 255
    return ids


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default scene (7 areas, 320 px), read back: {area: (ortho, dsm, classes, eroded)}."""
    start = time.perf_counter()
    root = make_demo_scene(tmp_path_factory.mktemp("demo"))
    elapsed = time.perf_counter() - start
    tiles = {}
    for area in DEMO_AREAS:
        ortho, dsm, full, eroded = (_read(p)[0] for p in _paths(root, area))
        tiles[area] = (ortho.astype(float), dsm[0], _decode(full), _decode(eroded))
    return root, elapsed, tiles


def test_default_scene_is_exactly_the_release_layout(demo):
    root, elapsed, _ = demo
    expected = {p.relative_to(root) for a in DEMO_AREAS for p in _paths(root, a)}
    written = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    assert written == expected  # nothing missing, no temporary or sidecar files left
    assert elapsed < 5.0
    bounds = []
    for area in DEMO_AREAS:
        with rasterio.open(_paths(root, area)[0]) as src:
            bounds.append(src.bounds)
    for i, a in enumerate(bounds):  # every area at its own place
        for b in bounds[i + 1 :]:
            assert a.right <= b.left or b.right <= a.left or a.top <= b.bottom or b.top <= a.bottom


def test_labels_palette_and_eroded_boundaries(demo):
    _, _, tiles = demo
    for _, _, cls, eroded in tiles.values():
        assert cls.min() >= 0 and cls.max() <= 5  # only palette colours, no black
        assert set(np.unique(eroded)) <= {0, 1, 2, 3, 4, 5, 255}
        kept = eroded != 255
        assert np.array_equal(eroded[kept], cls[kept])
        edge = np.zeros(cls.shape, bool)  # both sides of every 4-neighbour class change
        edge[:, 1:] |= cls[:, 1:] != cls[:, :-1]
        edge[:, :-1] |= cls[:, 1:] != cls[:, :-1]
        edge[1:] |= cls[1:] != cls[:-1]
        edge[:-1] |= cls[1:] != cls[:-1]
        assert (eroded[edge] == 255).all() and 0.02 < (~kept).mean() < 0.5
    assert set(np.concatenate([t[2].ravel() for t in tiles.values()])) == set(range(6))


def test_files_need_elevation_and_per_raster_normalisation(demo):
    _, _, tiles = demo
    colour, height, levels = {c: [] for c in range(6)}, {c: [] for c in range(6)}, []
    for ortho, dsm, cls, _ in tiles.values():
        assert dsm.min() > 255 and dsm.max() < 320  # absolute elevations in metres
        ys, xs = np.nonzero(np.isin(cls, (IMPERVIOUS, LOW_VEG)))  # local ground: a fitted plane
        coef = np.linalg.lstsq(np.c_[np.ones(len(ys)), ys, xs], dsm[ys, xs], rcond=None)[0]
        yy, xx = np.mgrid[: dsm.shape[0], : dsm.shape[1]]
        above = dsm - (coef[0] + coef[1] * yy + coef[2] * xx)
        levels.append(coef[0])
        for c in range(6):
            colour[c].append(ortho[:, cls == c])
            height[c].append(above[cls == c])
    mean = {c: np.concatenate(v, 1).mean(1) for c, v in colour.items()}
    med = {c: np.median(np.concatenate(v)) for c, v in height.items()}
    for a, b in ((BUILDING, IMPERVIOUS), (TREE, LOW_VEG)):
        assert np.linalg.norm(mean[a] - mean[b]) < 10  # colours overlap ...
        assert med[a] - med[b] > 3.0  # ... heights above local ground do not
    assert np.linalg.norm(mean[LOW_VEG] - mean[IMPERVIOUS]) > 40  # the colour test can fail
    assert max(levels) - min(levels) > 5  # ground levels differ per area


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


def test_cli_default_writes_training_validation_and_test_areas(tmp_path, capsys):
    assert make_demo_main(["--out", str(tmp_path / "demo"), "--size", "24"]) == 0
    areas = DEMO_TRAIN_AREAS + DEMO_VAL_AREAS + DEMO_TEST_AREAS
    assert DEMO_VAL_AREAS and not set(DEMO_VAL_AREAS) & set(DEMO_TRAIN_AREAS + DEMO_TEST_AREAS)
    for area in areas:
        assert all(p.is_file() for p in _paths(tmp_path / "demo", area)), area
    assert f"{4 * len(areas)} rasters" in capsys.readouterr().out


def test_an_area_does_not_depend_on_the_others_written(tmp_path):
    make_demo_scene(tmp_path / "alone", areas=[DEMO_TEST_AREAS[0]], size=32)
    make_demo_scene(tmp_path / "all", size=32)
    for a, b in zip(
        _paths(tmp_path / "alone", DEMO_TEST_AREAS[0]),
        _paths(tmp_path / "all", DEMO_TEST_AREAS[0]),
        strict=True,
    ):
        assert np.array_equal(_read(a)[0], _read(b)[0]) and _read(a)[1:] == _read(b)[1:]


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


def test_write_geotiff_tiles_compresses_and_never_leaves_half_files(tmp_path):
    path = tmp_path / "x.tif"
    big = np.arange(3 * 320 * 300, dtype=np.uint32).reshape(3, 300, 320).astype(np.uint8)
    write_geotiff(path, big, "EPSG:32632", rasterio.Affine(0.09, 0, 496000, 0, -0.09, 5420000))
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (256, 256) and src.profile["compress"] == "deflate"
        assert src.crs == "EPSG:32632" and np.array_equal(src.read(), big)
    with pytest.raises(ValueError, match="inconsistent"):
        write_geotiff(path, big[:2], None, None, count=3)  # fails while writing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]
    assert np.array_equal(_read(path)[0], big)  # the previous file is intact
    write_geotiff(tmp_path / "small.tif", big[0, :8, :8], None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "small.tif") as src:
            assert not src.profile.get("tiled")


def test_encode_labels_black_outside_the_palette():
    out = encode_labels(np.array([[0, 5], [255, 1]], np.uint8), CARD.palette)
    assert out.shape == (3, 2, 2) and out.dtype == np.uint8
    assert [tuple(out[:, i, j]) for i in (0, 1) for j in (0, 1)] == [
        (255, 255, 255),
        (255, 0, 0),
        (0, 0, 0),
        (0, 0, 255),
    ]


def test_committed_fixtures_carry_what_they_claim(vaihingen_root, potsdam_root):
    ortho, dsm, full, _ = (_read(p) for p in _paths(vaihingen_root, 5))
    assert all(r[1] is None and r[2] == rasterio.Affine.identity() for r in (ortho, dsm, full))
    ortho3, dsm3 = (_read(p) for p in _paths(vaihingen_root, 3)[:2])
    assert ortho3[1] is None and dsm3[1] is None  # no CRS ...
    assert ortho3[2] == dsm3[2] and ortho3[2].a == pytest.approx(0.09)  # ... grid from the .tfw
    assert (vaihingen_root / "top" / "top_mosaic_09cm_area3.tfw").is_file()
    grid = _read(_paths(vaihingen_root, 1)[0])[1:]
    assert all(_read(p)[1:] == grid for p in _paths(vaihingen_root, 1))
    card = load_card("potsdam")
    files = [card.format_pattern(m.patterns[0], "2_13") for m in card.modalities.values()]
    files += [card.format_pattern(p[0], "2_13") for p in card.label_patterns.values()]
    rasters = {f: _read(potsdam_root / f) for f in files}
    tif_grids = {(r[0].shape[1:], r[1], r[2]) for f, r in rasters.items() if f.endswith(".tif")}
    assert len(tif_grids) == 1 and next(iter(tif_grids))[1] == "EPSG:32633"
    ndsm = rasters[card.format_pattern(card.modality("ndsm").patterns[0], "2_13")]
    assert ndsm[0].dtype == np.uint8 and ndsm[0].shape[0] == 1 and ndsm[1] is None
    for root in (vaihingen_root, potsdam_root):
        assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 300_000


def test_a_scene_without_the_validation_area_says_how_to_remake_it(tmp_path):
    """A demo_data made before the validation area existed: the error says to remake it."""
    from rsfusion.data.isprs import ISPRSDataset
    from rsfusion.errors import TileError

    make_demo_scene(tmp_path / "old", areas=[*DEMO_TRAIN_AREAS, *DEMO_TEST_AREAS], size=16)
    with pytest.raises(TileError, match=r"run make_demo.py --out .*old again"):
        ISPRSDataset(tmp_path / "old", tiles=[str(a) for a in DEMO_VAL_AREAS])
    with pytest.raises(TileError, match="ISPRS_semantic_labeling_Vaihingen.zip"):  # as before
        ISPRSDataset(tmp_path / "old", tiles=["11"])
