"""scripts/predict.py end to end on the fake Vaihingen tiles: georeferenced, blended, refused."""

import shutil

import numpy as np
import pytest
import rasterio
import torch

from rsfusion.cli.predict import main as predict_main
from rsfusion.data.normalise import XNorm
from rsfusion.inference.predict import PredictOptions, load_predictor, predict_pair


@pytest.fixture(scope="module")
def ckpt(demo_ckpt):
    """The session's tiny demo_baseline checkpoint (tests/conftest.py)."""
    return demo_ckpt


def _outputs(folder):
    """A folder's files without the style sidecars (.qml, .aux.xml) beside each raster."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".qml", ".aux.xml")))


def _pair(root):
    return root / "top" / "top_mosaic_09cm_area2.tif", root / "dsm" / "dsm_09cm_matching_area2.tif"


def test_outputs_land_on_the_input_grid_with_colours_and_names(ckpt, vaihingen_root, tmp_path):
    rgb, x = _pair(vaihingen_root)
    args = [
        "--ckpt",
        str(ckpt),
        "--rgb",
        str(rgb),
        "--x",
        str(x),
        "--out",
        str(tmp_path),
        "--probs",
        "--confidence",
        "--vector",
        "--cog",
        "--window",
        "32",
        "--overlap",
        "8",
    ]
    assert predict_main(args) == 0
    with rasterio.open(rgb) as a, rasterio.open(tmp_path / f"{rgb.stem}_classes.tif") as b:
        assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
        classes = b.read(1)
        assert b.colormap(1)[1][:3] == (0, 0, 255) and "building" in b.tags()["CLASS_NAMES"]
        assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert classes.max() < 6
    for name in ("probs", "confidence"):  # every output on the input's grid
        with rasterio.open(rgb) as a, rasterio.open(tmp_path / f"{rgb.stem}_{name}.tif") as b:
            assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
    with rasterio.open(tmp_path / f"{rgb.stem}_probs.tif") as p:
        probs = p.read().astype(int)
    assert probs.shape[0] == 6 and np.all(np.abs(probs.sum(0) - 255) <= 6)
    assert np.array_equal(probs.argmax(0)[probs.max(0) > 140], classes[probs.max(0) > 140])
    assert (tmp_path / f"{rgb.stem}.gpkg").is_file()
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    _check_styles(tmp_path, rgb.stem)


def _check_styles(folder, stem):
    """Every output opens styled in QGIS: .qml beside each raster, GDAL category names, and
    the GeoPackage's default style (tests/inference/test_styles.py opens them in real QGIS)."""
    import sqlite3
    import xml.etree.ElementTree as ET

    from rsfusion.catalog import load_card

    card = load_card("vaihingen")
    qml = ET.fromstring((folder / f"{stem}_classes.qml").read_text().split("\n", 1)[1])
    entries = qml.findall("pipe/rasterrenderer/colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == card.class_names
    assert entries[1].get("color") == "#{:02x}{:02x}{:02x}".format(*card.palette[1])
    aux = ET.fromstring((folder / f"{stem}_classes.tif.aux.xml").read_text())
    assert [c.text for c in aux.iter("Category")] == card.class_names
    for name in ("probs", "confidence"):
        ramp = ET.fromstring((folder / f"{stem}_{name}.qml").read_text().split("\n", 1)[1])
        assert ramp.find("pipe/rasterrenderer").get("type") == "singlebandpseudocolor"
    with sqlite3.connect(folder / f"{stem}.gpkg") as db:
        (style,) = db.execute("SELECT styleQML FROM layer_styles WHERE useAsDefault").fetchone()
    assert 'type="categorizedSymbol"' in style and "building" in style


def test_one_window_equals_a_direct_forward(ckpt, vaihingen_root, tmp_path):
    model, meta = load_predictor(ckpt)
    rgb, x = _pair(vaihingen_root)
    written = predict_pair(
        model, meta, rgb, x, tmp_path, PredictOptions(window=64, overlap=0, precision="fp32")
    )
    with rasterio.open(rgb) as a, rasterio.open(x) as b:
        img, dsm = a.read().astype(np.float32), b.read().astype(np.float32)
    mean = np.asarray(meta.rgb_norm["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(meta.rgb_norm["std"], np.float32).reshape(-1, 1, 1)
    off, scale = XNorm(**meta.x_norm).affine(str(x))
    pad = ((0, 0), (0, 64 - img.shape[1]), (0, 64 - img.shape[2]))
    # as in training: RGB padded with pixel value 0, X with 0 after normalisation
    rgb_t = torch.from_numpy((np.pad(img, pad) - mean) / std)[None]
    x_t = torch.from_numpy(np.pad((dsm - off) / scale, pad))[None]
    with torch.no_grad():
        expected = model(rgb_t, x_t)[0].argmax(0).numpy()[: img.shape[1], : img.shape[2]]
    with rasterio.open(written["classes"]) as out:
        assert np.array_equal(out.read(1), expected)


def test_misaligned_x_is_refused_or_aligned(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, x = _pair(vaihingen_root)
    shifted = tmp_path / "dsm.tif"
    shutil.copy(x, shifted)
    with rasterio.open(shifted, "r+") as dst:
        dst.transform = dst.transform * rasterio.Affine.translation(2, 0)
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(shifted), "--out",
            str(tmp_path / "o")]  # fmt: skip
    assert predict_main(args) == 2
    assert "--align" in capsys.readouterr().err
    assert predict_main([*args, "--align"]) == 0


def test_wrong_band_count_is_refused(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, _ = _pair(vaihingen_root)
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(rgb), "--out", str(tmp_path)]
    assert predict_main(args) == 2
    assert "has 3 bands, the checkpoint expects ['elevation']" in capsys.readouterr().err


def test_nodata_and_geopackage_in_the_input_crs(ckpt, vaihingen_root, tmp_path):
    import geopandas as gpd

    rgb, x = _pair(vaihingen_root)
    src_rgb = tmp_path / "ortho.tif"
    with rasterio.open(rgb) as a:
        profile, data = a.profile, a.read()
    data[:, :5, :7] = 0
    profile["nodata"] = 0
    with rasterio.open(src_rgb, "w", **profile) as dst:
        dst.write(data)
    args = ["--ckpt", str(ckpt), "--rgb", str(src_rgb), "--x", str(x), "--out", str(tmp_path),
            "--vector"]  # fmt: skip
    assert predict_main(args) == 0
    with rasterio.open(tmp_path / "ortho_classes.tif") as out:
        assert out.nodata == 255
        classes = out.read(1)
        crs = out.crs
    assert (classes[:5, :7] == 255).all() and (classes[5:, 7:] < 6).all()
    polygons = gpd.read_file(tmp_path / "ortho.gpkg")
    assert polygons.crs == crs and set(polygons.columns) >= {"class_id", "class_name", "area"}
    assert set(polygons.class_id) <= set(range(6)) and (polygons.area > 0).all()


def test_world_file_and_non_epsg_crs_inputs(ckpt, vaihingen_root, tmp_path):
    # area 3 carries only world files (no CRS): the output keeps the world file's transform
    rgb = vaihingen_root / "top" / "top_mosaic_09cm_area3.tif"
    x = vaihingen_root / "dsm" / "dsm_09cm_matching_area3.tif"
    assert predict_main(["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--out",
                         str(tmp_path / "wf")]) == 0  # fmt: skip
    with rasterio.open(rgb) as a, rasterio.open(tmp_path / "wf" / f"{rgb.stem}_classes.tif") as b:
        assert b.transform == a.transform and a.crs is None
    # a custom projection with no EPSG code
    wkt = ('PROJCS["local lcc",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
           '298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
           'PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["standard_parallel_1",48.1],'
           'PARAMETER["standard_parallel_2",49.3],PARAMETER["latitude_of_origin",48.7],'
           'PARAMETER["central_meridian",9.1],PARAMETER["false_easting",1000],'
           'PARAMETER["false_northing",2000],UNIT["metre",1]]')  # fmt: skip
    rgb2, x2 = _pair(vaihingen_root)
    pair = []
    for path in (rgb2, x2):
        dst_path = tmp_path / path.name
        shutil.copy(path, dst_path)
        with rasterio.open(dst_path, "r+") as dst:
            dst.crs = rasterio.crs.CRS.from_wkt(wkt)
        pair.append(dst_path)
    assert rasterio.crs.CRS.from_wkt(wkt).to_epsg() is None
    assert predict_main(["--ckpt", str(ckpt), "--rgb", str(pair[0]), "--x", str(pair[1]),
                         "--out", str(tmp_path / "lcc")]) == 0  # fmt: skip
    with rasterio.open(tmp_path / "lcc" / f"{rgb2.stem}_classes.tif") as b:
        assert b.crs == rasterio.crs.CRS.from_wkt(wkt)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_interrupted_run_leaves_nothing_under_a_final_name(ckpt, tmp_path, signum):
    import signal
    import subprocess
    import sys
    import time

    from rsfusion.data.demo import make_demo_scene

    root = make_demo_scene(tmp_path / "scene", areas=[2], size=384)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rsfusion.cli.predict", "--ckpt", str(ckpt), "--rgb",
           str(root / "top" / "top_mosaic_09cm_area2.tif"), "--x",
           str(root / "dsm" / "dsm_09cm_matching_area2.tif"), "--out", str(out),
           "--window", "32", "--overlap", "8", "--batch-size", "1", "--probs"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".*partial")):
        time.sleep(0.1)
    assert proc.poll() is None, "prediction finished before it could be interrupted"
    proc.send_signal(getattr(signal, signum))
    assert proc.wait(timeout=120) == 130
    assert "rerun to complete" in proc.stderr.read()
    assert not list(out.glob("*.tif")) and not list(out.glob(".*"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _outputs(out) == [
        "top_mosaic_09cm_area2_classes.tif",
        "top_mosaic_09cm_area2_probs.tif",
    ]


def _folders(root, tmp_path, areas=(2, 4)):
    rgb, x = tmp_path / "top", tmp_path / "dsm"
    rgb.mkdir()
    x.mkdir()
    for a in areas:
        shutil.copy(root / "top" / f"top_mosaic_09cm_area{a}.tif", rgb)
        shutil.copy(root / "dsm" / f"dsm_09cm_matching_area{a}.tif", x)
    return rgb, x


def test_folder_run_resumes_and_shards(ckpt, vaihingen_root, tmp_path, capsys, monkeypatch):
    rgb, x = _folders(vaihingen_root, tmp_path)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--out", str(out),
            "--window", "32", "--readers", "2"]  # fmt: skip
    assert predict_main(args) == 0
    assert capsys.readouterr().err.count("MPix/s") == 2  # one speed line per raster
    done = _outputs(out)
    assert done == ["top_mosaic_09cm_area2_classes.tif", "top_mosaic_09cm_area4_classes.tif"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert predict_main(args) == 0  # a rerun skips what is complete
    assert capsys.readouterr().err.count("outputs complete, skipped") == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    shard_out = tmp_path / "rank1"
    assert predict_main([*args[:-6], "--out", str(shard_out), "--window", "32"]) == 0
    assert _outputs(shard_out) == ["top_mosaic_09cm_area4_classes.tif"]


def test_pairs_csv_and_folder_errors(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, x = _folders(vaihingen_root, tmp_path, areas=(2,))
    csv = tmp_path / "pairs.csv"
    csv.write_text("rgb,x\ntop/top_mosaic_09cm_area2.tif,dsm/dsm_09cm_matching_area2.tif\n")
    out = tmp_path / "out"
    assert predict_main(["--ckpt", str(ckpt), "--pairs", str(csv), "--out", str(out)]) == 0
    assert (out / "top_mosaic_09cm_area2_classes.tif").is_file()
    (rgb / "orphan.tif").write_bytes(b"")
    code = predict_main(["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--out", str(out)])
    assert code == 2 and "orphan.tif" in capsys.readouterr().err


def test_bf16_prediction_agrees_with_fp32(ckpt, vaihingen_root, tmp_path):
    model, meta = load_predictor(ckpt)
    rgb, x = _pair(vaihingen_root)
    maps = {}
    for precision in ("fp32", "bf16"):
        opts = PredictOptions(window=32, overlap=8, precision=precision)
        written = predict_pair(model, meta, rgb, x, tmp_path / precision, opts)
        with rasterio.open(written["classes"]) as src:
            maps[precision] = src.read(1)
    assert (maps["fp32"] == maps["bf16"]).mean() > 0.9


def test_class_map_is_argmax_with_first_of_ties():
    from rsfusion.inference.predict import class_map

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 7, 9)).astype(np.float32)
    logits[2, 0, 0] = logits[4, 0, 0] = 10.0  # a tie: the first class wins, as in argmax
    logits[:, 1, 1] = 0.5  # all tied
    assert np.array_equal(class_map(logits), logits.argmax(0))
    assert class_map(logits)[0, 0] == 2 and class_map(logits)[1, 1] == 0
    assert class_map(rng.standard_normal((300, 2, 2)).astype(np.float32)).dtype == np.uint16


class _FakeRunner:
    """What check_device_memory and _run look at: a device, the views, a call."""

    def __init__(self, device="cuda:0", error=None):
        self.device, self.scales, self.flip, self.error = torch.device(device), (1.0,), False, error

    def __call__(self, rgb, x, norm):
        raise self.error


def test_a_batch_too_large_for_the_gpu_is_refused_with_the_numbers(monkeypatch):
    from rsfusion.errors import PredictionError
    from rsfusion.inference.predict import check_device_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    check_device_memory(_FakeRunner(), 512, 4, 6, 8)  # 0.2 GiB of inputs and logits: fits
    with pytest.raises(PredictionError, match=r"cuda:0 \(window 8192.*2\.0 GiB are available"):
        check_device_memory(_FakeRunner(), 8192, 4, 6, 8)
    check_device_memory(_FakeRunner("cpu"), 8192, 4, 6, 8)  # host memory is checked apart


def test_running_out_of_gpu_memory_is_a_user_error():
    from rsfusion.errors import PredictionError
    from rsfusion.inference.predict import _run

    runner = _FakeRunner(error=torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(PredictionError, match="out of memory on cuda:0.*--batch-size"):
        _run(runner, np.zeros((2, 3, 64, 64), np.uint8), None, None)


def test_the_model_is_rebuilt_for_a_checkpoint(ckpt, monkeypatch):
    """Offline, the backbone message is worded for a model whose weights come from a checkpoint."""
    import rsfusion.inference.predict as predict_module
    from rsfusion.models.backbones.factory import building

    seen = []
    real = predict_module.build_model

    def spy(spec):
        seen.append(building())
        return real(spec)

    monkeypatch.setattr(predict_module, "build_model", spy)
    load_predictor(ckpt)
    assert seen == ["checkpoint"]


def test_compression_options_reach_every_output(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, x = _pair(vaihingen_root)
    base = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--window", "32"]
    assert predict_main([*base, "--out", str(tmp_path / "z"), "--probs", "--compress", "zstd",
                         "--compress-level", "3", "--write-threads", "1"]) == 0  # fmt: skip
    assert predict_main([*base, "--out", str(tmp_path / "d")]) == 0
    for name in ("classes", "probs"):
        with rasterio.open(tmp_path / "z" / f"{rgb.stem}_{name}.tif") as src:
            assert src.compression.name == "zstd"
    with (
        rasterio.open(tmp_path / "d" / f"{rgb.stem}_classes.tif") as a,
        rasterio.open(tmp_path / "z" / f"{rgb.stem}_classes.tif") as b,
    ):
        assert a.compression.name == "deflate" and np.array_equal(a.read(), b.read())
    capsys.readouterr()
    assert predict_main([*base, "--out", str(tmp_path / "bad"), "--compress", "lzw",
                         "--compress-level", "3"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--compress-level" in err[0]
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())
