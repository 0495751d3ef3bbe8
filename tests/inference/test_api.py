"""rsfusion.predict: the Python entry point writes what scripts/predict.py writes for a pair or
folders, returns the files, and raises the library's errors (never SystemExit)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio

from rsfusion.errors import MissingFileError, PairingError, PredictionError
from rsfusion.inference.api import (
    PredictionInterrupted,
    PredictionResult,
    Predictor,
    output_names,
    predict,
)
from rsfusion.inference.predict import PredictOptions


@pytest.fixture(scope="module")
def ckpt(demo_ckpt):
    """The session's tiny demo_baseline checkpoint (tests/conftest.py)."""
    return demo_ckpt


def _pair(root, area=2):
    return (root / "top" / f"top_mosaic_09cm_area{area}.tif",
            root / "dsm" / f"dsm_09cm_matching_area{area}.tif")  # fmt: skip


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs


def _folders(root, tmp_path, names=("a.tif", "b.tif")):
    rgb_dir, x_dir = tmp_path / "top", tmp_path / "dsm"
    rgb_dir.mkdir()
    x_dir.mkdir()
    for name in names:
        shutil.copy(_pair(root)[0], rgb_dir / name)
        shutil.copy(_pair(root)[1], x_dir / name)
    return rgb_dir, x_dir


def test_a_pair_gets_the_files_the_command_line_writes(ckpt, vaihingen_root, tmp_path, capsys):
    from rsfusion.cli.predict import main as predict_main

    rgb, x = _pair(vaihingen_root)
    flags = ["--window", "32", "--overlap", "8", "--probs", "--vector", "--no-progress"]
    assert predict_main(["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--out",
                         str(tmp_path / "cli"), *flags]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    seen = []
    result = predict(ckpt, rgb, x, out=tmp_path / "lib", window=32, overlap=8, probs=True,
                     vector=True, on_outputs=lambda pair, files: seen.append((pair, files)))  # fmt: skip
    assert isinstance(result, PredictionResult) and result.skipped == [] and result.failed == []
    files = result.outputs[rgb]
    assert list(files) == ["classes", "probs", "vector"]
    assert [p.name for p in result.paths] == [
        f"{rgb.stem}_classes.tif", f"{rgb.stem}_probs.tif", f"{rgb.stem}.gpkg"
    ]  # fmt: skip
    assert all(p.parent == tmp_path / "lib" and p.is_file() for p in result.paths)
    assert [(pair.rgb, pair.x) for pair, _ in seen] == [(rgb, x)] and seen[0][1] == files
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == names
    for kind in ("classes", "probs"):
        cli, lib = _read(tmp_path / "cli" / files[kind].name), _read(files[kind])
        assert np.array_equal(cli[0], lib[0]) and cli[1:] == lib[1:]
    # the command line printed the same files, one NAME: PATH line each
    assert f"classes: {tmp_path / 'cli' / files['classes'].name}" in printed
    assert result.device.startswith("cpu ")  # the device and precision the model ran with


def test_folders_are_paired_and_a_rerun_skips_what_is_complete(ckpt, vaihingen_root, tmp_path):
    rgb_dir, x_dir = _folders(vaihingen_root, tmp_path)
    predictor = Predictor.load(ckpt)  # loaded once, used twice
    out = tmp_path / "out"
    first = predict(predictor, rgb_dir, x_dir, out=out, options=PredictOptions(window=32))
    assert sorted(first.outputs) == [rgb_dir / "a.tif", rgb_dir / "b.tif"]
    assert sorted(p.name for p in first.paths) == ["a_classes.tif", "b_classes.tif"]
    again = predict(predictor, rgb_dir, x_dir, out=out, options=PredictOptions(window=32))
    assert again.outputs == {} and sorted(p.rgb.name for p in again.skipped) == ["a.tif", "b.tif"]
    # the same pixels as from the checkpoint's path
    single = predict(ckpt, rgb_dir / "a.tif", x_dir / "a.tif", out=tmp_path / "one", window=32)
    assert np.array_equal(_read(single.paths[0])[0], _read(out / "a_classes.tif")[0])


def test_a_pairs_csv_and_the_output_names(ckpt, vaihingen_root, tmp_path):
    rgb, x = _pair(vaihingen_root)
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"rgb,x\n{rgb},{x}\n")
    result = predict(ckpt, pairs=csv, out=tmp_path / "out", window=32, confidence=True)
    assert [p.name for p in result.paths] == [f"{rgb.stem}_classes.tif",
                                              f"{rgb.stem}_confidence.tif"]  # fmt: skip
    assert output_names(PredictOptions(confidence=True)) == [
        "{stem}_classes.tif", "{stem}_confidence.tif"
    ]  # fmt: skip


def test_a_corrupt_file_in_a_folder_run_raises_after_the_others(ckpt, vaihingen_root, tmp_path):
    rgb_dir, x_dir = _folders(vaihingen_root, tmp_path, ("a.tif", "b.tif", "c.tif"))
    (rgb_dir / "b.tif").write_bytes((rgb_dir / "b.tif").read_bytes()[:200])  # truncated
    with pytest.raises(PredictionError, match=r"1 of 3 pair\(s\) failed") as caught:
        predict(ckpt, rgb_dir, x_dir, out=tmp_path / "out", window=32)
    result = caught.value.result
    assert sorted(p.name for p in result.outputs) == ["a.tif", "c.tif"]
    assert [pair.rgb.name for pair, _ in result.failed] == ["b.tif"]
    assert str(rgb_dir / "b.tif") in str(caught.value)


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [("missing", MissingFileError, "no such file or folder"),
     ("no inputs", PredictionError, "give the inputs as rgb"),
     ("both inputs", PredictionError, "give the inputs as rgb"),
     ("window", PredictionError, "--window 0: must be at least 1"),
     ("out is a file", PredictionError, "is a file, not a folder"),
     ("folder and file", PairingError, "so --x must be one too"),
     ("dataset of a loaded model", PredictionError, "give them to Predictor.load"),
     ("checkpoint", MissingFileError, "no such checkpoint file")],
)  # fmt: skip
def test_bad_input_raises_the_library_error(ckpt, vaihingen_root, tmp_path, monkeypatch, case,
                                            error, message):  # fmt: skip
    rgb, x = _pair(vaihingen_root)
    kwargs = {"out": tmp_path / "out"}
    model = ckpt
    if case == "missing":
        rgb = tmp_path / "nothing.tif"
    elif case == "no inputs":
        rgb = x = None
    elif case == "both inputs":
        kwargs["pairs"] = tmp_path / "pairs.csv"
    elif case == "window":
        kwargs["window"] = 0
    elif case == "out is a file":
        kwargs["out"].write_text("a file")
    elif case == "folder and file":
        rgb = vaihingen_root / "top"
    elif case == "dataset of a loaded model":
        model, kwargs["dataset"] = Predictor.load(ckpt), "vaihingen"
    elif case == "checkpoint":
        model = tmp_path / "missing.ckpt"
    if case in ("no inputs", "both inputs", "window", "out is a file"):

        def no_model(*args, **kwargs):
            raise AssertionError("the model was loaded before the refusal")

        monkeypatch.setattr("rsfusion.inference.api.load_predictor", no_model)
    with pytest.raises(error) as caught:
        predict(model, rgb, x, **kwargs)
    assert message in str(caught.value)
    out = tmp_path / "out"
    assert not out.is_dir() or not list(out.glob("*_classes.tif"))


def test_an_interruption_says_what_is_complete(ckpt, vaihingen_root, tmp_path, monkeypatch):
    import rsfusion.inference.vectorize as vectorize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vectorize, "vectorize_classes", interrupted)
    rgb, x = _pair(vaihingen_root)
    with pytest.raises(KeyboardInterrupt) as caught:
        predict(ckpt, rgb, x, out=tmp_path / "out", window=32, vector=True)
    assert isinstance(caught.value, PredictionInterrupted)
    assert f"{rgb.stem}_classes.tif are complete" in str(caught.value)
    assert f"{rgb.stem}.gpkg was not written" in caught.value.description
    assert caught.value.result.outputs == {}


def test_the_command_line_calls_the_library(ckpt, vaihingen_root, tmp_path, monkeypatch):
    import rsfusion.cli.predict as cli

    calls = []

    def spy(predictor, rgb, x, **kwargs):
        calls.append((predictor, rgb, x, kwargs))
        return PredictionResult()

    monkeypatch.setattr(cli, "predict", spy)
    rgb, x = _pair(vaihingen_root)
    argv = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--out", str(tmp_path),
            "--window", "16", "--probs", "--redo", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    ((predictor, got_rgb, got_x, kwargs),) = calls
    assert isinstance(predictor, Predictor) and predictor.source == str(ckpt)
    assert (got_rgb, got_x, kwargs["redo"]) == (str(rgb), str(x), True)
    assert kwargs["options"].window == 16 and kwargs["options"].probs
