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


def test_warmup_ratio_starts_from_a_fraction_of_the_lr():
    f = lr_lambda(OptimConfig(lr=1e-3, warmup_steps=10, warmup_ratio=0.1), total_steps=100)
    assert f(0) == pytest.approx(0.1 + 0.9 * 0.1) and f(9) == pytest.approx(1.0)
    assert all(a < b for a, b in zip([f(s) for s in range(10)], [f(s) for s in range(1, 10)]))


def test_layer_decay_scales_lr_by_depth_for_vit_and_staged_backbones():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=4)
    groups = param_groups(vit, 0.05, lr=1.0, layer_decay=0.5)
    scale = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert scale[id(vit.patch_embed.proj.weight)] == pytest.approx(0.5**5)  # L + 1 - 0
    assert scale[id(vit.blocks[0].attn.qkv.weight)] == pytest.approx(0.5**4)
    assert scale[id(vit.blocks[3].mlp.fc2.weight)] == pytest.approx(0.5**1)
    assert scale[id(vit.head.weight)] == pytest.approx(1.0)
    from rsfusion.training.optim import layer_ids

    names = ["layers.0.blocks.0.w", "layers.0.blocks.1.w", "layers.1.blocks.0.w", "head.w"]
    ids, total = layer_ids(names)
    assert total == 3 and [ids[n] for n in names] == [1, 2, 3, 4]


def test_without_layer_decay_all_groups_share_the_base_lr():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert {g["lr"] for g in param_groups(model, 0.01, lr=0.3)} == {0.3}
