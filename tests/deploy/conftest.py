"""The ``slow`` marker: the longest exports, still run by default (``-m "not slow"`` skips them);
the tiny checkpoint quantised once for the int8 tests."""

from __future__ import annotations

import pytest

#: few windows: the fake tiles are 40 x 48 px (two 32 px windows each, half a window apart)
FAST = {"calib_windows": 4, "check_windows": 4}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: among the slowest tests (seconds each); run by default"
    )


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, vaihingen_root):
    """The tiny checkpoint (:func:`~tests.deploy.cases.tiny_checkpoint`), its int8 model
    (threshold 0) and its float32 export."""
    from rsfusion.deploy.onnx import export_onnx
    from rsfusion.deploy.quantize import QuantSettings, quantize
    from tests.deploy.cases import tiny_checkpoint

    folder = tmp_path_factory.mktemp("tiny")
    ckpt, model, meta = tiny_checkpoint(folder, vaihingen_root)
    result = quantize(ckpt, settings=QuantSettings(threshold=0.0, **FAST))
    exported = folder / "model.onnx"
    export_onnx(model, meta, exported)
    return ckpt, model, meta, exported, result
