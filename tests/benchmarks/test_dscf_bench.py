"""benchmarks/dscf_bench.py counts DSCF's operators and times both implementations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
dscf_bench = pytest.importorskip("dscf_bench")


def test_every_stage_row_is_printed(capsys):
    assert dscf_bench.main(["--small", "--repeats", "1", "--batch", "1"]) == 0
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| stage ") and ":" in line
    ]
    assert len(rows) == 4
    for row in rows:
        reference, fused = (int(v) for v in row.split("|")[2].split("/"))
        assert 50 < fused <= reference  # the fused step runs no more operators
        assert "ms (" in row


def test_views_are_not_counted_as_kernels():
    import torch
    from torch.profiler import profile

    t = torch.randn(4, 8)
    with profile() as prof:
        t.view(8, 4).permute(1, 0).unsqueeze(0)
    assert dscf_bench.kernel_ops(prof.events()) == 0
    with profile() as prof:
        (t * 2).sum()
    assert dscf_bench.kernel_ops(prof.events()) >= 2
