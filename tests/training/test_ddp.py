"""Two CPU processes with Lightning's DDP strategy (gloo) end with identical weights."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ddp_two_cpu_ranks_agree(tmp_path, vaihingen_root):
    cmd = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "--cfg", "demo_baseline",
        "--out", str(tmp_path / "run"), "--set", f"data.root={vaihingen_root}",
        "data.window=32", "data.batch_size=2", "data.samples_per_epoch=8",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "trainer.max_steps=3",
        "trainer.limit_val_batches=1", "trainer.strategy=ddp", "trainer.devices=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d) weights sha256=([0-9a-f]{64})", proc.stdout))
    assert set(digests) == {"0", "1"}, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert digests["0"] == digests["1"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not list((tmp_path / "run").rglob("*.partial"))
