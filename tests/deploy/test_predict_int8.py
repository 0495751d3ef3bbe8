"""predict.py --precision int8 / auto: the checkpoint's int8 model (ONNX Runtime) through the
same windows and writers, picked by ``auto`` only where it passed its check."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import onnx
import pytest
import rasterio

from rsfusion.cli import predict as predict_cli
from rsfusion.cli import quantize as quantize_cli
from rsfusion.deploy.quantize import INT8_KEY, cache_path, int8_source, read_int8
from rsfusion.errors import PredictionError
from tests.deploy.cases import tiny_checkpoint

pytest.importorskip("onnxruntime")
FAST = ["--calib-windows", "4", "--check-windows", "4"]


@pytest.fixture(autouse=True)
def fresh_messages(monkeypatch):
    """Each run's log lines go to this test's captured stderr."""
    monkeypatch.setattr(logging.getLogger("rsfusion"), "handlers", [])


@pytest.fixture
def ckpt(tiny, tmp_path):
    """The tiny checkpoint, copied alone (no int8 model beside it yet)."""
    path = tmp_path / "ck" / "last.ckpt"
    path.parent.mkdir()
    shutil.copy(tiny[0], path)
    return path


def _pair(root):
    return (
        root / "top" / "top_mosaic_09cm_area2.tif",
        root / "dsm" / "dsm_09cm_matching_area2.tif",
    )


def _predict(ckpt, root, out, *extra):
    rgb, x = _pair(root)
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(x), "--out", str(out), *extra]
    return predict_cli.main(args)


def _set_check(path, equal):
    """Rewrite the stored check's share of equal pixels (what ``auto`` reads)."""
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == INT8_KEY:
            facts = json.loads(prop.value)
            facts["check"]["equal"] = equal
            prop.value = json.dumps(facts)
    onnx.save(model, str(path))


def test_int8_predicts_on_the_input_grid(ckpt, vaihingen_root, tmp_path, capsys):
    assert quantize_cli.main(["--ckpt", str(ckpt), "--threshold", "0", *FAST]) == 0
    capsys.readouterr()
    assert _predict(ckpt, vaihingen_root, tmp_path / "int8", "--precision", "int8") == 0
    err = capsys.readouterr().err
    assert "ONNX Runtime" in err and "CPU int8" in err  # the log line names the precision
    rgb, _ = _pair(vaihingen_root)
    classes = tmp_path / "int8" / "top_mosaic_09cm_area2_classes.tif"
    with rasterio.open(rgb) as src, rasterio.open(classes) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.read(1).max() < 6
    assert _predict(ckpt, vaihingen_root, tmp_path / "fp32", "--precision", "fp32") == 0
    with rasterio.open(classes) as a, rasterio.open(tmp_path / "fp32" / classes.name) as b:
        assert float(np.mean(a.read(1) == b.read(1))) > 0.5  # the same model, quantised


def test_auto_picks_int8_only_where_it_passed_its_check(ckpt, vaihingen_root, tmp_path, capsys):
    assert _predict(ckpt, vaihingen_root, tmp_path / "none") == 0  # no int8 model: torch
    assert "int8" not in capsys.readouterr().err
    assert quantize_cli.main(["--ckpt", str(ckpt), "--threshold", "0", *FAST]) == 0
    int8 = cache_path(ckpt)
    _set_check(int8, 0.99)  # below the default threshold: auto keeps the checkpoint
    capsys.readouterr()
    assert _predict(ckpt, vaihingen_root, tmp_path / "failed") == 0
    assert "int8" not in capsys.readouterr().err
    _set_check(int8, 0.999)
    assert read_int8(int8)["check"]["equal"] == 0.999
    assert _predict(ckpt, vaihingen_root, tmp_path / "passed") == 0
    err = "".join(capsys.readouterr())  # the choice on stdout, the run's line on stderr
    assert f"--precision auto: the checked int8 model {int8}" in err and "CPU int8" in err
    tiny_checkpoint(ckpt.parent, vaihingen_root, seed=1)  # retrained: the int8 model is stale
    assert _predict(ckpt, vaihingen_root, tmp_path / "stale") == 0
    assert "CPU int8" not in capsys.readouterr().err


def test_int8_on_a_gpu_is_one_error_line(ckpt, vaihingen_root, tmp_path, capsys):
    with pytest.raises(PredictionError, match="--precision int8 --device cuda: int8 models run"):
        int8_source(ckpt, "int8", "cuda")  # refused before anything is quantised
    assert not cache_path(ckpt).exists()
    code = _predict(ckpt, vaihingen_root, tmp_path / "o", "--precision", "int8", "--device", "cuda")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not cache_path(ckpt).exists()
