"""Optimiser and per-iteration learning-rate schedule from the config's ``optim`` section."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from rsfusion.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only; no weight decay on biases and other 1-D parameters."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Factor on the base LR at each step: linear warmup, then poly or cosine to min_lr."""
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "none":
            return 1.0
        span = max(total_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        if cfg.scheduler == "poly":
            return floor + (1 - floor) * (1 - progress) ** cfg.power
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
