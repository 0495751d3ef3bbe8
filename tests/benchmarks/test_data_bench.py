"""benchmarks/data_bench.py runs at tiny sizes on a CPU and prints every row of its table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
data_bench = pytest.importorskip("data_bench")

ROWS = (
    "train loader, torchgeo path, 0 workers",
    "train loader, in memory, 0 workers",
    "train loader, in memory / torchgeo path, 0 workers",
    "fit on pre-made batches",
    "data path ratio, torchgeo path, 0 workers",
    "data path ratio, in memory, 0 workers",
)


def test_every_row_is_printed_on_a_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--tile", "48", "--window", "16", "--batch", "2", "--batches", "2", "--steps", "2",
            "--workers", "0", "--repeats", "1", "--threads", "1",
            "--work", str(tmp_path / "work")]  # fmt: skip
    threads = torch.get_num_threads()
    assert data_bench.main(argv) == 0
    assert torch.get_num_threads() == threads  # put back
    out = capsys.readouterr().out
    assert "command: python benchmarks/data_bench.py --tile 48" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "measure" not in line]
    assert len(table) == len(ROWS)
    for line, name in zip(table, ROWS):
        assert line.startswith(f"| {name} "), line
        value = line.split("|")[2].strip().rstrip("x")
        assert float(value) > 0, line
    assert "(reads 0.1 MiB)" in table[1] and "samples/s" in table[0]  # 4 x 48^2 x 8 bytes
