"""benchmarks/writer_bench.py at tiny sizes: every configuration is written, read back and
printed as a row, to_cog too, and its content looks like a prediction's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import writer_bench  # noqa: E402


def test_every_configuration_is_printed(tmp_path, capsys):
    work = tmp_path / "work"
    args = ["--size", "128", "--rows", "32", "--repeats", "2", "--compress", "none", "deflate:1",
            "zstd:3", "lzw", "--predictor", "1", "2", "--threads", "1", "ALL_CPUS", "--tiles",
            "16", "32", "--cog", "--work", str(work)]  # fmt: skip
    assert writer_bench.main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    writes = [r for r in rows if r.count("|") == 11 and not r.startswith("| compress")]
    cogs = [r for r in rows if r.count("|") == 6 and not r.startswith("| to_cog")]
    # none once per thread count and tile (no predictor), the others 2 x 2 x 2
    assert len(writes) == 4 + 3 * 8 and len(cogs) == 4 * 2
    assert any(r.startswith("| zstd 3 | 2 | ALL_CPUS | 32 |") for r in writes)
    assert any(r.startswith("| deflate 1 | ALL_CPUS |") for r in cogs)
    for row in writes + cogs:  # MPix/s best and median (and reading), MB
        cells = row.split("|")
        numbers = [cells[i] for i in ((5, 6, 8, 10) if row in writes else (3, 4, 5))]
        assert all(float(c) > 0 for c in numbers)
    none = next(r for r in writes if r.startswith("| none | 1 | 1 | 16 |"))
    deflate = next(r for r in writes if r.startswith("| deflate 1 | 2 | 1 | 16 |"))
    total = [float(r.split("|")[8]) for r in (none, deflate)]
    assert total[0] > total[1] > 0  # sizes measured: compression makes files smaller
    assert "GDAL " in out and "content: class shares" in out
    assert list(work.iterdir()) == []  # every written file removed


def test_the_content_is_a_prediction():
    bands = writer_bench.scene(256, 6, 64, seed=1)
    assert len(bands) == 4
    classes = np.concatenate([b["classes"][0] for b in bands])
    probs = np.concatenate([b["probs"] for b in bands], axis=1).astype(int)
    confidence = np.concatenate([b["confidence"][0] for b in bands]).astype(int)
    valid = classes != 255
    assert 0 < (~valid).mean() < 0.05  # a corner without data, 0 in the other outputs
    assert (probs[:, ~valid] == 0).all() and (confidence[~valid] == 0).all()
    assert (abs(probs.sum(0)[valid] - 255) <= 3).all()
    assert (probs.argmax(0)[valid] == classes[valid]).mean() > 0.99
    assert (abs(probs.max(0) - confidence) <= 1).all()
    assert len(np.unique(classes[valid])) >= 4  # several classes ...
    changes = np.count_nonzero(np.diff(classes.astype(int), axis=1)) / classes.size
    assert changes < 0.1  # ... in coherent regions, not noise (uniform noise: ~0.8)
    assert 0.7 < confidence[valid].mean() / 255 < 0.99  # confident, not certain everywhere
