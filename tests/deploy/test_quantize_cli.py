"""scripts/quantize.py: the int8 model written with its figures, reused, refused as one line."""

from __future__ import annotations

import argparse

import pytest

from rsfusion.cli.quantize import build_parser, main
from rsfusion.deploy.quantize import read_int8

FAST = ["--calib-windows", "4", "--check-windows", "4"]


@pytest.fixture
def exported(tiny, tmp_path):
    """The tiny model's float32 .onnx (its config names the fake tiles), copied alone."""
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny[3].read_bytes())
    return path


@pytest.fixture(autouse=True)
def fresh_messages(monkeypatch):
    """Each run prints its messages to this test's captured stdout (show_messages keeps the
    handler it finds, which would write to an earlier test's closed stream)."""
    import logging

    monkeypatch.setattr(logging.getLogger("rsfusion"), "handlers", [])


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("quantising"), err  # progress, then the error
    assert lines[1].startswith("error: ") and "Traceback" not in err
    return lines[1]


def test_writes_then_reuses_the_int8_model(exported, capsys):
    assert main(["--ckpt", str(exported), "--threshold", "0", *FAST]) == 0
    out = capsys.readouterr().out
    path = exported.with_name("model.int8.onnx")
    assert f"wrote {path}" in out
    assert ("calibrated on 4 windows of 32 px (training tiles: 1, 3, 5); checked on other tiles "
            "(validation)") in out  # fmt: skip
    assert "int8 vs float32: " in out and "% of pixels keep their float32 class on 4" in out
    assert read_int8(path)["check"]["passed"]
    assert main(["--ckpt", str(exported), "--threshold", "0", *FAST]) == 0
    assert f"{path}: current int8 model of {exported} (reused; --force to redo)" in (
        capsys.readouterr().out
    )


def test_below_the_threshold_is_one_error_line(exported, tmp_path, capsys):
    out = tmp_path / "strict.onnx"
    assert main(["--ckpt", str(exported), "--threshold", "100", "--out", str(out), *FAST]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "short of the threshold of 100 % of pixels; nothing was written" in line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_calibration_on_rasters_given(exported, tmp_path, vaihingen_root, capsys):
    out = tmp_path / "given.int8.onnx"
    args = ["--ckpt", str(exported), "--out", str(out), "--threshold", "0",
            "--calib-rgb", str(vaihingen_root / "top"), "--calib-x", str(vaihingen_root / "dsm")]  # fmt: skip
    assert main(args) == 0
    cal = read_int8(out)["calibration"]
    assert cal["source"] == "rasters given" and len(cal["files"]) == 5
    assert cal["check_from"] == "other windows of the calibration rasters"
    assert cal["calibration_windows"] + cal["check_windows"] <= 5  # one 32 px window a raster
    assert "(rasters given: top_mosaic_09cm_area1.tif" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "x.txt"], "--out x.txt: give a file name ending in .onnx"),
        (["--calib-x", "dsm"], "--calib-x: give the RGB rasters with --calib-rgb as well"),
        (["--data-root", "/nonexistent/data"], "--data-root /nonexistent/data: no such folder"),
        (["--calib-windows", "0"], "--calib-windows 0: must be at least 1"),
        (["--exclude", "/nothing/*"], "--exclude /nothing/*: names no node of the model"),
    ],
)
def test_bad_options_are_one_error_line(exported, tmp_path, capsys, extra, message):
    args = ["--ckpt", str(exported), "--out", str(tmp_path / "m.onnx"), *FAST, *extra]
    if extra[0] == "--out":
        args = ["--ckpt", str(exported), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("error:") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_help_is_plain_text():
    parser = build_parser()
    text = parser.format_help()
    assert "``" not in text and ":func:" not in text
    assert parser.formatter_class is argparse.RawDescriptionHelpFormatter
    silent = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert silent == []
