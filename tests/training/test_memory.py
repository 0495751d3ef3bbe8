"""The pre-training memory check: arithmetic, budgets (MemAvailable, cgroups), measurement."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rsfusion.config import load_config
from rsfusion.training import memory
from rsfusion.training.memory import (
    Budget,
    GiB,
    MemoryCheck,
    MiB,
    PeakUnavailable,
    StepMemory,
    cgroup_budget,
    cpu_budget,
    measure,
    optimiser_bytes,
    train_size,
)


def _check(batch=24, at1=300, at2=500, optimiser=0, budget=1000, processes=1) -> MemoryCheck:
    step = StepMemory(at1 * MiB, None if at2 is None else at2 * MiB, 1.5)
    return MemoryCheck(batch, step, optimiser * MiB, Budget(budget * MiB, "test"), "cpu",
                       processes)  # fmt: skip


def test_linear_extrapolation_and_the_largest_batch_that_fits():
    check = _check(batch=24, at1=300, at2=500, optimiser=50, budget=2000)
    assert check.step.per_sample == 200 * MiB and check.step.fixed == 100 * MiB
    assert check.need(24) == (100 + 24 * 200 + 50) * MiB and not check.fits
    best = check.largest_batch()
    assert check.need(best) <= check.usable < check.need(best + 1)
    assert best == 8  # usable 1800 MiB: 100 + 8 * 200 + 50 = 1750
    two = _check(batch=24, at1=300, at2=500, optimiser=50, budget=2000, processes=2)
    assert two.need(1) == 2 * check.need(1) and two.largest_batch() == 3


def test_batch_one_alone_is_an_upper_bound():
    check = _check(batch=4, at1=100, at2=None, budget=1000)
    assert check.step.per_sample == 100 * MiB and check.step.fixed == 0
    assert check.fits and "needs at most 400 MiB" in check.summary()


def test_refusal_names_numbers_batch_size_and_accumulation():
    text = _check(batch=24, at1=300, at2=500, budget=2000).refusal("256x256 px (data.window)")
    assert "data.batch_size=24 at 256x256 px (data.window) on cpu needs about 4.79 GiB" in text
    assert "300 MiB at batch 1" in text and "200 MiB per sample" in text
    assert "--set data.batch_size=8 (about 1.66 GiB)" in text
    # 24 = 3 x 8: the same effective batch
    assert "data.batch_size=8 trainer.accumulate_grad_batches=3 for the same 24" in text
    assert "--no-memory-check" in text
    odd = _check(batch=10, at1=300, at2=500, budget=900).refusal("32x32 px (data.window)")
    assert "--set data.batch_size=3" in odd  # usable 810: 100 + 3 * 200
    assert "data.batch_size=3 trainer.accumulate_grad_batches=4 for 12 >= 10 samples" in odd
    kept = _check(batch=10, at1=300, at2=500, budget=900).refusal("32x32 px (data.window)", 2)
    assert "trainer.accumulate_grad_batches=8" in kept  # multiplies the configured one


def test_refusal_when_not_even_one_sample_fits():
    text = _check(batch=8, at1=900, at2=1700, budget=500).refusal("480x640 px (data.crop)")
    assert "even data.batch_size=1 needs about 900 MiB" in text
    assert "smaller inputs (data.crop;" in text and "accumulate" not in text


def test_optimiser_state_counts_trainable_weights_only():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    model[0].requires_grad_(False)
    assert optimiser_bytes(model, "adamw", 0.9) == 2 * 110 * 4
    assert optimiser_bytes(model, "sgd", 0.9) == 110 * 4
    assert optimiser_bytes(model, "sgd", 0.0) == 0


# ---------------------------------------------------------------- budgets
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_limit_of_the_process_and_its_parents(tmp_path):
    mount = tmp_path / "cg"
    _write(tmp_path / "cgroup", "4:memory:/jobs/a\n3:cpu:/\n")
    mine = mount / "memory" / "jobs" / "a"
    _write(mine / "memory.limit_in_bytes", str(8 * GiB))
    _write(mine / "memory.usage_in_bytes", str(3 * GiB))
    _write(mine / "memory.stat", f"cache 5\ntotal_inactive_file {GiB}\n")
    _write(mount / "memory" / "jobs" / "memory.limit_in_bytes", str(20 * GiB))
    _write(mount / "memory" / "jobs" / "memory.usage_in_bytes", str(4 * GiB))
    _write(mount / "memory" / "memory.limit_in_bytes", "9223372036854771712")  # no limit
    _write(mount / "memory" / "memory.usage_in_bytes", str(GiB))
    budget = cgroup_budget(mount, tmp_path / "cgroup")
    assert budget is not None and budget.bytes == 6 * GiB and "cgroup" in budget.source
    _write(mount / "memory" / "jobs" / "memory.usage_in_bytes", str(17 * GiB))
    assert cgroup_budget(mount, tmp_path / "cgroup").bytes == 3 * GiB  # the parent is tighter


def test_cgroup_v2_max_means_no_limit(tmp_path):
    mount = tmp_path / "cg"
    _write(tmp_path / "cgroup", "0::/user.slice/job\n")
    job = mount / "user.slice" / "job"
    _write(job / "memory.max", "max\n")
    _write(job / "memory.current", str(GiB))
    assert cgroup_budget(mount, tmp_path / "cgroup") is None
    _write(job / "memory.max", str(4 * GiB))
    _write(job / "memory.stat", f"anon 1\ninactive_file {GiB // 2}\n")
    assert cgroup_budget(mount, tmp_path / "cgroup").bytes == 3 * GiB + GiB // 2
    assert cgroup_budget(mount, tmp_path / "missing") is None


def test_cpu_budget_is_the_smaller_of_memavailable_and_the_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    _write(meminfo, f"MemTotal: 100 kB\nMemAvailable:   {5 * 1024 * 1024} kB\n")
    _write(tmp_path / "cgroup", "0::/\n")
    mount = tmp_path / "cg"
    assert cpu_budget(meminfo, mount, tmp_path / "cgroup") == Budget(5 * GiB, "MemAvailable")
    _write(mount / "memory.max", str(3 * GiB))
    _write(mount / "memory.current", str(GiB))
    assert cpu_budget(meminfo, mount, tmp_path / "cgroup").bytes == 2 * GiB
    assert cpu_budget(tmp_path / "none", tmp_path / "none", tmp_path / "none") is None


# ---------------------------------------------------------------- measuring
def _peak_or_skip() -> None:
    try:
        with memory.cpu_peak():
            pass
    except PeakUnavailable as err:
        pytest.skip(f"no peak memory counter here: {err}")


def test_cpu_peak_sees_a_block_that_is_freed_again():
    _peak_or_skip()
    with memory.cpu_peak() as peak:
        block = torch.ones(64 * MiB // 4)  # 64 MiB, written
        del block
    assert peak[0] >= 60 * MiB
    with memory.cpu_peak() as quiet:
        pass
    assert quiet[0] < 16 * MiB


class Net(nn.Module):
    """Convolutions with batch norm and dropout: tens of MiB of activations per 192 px sample
    (well above the allocator's noise of a few MiB)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Dropout(0.5),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 2, 1),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)


def _step(net: nn.Module, size: int = 192):
    def step(n: int) -> torch.Tensor:
        x = torch.randn(n, 3, size, size)
        return nn.functional.cross_entropy(net(x), torch.randint(0, 2, (n, size, size)))

    return step


def test_measure_extrapolates_from_batch_one_and_two_and_leaves_the_model_as_it_was(
    monkeypatch,
):
    _peak_or_skip()
    net = Net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    monkeypatch.setattr(memory, "available_memory", lambda device: Budget(MiB, "tiny"))
    warmup = _step(net, 32)
    step, budget = measure(
        _step(net), net, torch.device("cpu"), lambda s, b: False, lambda: warmup(1)
    )
    assert budget == Budget(MiB, "tiny")
    assert step.at2 is not None and step.at2 > step.at1 > 0
    assert 15 * MiB < step.per_sample < 300 * MiB
    # RNG states, buffers (batch-norm statistics), modes and gradients are as before
    assert (torch.rand(1), random.random(), np.random.rand()) == expected
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not any(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_measure_stops_after_batch_one_when_its_upper_bound_fits(monkeypatch):
    _peak_or_skip()
    net = Net().train()
    monkeypatch.setattr(memory, "available_memory", lambda device: Budget(100 * GiB, "huge"))
    step, _ = measure(_step(net), net, torch.device("cpu"), lambda s, b: s.at(8) < b.bytes)
    assert step.at2 is None and step.at1 > 0
    assert all(m.training for m in net.modules())


def test_training_sizes_of_configs():
    cfg = load_config("demo_baseline", [])
    assert train_size(cfg.data) == ((128, 128), "data.window")
    nyu = load_config("nyudepthv2_baseline", ["data.crop=[100,130]", "data.pad_multiple=32"])
    assert train_size(nyu.data) == ((128, 160), "data.crop")


def test_the_check_refuses_with_the_numbers(monkeypatch):
    """check_training_memory on a built task: a tiny budget raises the one-line refusal."""
    from rsfusion.cli.train import build_task
    from rsfusion.errors import ConfigError

    _peak_or_skip()
    root = Path(__file__).resolve().parents[1] / "data" / "vaihingen"
    cfg = load_config(
        "demo_baseline",
        [f"data.root={root}", "data.window=32", "data.batch_size=4", "data.train_tiles=[1,3]"],
    )
    dm, task = build_task(cfg)

    class Trainer:  # what the check reads of a lightning.Trainer
        strategy = type("S", (), {"root_device": torch.device("cpu")})()
        precision = "32-true"
        num_devices = 1

    lines: list[str] = []
    monkeypatch.setattr(memory, "available_memory", lambda device: Budget(100 * GiB, "big"))
    check = memory.check_training_memory(cfg, task, dm, Trainer(), lines.append)
    assert check is not None and check.fits and check.step.at2 is None
    assert lines[-1].startswith("memory check: a training step at batch 4 needs at most")
    monkeypatch.setattr(memory, "available_memory", lambda device: Budget(MiB, "tiny"))
    with pytest.raises(ConfigError) as info:
        memory.check_training_memory(cfg, task, dm, Trainer(), lines.append)
    text = str(info.value)
    assert re.search(r"data\.batch_size=4 at 32x32 px \(data\.window\) on cpu needs about", text)
    assert "even data.batch_size=1 needs" in text and "1 MiB is available (tiny)" in text
