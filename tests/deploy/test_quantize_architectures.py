"""Every registered architecture quantises to int8 (or is refused with a reason): exported at
test sizes, quantised by ONNX Runtime with calibration windows drawn like the models' inputs,
run, and compared with float32. The figures printed are random-weight ones: they show that
each graph's attention, normalisation and sampling survive quantisation, not the accuracy of a
trained model (benchmarks/int8_bench.py measures that on the demo checkpoints)."""

from __future__ import annotations

import onnx
import pytest
import torch

from rsfusion.deploy.calibration import Windows
from rsfusion.deploy.onnx import OnnxModel, export_onnx
from rsfusion.deploy.quantize import QuantSettings, quantize_onnx
from tests.deploy.cases import CASES, SLOW, build, inputs


def _windows(case: str, seed: int, n: int = 4) -> Windows:
    spec, window = CASES[case]
    rgb, x = inputs(spec, n, window, seed=seed)
    return Windows(rgb.numpy(), x.numpy() if spec.x_channels else None)


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_every_architecture_quantises_and_runs(case, tmp_path, record_property, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # ONNX Runtime's tools write temporary files into the working folder
    model, meta = build(case)
    spec, window = CASES[case]
    fp32 = export_onnx(model, meta, tmp_path / f"{case}.onnx").path
    settings = QuantSettings(threshold=0.0, calib_windows=4, check_windows=4)
    result = quantize_onnx(
        fp32, tmp_path / f"{case}.int8.onnx", _windows(case, 1), _windows(case, 2), settings
    )
    graph = onnx.load(str(result.path), load_external_data=False).graph
    kinds = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds  # really quantised
    int8 = OnnxModel(result.path, threads=1)
    assert int8.precision == "int8"
    rgb, x = inputs(spec, 2, window, seed=3)
    got = int8(rgb, x if spec.x_channels else None)
    assert got.shape == (2, spec.num_classes, window, window)
    assert torch.isfinite(got).all()
    equal = result.agreement.equal
    record_property("int8_equal_random_weights", equal)
    print(f"{case}: int8 keeps {100 * equal:.1f} % of float32 classes (random weights)")
    assert 0.0 <= equal <= 1.0 and result.agreement.pixels == 4 * window * window
    assert list(cwd.iterdir()) == []  # nothing left in the working folder
