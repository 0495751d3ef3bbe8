"""The optimiser's kernels: fused AdamW on CUDA, multi-tensor (foreach) elsewhere; same values;
a loaded state keeps this run's choice; the ``model.compile`` switch of training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rsfusion.config import OptimConfig, load_config
from rsfusion.models.base import ModelSpec
from rsfusion.training.optim import build_optimizer, kernel_options
from rsfusion.training.task import SegmentationTask


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.LayerNorm(7), nn.Linear(7, 3))


def test_kernels_follow_the_device():
    cpu = [torch.zeros(3)]
    assert kernel_options("adamw", cpu) == {"foreach": True}
    assert kernel_options("sgd", cpu) == {"foreach": True}
    assert kernel_options("adamw", []) == {"foreach": True}
    if torch.cuda.is_available():
        assert kernel_options("adamw", [torch.zeros(3, device="cuda")]) == {"fused": True}
        assert kernel_options("adamw", [torch.zeros(3, device="cuda"), *cpu]) == {"foreach": True}


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_foreach_steps_equal_the_per_parameter_loop(name):
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.05)
    fast_net, slow_net = _net(), _net()
    fast = build_optimizer(fast_net, cfg)
    assert all(g["foreach"] for g in fast.param_groups)
    slow_params = dict(slow_net.named_parameters())
    groups = [
        dict(g, params=[slow_params[n] for n in _names(fast_net, g)], foreach=False)
        for g in fast.param_groups
    ]
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    extra = {"momentum": cfg.momentum} if name == "sgd" else {}
    slow = cls(groups, lr=cfg.lr, **extra)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(4, 5, generator=g)
        for net, opt in ((fast_net, fast), (slow_net, slow)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(fast_net.parameters(), slow_net.parameters()):
        assert torch.equal(a, b)  # bit for bit: the same demo training results


def _names(net: nn.Module, group: dict) -> list[str]:
    ids = {id(p): n for n, p in net.named_parameters()}
    return [ids[id(p)] for p in group["params"]]


def test_a_loaded_state_keeps_this_runs_kernels():
    net = _net()
    opt = build_optimizer(net, OptimConfig())
    net(torch.randn(2, 5)).sum().backward()
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    for group in state["param_groups"]:  # as saved by a run on a GPU
        group.update(fused=True, foreach=None)
    opt.load_state_dict(state)
    assert all(g["foreach"] and not g["fused"] for g in opt.param_groups)
    opt.step()  # a fused CPU-incompatible choice would fail here on a CUDA-less run


def _task(compile_: bool) -> SegmentationTask:
    cfg = load_config("demo_baseline", [f"model.compile={str(compile_).lower()}"])
    spec = ModelSpec("early_fusion", 3, 3, 1, arch="Unet", backbone="resnet18")
    meta = {"config": {"model": {"compile": cfg.model.compile}}}
    return SegmentationTask(model=spec.__dict__, optim={}, ignore_index=255,
                            metric_classes=[0, 1, 2], class_names=["a", "b", "c"], meta=meta)  # fmt: skip


def test_compile_switch_compiles_training_only_and_keeps_checkpoint_keys():
    assert load_config("demo_baseline").model.compile is False  # off by default
    task = _task(True)
    keys = list(task.state_dict())
    task.setup("validate")
    assert task.model._compiled_call_impl is None  # evaluation stays eager
    task.setup("fit")
    assert task.model._compiled_call_impl is not None  # nn.Module.compile: in place
    assert list(task.state_dict()) == keys
    off = _task(False)
    off.setup("fit")
    assert off.model._compiled_call_impl is None
