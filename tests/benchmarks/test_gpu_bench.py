"""benchmarks/gpu_bench.py imports and prints every row of its table at the smallest sizes."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
gpu_bench = pytest.importorskip("gpu_bench")

ROWS = (
    "predict e2e / model only, U-Net-R18, 96^2, fp32, batch 2, blended on the device",
    "predict e2e / model only, U-Net-R18, 96^2, fp32, batch 2, blended on the host",
    "predict model only / bare forward, MoBaNet",
    "bf16 vs fp32 equal pixels",
    "bf16 vs fp32 equal pixels, fp32 stages 1",
    "bf16 vs fp32 equal pixels, fp32 stages 0",
    "training loop / bare step, MoBaNet",
    "fit on pre-made batches",
    "data path ratio, torchgeo path, 0 workers",
    "data path ratio, in memory, 0 workers",
    "MFU, KTB",
    "MFU, KTB",  # compiled: n/a on a CPU
    "MFU, MoBaNet",
)


def test_every_row_is_printed_on_a_cpu(tmp_path, monkeypatch, capsys):
    tiny = dataclasses.replace(
        gpu_bench.SMALL, unet_raster=96, vit_raster=64, window=32, overlap=8, predict_batch=2,
        train_steps=2, repeats=1, ktb_px=32, train_px=28,
    )  # fmt: skip
    monkeypatch.setattr(gpu_bench, "SMALL", tiny)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_bench.main(["--work", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "measure" not in line]
    assert len(table) == len(ROWS)
    for line, name in zip(table, ROWS):
        assert line.startswith(f"| {name}"), line
        value = line.split("|")[2].strip()
        assert value  # a ratio, a share, or n/a
    assert "n/a" in table[-1] and "GFLOP/step" in table[-1]  # MFU: no bf16 peak for a CPU
    assert "small sizes" in out


def test_peaks_by_device_name():
    names = dict(gpu_bench.BF16_PEAKS)
    assert names["H200"] == names["H100"] > names["H100 PCIe"] > names["A100"]
    assert gpu_bench.bf16_peak(torch.device("cpu")) is None
