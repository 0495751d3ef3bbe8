"""predict.py on hostile and broken inputs: one ``error:`` line, no lost or redirected output.

Each test is a case an adversarial pass found: planted links at temporary names, odd characters
in names, two inputs with one output name, a concurrent run's files, hard kills, files declaring
huge sizes, +inf pixels, corrupt rasters in a folder run, a full disk, an unusable --out or
device, and an interruption while vectorising.
"""

import errno
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rasterio

from rsfusion.cli.predict import main as predict_main

DEAD = 2**22 + 4321  # above the usual pid_max: no such process


@pytest.fixture(scope="module")
def ckpt(demo_ckpt):
    """The session's tiny demo_baseline checkpoint (tests/conftest.py)."""
    return demo_ckpt


@pytest.fixture
def no_model(monkeypatch):
    """Make loading the model fail the test: refusals must come before it."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr("rsfusion.inference.api.load_predictor", load)


def outputs(folder):
    """The output files of a folder, without the style sidecars (``.qml``, ``.aux.xml``)
    written beside each raster."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".qml", ".aux.xml")))


def _pair(root, area=2):
    return (root / "top" / f"top_mosaic_09cm_area{area}.tif",
            root / "dsm" / f"dsm_09cm_matching_area{area}.tif")  # fmt: skip


def _args(ckpt, rgb, x, out, *extra):
    return ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- item 2: temporaries
def test_planted_links_at_temporary_names_do_not_redirect_outputs(ckpt, vaihingen_root,
                                                                  tmp_path):  # fmt: skip
    rgb, x = _pair(vaihingen_root)
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    pid, stem = os.getpid(), rgb.stem
    names = [f".{stem}_classes.tif.{pid}.partial", f".{stem}_probs.tif.{pid}.partial",
             f".{stem}_classes.tiled.tif", f".{stem}_classes.tif.{pid}.partial.ovr.tif",
             f".{stem}.gpkg.{pid}.partial.gpkg", f".{stem}.gpkg.{pid}.partial.gpkg-wal",
             f".{stem}_classes.tiled.tif.{pid}.partial"]  # fmt: skip
    for name in names:
        (out / name).symlink_to(outside)
    assert predict_main(_args(ckpt, rgb, x, out, "--probs", "--cog", "--vector")) == 0
    assert outside.read_text() == "precious"
    assert _hidden(out) == sorted(names)  # the links are left alone, nothing else is hidden
    with rasterio.open(out / f"{stem}_classes.tif") as src:
        assert src.read(1).max() < 6 and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


# ---------------------------------------------------------------- item 3: output names
def test_odd_characters_in_names_keep_outputs_apart_and_reruns_skip(ckpt, vaihingen_root,
                                                                    tmp_path, capsys):  # fmt: skip
    rgb_dir, x_dir = tmp_path / "d?q" / "top", tmp_path / "d?q" / "dsm"
    rgb_dir.mkdir(parents=True)
    x_dir.mkdir()
    names = ["t?1.tif", "t[2].tif", "t 3?.x.tif"]
    for name in names:
        shutil.copy(_pair(vaihingen_root)[0], rgb_dir / name)
        shutil.copy(_pair(vaihingen_root)[1], x_dir / name)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb_dir), "--x", str(x_dir), "--out", str(out),
            "--window", "32"]  # fmt: skip
    assert predict_main(args) == 0
    assert outputs(out) == sorted(n.removesuffix(".tif") + "_classes.tif" for n in names)
    capsys.readouterr()
    assert predict_main(args) == 0
    assert capsys.readouterr().err.count("outputs complete, skipped") == 3


def test_two_inputs_with_one_output_name_are_refused_before_any_work(ckpt, vaihingen_root,
                                                                     tmp_path, capsys):  # fmt: skip
    rgb, x = _pair(vaihingen_root)
    for folder in ("north", "south"):
        (tmp_path / folder).mkdir()
        shutil.copy(rgb, tmp_path / folder / "tile.tif")
        shutil.copy(x, tmp_path / folder / "tile_dsm.tif")
    csv = tmp_path / "pairs.csv"
    csv.write_text("rgb,x\nnorth/tile.tif,north/tile_dsm.tif\nsouth/tile.tif,south/tile_dsm.tif\n")
    out = tmp_path / "out"
    assert predict_main(["--ckpt", str(ckpt), "--pairs", str(csv), "--out", str(out)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(tmp_path / "north" / "tile.tif") in line
    assert str(tmp_path / "south" / "tile.tif") in line
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- item 4: concurrent runs
def test_a_run_removes_only_what_dead_processes_left(ckpt, vaihingen_root, tmp_path):
    from rsfusion.data.writers import staging_dir

    rgb, x = _pair(vaihingen_root)
    src = tmp_path / "t[1]"
    src.mkdir()
    shutil.copy(rgb, src / "t[1].tif")
    shutil.copy(x, src / "t[1]_dsm.tif")
    out = tmp_path / "out"
    out.mkdir()
    live = staging_dir(out, "t[1]_classes.tif")  # a concurrent run (alive: our parent)
    live = live.rename(str(live).replace(f"-{os.getpid()}-", f"-{os.getppid()}-"))
    (live / "t[1]_classes.tif").write_bytes(b"half")
    dead = out / live.name.replace(f"-{os.getppid()}-", f"-{DEAD}-")
    dead.mkdir()
    (dead / "t[1]_classes.tif").write_bytes(b"half")
    other = f".t[10]_classes.tif.{os.getppid()}.partial"  # an older version's, alive
    (out / other).write_bytes(b"half")
    args = _args(ckpt, src / "t[1].tif", src / "t[1]_dsm.tif", out, "--cog", "--vector")
    assert predict_main(args) == 0
    assert _hidden(out) == sorted([live.name, other])
    assert (live / "t[1]_classes.tif").read_bytes() == b"half"
    assert {n for n in outputs(out) if not n.startswith(".")} == {
        "t[1]_classes.tif",
        "t[1].gpkg",
    }


# ---------------------------------------------------------------- item 5: hard kills
KILLER = """
import os, signal, sys
import {module} as target
original = target.{name}
def killed(*args, **kwargs):
    result = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 part-way: nothing can clean up
    return result
target.{name} = killed
from rsfusion.cli.predict import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("module", "name"), [("rasterio.shutil", "copy"), ("pyogrio", "write_dataframe")],
    ids=["during-cog", "during-vector"],
)  # fmt: skip
def test_a_rerun_cleans_up_after_kill_9(ckpt, vaihingen_root, tmp_path, module, name):
    rgb, x = _pair(vaihingen_root)
    out = tmp_path / "out"
    args = _args(ckpt, rgb, x, out, "--cog", "--vector", "--probs")
    script = textwrap.dedent(KILLER.format(module=module, name=name))
    killed = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = _hidden(out)
    assert left, "the kill left no temporary file: the test does not test anything"
    # what earlier versions left after kill -9 is removed too
    legacy = [
        f".{rgb.stem}_classes.tif.{DEAD}.partial.ovr.tif",
        f".{rgb.stem}.gpkg.{DEAD}.partial.gpkg",
        f".{rgb.stem}.gpkg.{DEAD}.partial.gpkg-wal",
    ]
    for n in legacy:  # fmt: skip
        (out / n).write_bytes(b"x")
    rerun = subprocess.run([sys.executable, "-m", "rsfusion.cli.predict", *args],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _hidden(out) == []
    assert outputs(out) == sorted(
        [f"{rgb.stem}_classes.tif", f"{rgb.stem}_probs.tif", f"{rgb.stem}.gpkg"]
    )


# ---------------------------------------------------------------- item 6: memory
def _huge_vrt(path, source, bands, size=10**6):
    """A VRT of a few hundred bytes declaring ``size`` x ``size`` pixels of ``source``."""
    with rasterio.open(source) as src:
        dtype = {"uint8": "Byte", "float32": "Float32"}[src.dtypes[0]]
    layers = "".join(
        f'<VRTRasterBand dataType="{dtype}" band="{b}"><SimpleSource><SourceFilename '
        f'relativeToVRT="0">{source}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource>'
        "</VRTRasterBand>"
        for b in range(1, bands + 1)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32632</SRS>'
        f"<GeoTransform>0, 1, 0, 0, 0, -1</GeoTransform>{layers}</VRTDataset>"
    )
    return path


def test_a_raster_declaring_a_huge_size_is_refused_with_the_numbers(ckpt, vaihingen_root,
                                                                    tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    import tracemalloc

    rgb, x = _pair(vaihingen_root)
    big_rgb = _huge_vrt(tmp_path / "big.vrt", rgb, 3)
    big_x = _huge_vrt(tmp_path / "big_dsm.vrt", x, 1)
    assert big_rgb.stat().st_size < 1000
    monkeypatch.setattr("rsfusion.inference.memory.available_memory", lambda: 1 << 30)

    def went_on(*args, **kwargs):  # else the test would predict 10^12 pixels
        raise AssertionError("the prediction went past the memory check")

    monkeypatch.setattr("rsfusion.inference.predict.pair_spec", went_on)
    tracemalloc.start()
    code = predict_main(_args(ckpt, big_rgb, big_x, tmp_path / "out", "--window", "32"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "1000000 x 1000000 px" in line and "GiB" in line and "1.0 GiB are available" in line
    assert peak < 200 << 20  # no plan, no band buffers: far below what the file declares


def test_a_window_too_large_for_memory_is_refused_with_the_numbers(ckpt, vaihingen_root,
                                                                   tmp_path, capsys):  # fmt: skip
    rgb, x = _pair(vaihingen_root)
    assert predict_main(_args(ckpt, rgb, x, tmp_path / "out", "--window", "100000")) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "a window of 100000 px" in line and "GiB of memory" in line and "--window" in line


def test_a_checkpoint_window_too_large_is_refused_too(ckpt, vaihingen_root, tmp_path, capsys,
                                                     monkeypatch):  # fmt: skip
    from rsfusion.inference import api

    load = api.load_predictor

    def huge_window(*args, **kwargs):
        import dataclasses

        model, meta = load(*args, **kwargs)
        return model, dataclasses.replace(meta, window=100000)

    monkeypatch.setattr(api, "load_predictor", huge_window)
    rgb, x = _pair(vaihingen_root)
    assert predict_main(_args(ckpt, rgb, x, tmp_path / "out")) == 2
    assert "a window of 100000 px" in _error_lines(capsys.readouterr().err)[0]


# ---------------------------------------------------------------- item 7: non-finite pixels
def test_infinite_x_pixels_are_unknown_like_nan(ckpt, vaihingen_root, tmp_path):
    rgb, x = _pair(vaihingen_root)
    with rasterio.open(x) as src:
        profile, data = src.profile, src.read()
    maps = {}
    for name, value in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        bad = data.copy()
        bad[0, 5:15, 10:30] = value
        path = tmp_path / f"dsm_{name}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(bad)
        out = tmp_path / name
        assert predict_main(_args(ckpt, rgb, path, out, "--window", "32")) == 0
        with rasterio.open(out / f"{rgb.stem}_classes.tif") as src:
            maps[name] = src.read(1)
    assert np.array_equal(maps["nan"], maps["inf"]) and np.array_equal(maps["nan"], maps["-inf"])


# ---------------------------------------------------------------- item 8: user errors
@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "not a raster"])
@pytest.mark.parametrize("which", ["rgb", "x"])
def test_a_broken_raster_is_one_error_line_naming_it(ckpt, vaihingen_root, tmp_path, capsys,
                                                     damage, which):  # fmt: skip
    rgb, x = _pair(vaihingen_root)
    pair = {"rgb": tmp_path / "ortho file.tif", "x": tmp_path / "dsm file.tif"}
    shutil.copy(rgb, pair["rgb"])
    shutil.copy(x, pair["x"])
    data = pair[which].read_bytes()
    pair[which].write_bytes(
        {"zero-byte": b"", "truncated": data[: len(data) // 2], "not a raster": b"<html/>"}[damage]
    )
    out = tmp_path / "out"
    assert predict_main(_args(ckpt, pair["rgb"], pair["x"], out)) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(pair[which]) in line
    assert [p.name for p in out.iterdir()] == []


def test_a_folder_run_goes_on_after_a_corrupt_file_and_lists_it(ckpt, vaihingen_root, tmp_path,
                                                                capsys):  # fmt: skip
    rgb_dir, x_dir = tmp_path / "top", tmp_path / "dsm"
    rgb_dir.mkdir()
    x_dir.mkdir()
    for name in ("a.tif", "b.tif", "c.tif", "d.tif"):
        shutil.copy(_pair(vaihingen_root)[0], rgb_dir / name)
        shutil.copy(_pair(vaihingen_root)[1], x_dir / name)
    data = (rgb_dir / "b.tif").read_bytes()
    (rgb_dir / "b.tif").write_bytes(data[: len(data) // 2])  # truncated
    (x_dir / "c.tif").write_bytes(b"")  # zero bytes
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb_dir), "--x", str(x_dir), "--out", str(out)]
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert "2 of 4 pair(s) failed" in line
    assert str(rgb_dir / "b.tif") in line and str(rgb_dir / "c.tif") in line
    assert str(x_dir / "c.tif") in err  # the report of c names its broken X file
    assert outputs(out) == ["a_classes.tif", "d_classes.tif"]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("target", ["geotiff", "cog", "geopackage"])
def test_a_full_disk_is_one_error_line_and_stops_the_run(ckpt, vaihingen_root, tmp_path, capsys,
                                                         monkeypatch, target):  # fmt: skip
    import pyogrio

    from rsfusion.inference.writer import StreamingGeoTIFF

    patch = {"geotiff": (StreamingGeoTIFF, "_flush"), "cog": (rasterio.shutil, "copy"),
             "geopackage": (pyogrio, "write_dataframe")}[target]  # fmt: skip
    monkeypatch.setattr(*patch, _enospc)
    rgb_dir, x_dir = tmp_path / "top", tmp_path / "dsm"
    rgb_dir.mkdir()
    x_dir.mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(_pair(vaihingen_root)[0], rgb_dir / name)
        shutil.copy(_pair(vaihingen_root)[1], x_dir / name)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb_dir), "--x", str(x_dir), "--out", str(out),
            "--cog", "--vector"]  # fmt: skip
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    final = {"geotiff": "a_classes.tif", "cog": "a_classes.tif", "geopackage": "a.gpkg"}[target]
    assert str(out / final) in line and "No space left on device" in line
    assert "b.tif" not in err  # the run stopped: the next pair would fail the same way
    assert _hidden(out) == []
    expected = ["a_classes.tif"] if target == "geopackage" else []
    assert outputs(out) == expected


@pytest.mark.parametrize("case", ["file", "read-only"])
def test_an_unusable_out_is_refused_before_the_model_loads(ckpt, vaihingen_root, tmp_path, capsys,
                                                           monkeypatch, no_model, case):  # fmt: skip
    rgb, x = _pair(vaihingen_root)
    out = tmp_path / "out"
    if case == "file":
        out.write_text("not a folder")
    else:
        out.mkdir()
        out.chmod(0o555)

        def read_only(path, mode=0o777):  # root may write anyway: make mkdir fail as it would
            raise OSError(errno.EROFS, "Read-only file system", str(path))

        monkeypatch.setattr("rsfusion.data.writers.os.mkdir", read_only)
    assert predict_main(_args(ckpt, rgb, x, out)) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"--out {out}" in line
    assert ("is a file" if case == "file" else "Read-only file system") in line
    if case != "file":
        out.chmod(0o755)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--window", "0"], "--window 0: must be at least 1"),
     (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
     (["--overlap", "-1"], "--overlap -1: must be 0 or more"),
     (["--device", "cuda"], "--device cuda: no CUDA GPU"),
     (["--device", "gpu"], "--device gpu: not a device name")],
)  # fmt: skip
def test_bad_options_are_refused_before_the_model_loads(ckpt, vaihingen_root, tmp_path, capsys,
                                                        monkeypatch, no_model, flags, message):  # fmt: skip
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rgb, x = _pair(vaihingen_root)
    assert predict_main(_args(ckpt, rgb, x, tmp_path / "out", *flags)) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert message in line


# ---------------------------------------------------------------- item 9: true messages
def test_an_interruption_while_vectorising_says_what_is_complete(ckpt, vaihingen_root, tmp_path,
                                                                 capsys, monkeypatch):  # fmt: skip
    import rsfusion.inference.vectorize as vectorize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vectorize, "vectorize_classes", interrupted)
    rgb, x = _pair(vaihingen_root)
    out = tmp_path / "out"
    assert predict_main(_args(ckpt, rgb, x, out, "--probs", "--vector")) == 130
    err = capsys.readouterr().err
    stem = rgb.stem
    assert f"{stem}_classes.tif, {stem}_probs.tif are complete" in err
    assert f"{stem}.gpkg was not written" in err and "rerun to complete" in err
    assert "nothing was left under a final name" not in err
    assert outputs(out) == [f"{stem}_classes.tif", f"{stem}_probs.tif"]
