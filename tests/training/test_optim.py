"""Optimiser groups and the warmup + poly / cosine schedule."""

import pytest
import torch
from torch import nn

from rsfusion.config import OptimConfig
from rsfusion.training.optim import build_optimizer, lr_lambda, param_groups


def test_only_trainable_reach_optimiser_and_no_decay_on_1d():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, 0.05)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(model[0].weight)}
    assert id(model[2].weight) not in decay | no_decay
    assert id(model[0].bias) in no_decay and id(model[1].weight) in no_decay
    assert groups[1]["weight_decay"] == 0.0
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, weight_decay=0.05))
    assert isinstance(opt, torch.optim.SGD)


@pytest.mark.parametrize("scheduler", ["poly", "cosine"])
def test_schedule_warms_up_then_decays_to_min_lr(scheduler):
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, scheduler=scheduler, min_lr=1e-5)
    f = lr_lambda(cfg, total_steps=110)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1e-5 / 1e-3)
