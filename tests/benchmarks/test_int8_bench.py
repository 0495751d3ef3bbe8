"""benchmarks/int8_bench.py runs its model-only section at tiny sizes: every path timed and
compared with torch fp32 (the smoke test of the README's int8 figures)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import int8_bench  # noqa: E402


def test_every_path_is_timed_and_compared(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        args = ["--random", "early_fusion", "--window", "32", "--batch", "2", "--repeats", "1",
                "--windows", "4", "--threads", "1", "--work", str(tmp_path)]  # fmt: skip
        assert int8_bench.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(int8_bench.PATHS) <= set(rows)
    assert rows["torch fp32"].rstrip(" |").endswith("100.00 %")  # the reference itself
    assert (tmp_path / "random.int8.onnx").is_file() and "random windows" in out
