"""rsfusion.evaluate: the Python entry point writes what scripts/evaluate.py writes, returns its
metrics, and raises the library's errors (never SystemExit) on bad input."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

from rsfusion.errors import ConfigError, MissingFileError
from rsfusion.evaluation import EvalOptions, evaluate
from tests.evaluation.conftest import overrides


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def test_evaluate_writes_what_the_cli_writes_and_returns_its_metrics(trained, vaihingen_root,
                                                                     tmp_path, capsys):  # fmt: skip
    from rsfusion.cli.evaluate import main as evaluate_main

    cli, lib = tmp_path / "cli", tmp_path / "lib"
    argv = ["--ckpt", str(trained), "--cfg", "demo_baseline", "--out", str(cli), "--stride",
            "16", "--set", *overrides(vaihingen_root)]  # fmt: skip
    assert _quiet(evaluate_main, argv) == 0
    printed = capsys.readouterr().out
    echoed: list[str] = []
    metrics = _quiet(evaluate, "demo_baseline", trained, lib, overrides=overrides(vaihingen_root),
                     stride=16, echo=echoed.append)  # fmt: skip

    assert _files(lib) == _files(cli)
    assert "metrics.json" in _files(lib) and "overlays/top_mosaic_09cm_area2.png" in _files(lib)
    assert "reports/test_x_only_scores.json" in _files(lib)
    for name in _files(lib):  # the same numbers, tables and pictures, byte for byte
        if name.endswith((".json", ".png")) and "confusion" not in name:
            assert (lib / name).read_bytes() == (cli / name).read_bytes(), name
    assert json.loads((lib / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert set(metrics) == {"both", "rgb", "x", "protocol"}
    assert metrics["protocol"]["stride"] == 16 and metrics["protocol"]["labels"] == "eroded"
    assert 0.0 <= metrics["both"]["mIoU"] <= 1.0
    assert len(echoed) == 4 and "RGB only (X zeroed)" in echoed[-1]  # 3 class tables, 1 summary
    assert all(text in printed for text in echoed)  # what the command line printed


def test_without_out_only_the_metrics_return_and_nothing_is_left(trained, vaihingen_root,
                                                                 tmp_path, monkeypatch,
                                                                 capsys):  # fmt: skip
    from rsfusion.config import load_config

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(tmp_path)
    settings = {"inputs": "both", "stride": 16, "options": EvalOptions(overlays=2)}
    quiet = _quiet(evaluate, "demo_baseline", trained, overrides=overrides(vaihingen_root),
                   echo=None, **settings)  # fmt: skip
    assert capsys.readouterr().out == ""  # echo=None: no table printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and not any(scratch.iterdir())
    assert set(quiet) == {"both", "protocol"} and quiet["protocol"]["tiles"] == ["2", "4"]

    # a loaded config is scored as its name is; the files land where out says
    cfg = load_config("demo_baseline", overrides(vaihingen_root))
    kept = _quiet(evaluate, cfg, trained, tmp_path / "kept", echo=None, **settings)
    assert json.loads(json.dumps(kept)) == json.loads(json.dumps(quiet))
    assert "overlays/top_mosaic_09cm_area4.png" in _files(tmp_path / "kept")


def _without_eroded_labels(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    (copy / "top_mosaic_09cm_area4_noBoundary.tif").unlink()
    return copy


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [("inputs", ConfigError, "--inputs depth: use both, rgb or x"),
     ("labels", ConfigError, "--labels noisy: use eroded, full, eroded-or-full"),
     ("stride", ConfigError, "--stride 64 must lie in (0, window=32]"),
     ("checkpoint", MissingFileError, "no such checkpoint file"),
     ("eroded", MissingFileError, "1 test tile(s) have no eroded labels: tile 4"),
     ("keep", ConfigError, "save_predictions=True writes the predictions into out"),
     ("overrides", ConfigError, "apply to a config name or file")],
)  # fmt: skip
def test_bad_input_raises_the_library_error(trained, vaihingen_root, tmp_path, case, error,
                                            message):  # fmt: skip
    from rsfusion.config import load_config

    cfg, ckpt, out = "demo_baseline", trained, tmp_path / "eval"
    root, settings = vaihingen_root, {"inputs": ["both"]}
    if case == "inputs":
        settings["inputs"] = ["both", "depth"]
    elif case == "labels":
        settings["labels"] = "noisy"
    elif case == "stride":
        settings["stride"] = 64
    elif case == "checkpoint":
        ckpt = tmp_path / "missing.ckpt"
    elif case == "eroded":
        root = _without_eroded_labels(vaihingen_root, tmp_path)
    elif case == "keep":
        out, settings["save_predictions"] = None, True
    elif case == "overrides":
        cfg = load_config("demo_baseline", overrides(vaihingen_root))
    with pytest.raises(error) as caught:
        _quiet(evaluate, cfg, ckpt, out, overrides=overrides(root), echo=None, **settings)
    assert message in str(caught.value)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_the_command_line_calls_the_library(monkeypatch, tmp_path):
    import rsfusion.cli.evaluate as cli

    calls = []

    def spy(cfg, ckpt, out, **kwargs):
        calls.append((cfg, ckpt, out, kwargs))
        raise ConfigError("spy: stop here")

    monkeypatch.setattr(cli, "evaluate_checkpoint", spy)
    argv = ["--ckpt", "c.ckpt", "--cfg", "demo_baseline", "--out", str(tmp_path), "--stride",
            "8", "--inputs", "both", "rgb", "--no-flip", "--set", "seed=3"]  # fmt: skip
    assert cli.main(argv) == 2
    ((cfg, ckpt, out, kwargs),) = calls
    assert (cfg, ckpt, out, kwargs["overrides"]) == ("demo_baseline", "c.ckpt", str(tmp_path),
                                                     ["seed=3"])  # fmt: skip
    assert kwargs["options"] == EvalOptions(stride=8, inputs=["both", "rgb"], flip=False)


def test_rsfusion_exports_the_entry_points_lazily():
    import subprocess
    import sys

    code = ("import sys, rsfusion; assert 'torch' not in sys.modules; "
            "from rsfusion.evaluation.api import evaluate; from rsfusion.inference.api import "
            "predict; assert rsfusion.evaluate is evaluate and rsfusion.predict is predict; "
            "assert {'evaluate', 'predict', 'Predictor'} <= set(rsfusion.__all__)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
