"""rsfusion.allocator: freed memory is kept, so repeated large tensors fault no new pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rsfusion.allocator import keep_freed_memory

# a fresh interpreter per case: malloc settings last for the life of a process
_SCRIPT = """
import resource, sys
import torch
from rsfusion.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
# one thread: a block above 64 MiB that an OpenMP worker allocates comes from that thread's
# arena, whose heaps glibc caps at 64 MiB, so it is mapped afresh whatever the settings
torch.set_num_threads(1)
conv = torch.nn.Conv2d(16, 16, 3, padding=1)
x = torch.randn(4, 16, 512, 512)  # 64 MiB maps: above glibc's largest dynamic mmap threshold
def forward():
    with torch.inference_mode():
        conv(torch.relu(conv(x))).sum()
forward()
forward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    forward()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_PAGES = 4 * 3 * (1 << 26) // os.sysconf("SC_PAGE_SIZE")  # 4 forwards, three 64 MiB maps each


def _faults(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True,
        env={**clean, **env},
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_kept_memory_serves_the_next_forward_without_page_faults():
    # the fewest of up to three runs: the kernel's own memory work (reclaim, huge-page
    # collapsing) under other load can fault a run's kept pages again (seen once in CI: 16382)
    runs = []
    while len(runs) < 3 and (not runs or min(f for _, f in runs) >= _PAGES // 20):
        runs.append(_faults("keep"))
    kept, faults = min(runs, key=lambda run: run[1])
    assert kept == "True"
    assert faults < _PAGES // 20, runs
    default, default_faults = _faults("default")
    assert default_faults > _PAGES // 2  # glibc's default: each map is a fresh mapping


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_a_users_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
    kept, _ = _faults("keep", MALLOC_MMAP_THRESHOLD_="131072")
    assert kept == "False"
