"""Optimiser and per-iteration learning-rate schedule from the config's ``optim`` section."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from rsfusion.config import OptimConfig
from rsfusion.models.engine import DualStreamEngine

_STAGED = re.compile(r"(?:^|\.)(?:layers|stages|levels)\.(\d+)\.(?:blocks|layers)\.(\d+)\.")
_FLAT = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = re.compile(r"(?:^|\.)(?:patch_embed|pos_embed|cls_token|reg_token|stem|mask_token)")


def layer_ids(names: Iterable[str]) -> tuple[dict[str, int], int]:
    """Depth of every parameter for layer-wise LR decay, and the number of layers.

    Backbone blocks are numbered 1..L in forward order (``blocks.i`` for ViTs, and
    ``layers|stages|levels.s.blocks|layers.b`` counted across stages for Swin / InternImage);
    embeddings get 0; everything else (necks, heads, adapters outside blocks) gets L + 1.
    """
    names = list(names)
    depths: dict[int, int] = {}
    for name in names:
        if m := _STAGED.search(name):
            stage, block = int(m.group(1)), int(m.group(2))
            depths[stage] = max(depths.get(stage, 0), block + 1)
    offsets, total = {}, 0
    for stage in sorted(depths):
        offsets[stage] = total
        total += depths[stage]
    flat = [int(m.group(1)) for n in names if (m := _FLAT.search(n)) and not _STAGED.search(n)]
    total = max(total, max(flat, default=-1) + 1)
    ids = {}
    for name in names:
        if m := _STAGED.search(name):
            ids[name] = offsets[int(m.group(1))] + int(m.group(2)) + 1
        elif m := _FLAT.search(name):
            ids[name] = int(m.group(1)) + 1
        elif _EMBED.search(name):
            ids[name] = 0
        else:
            ids[name] = total + 1
    return ids, total


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float = 1.0,
    layer_decay: float | None = None,
    backbone_lr: float | None = None,
) -> list[dict]:
    """Trainable parameters only, grouped by (weight decay, base LR, LR scale).

    No weight decay on biases and other 1-D parameters. With ``layer_decay`` (CPAL: .95) a
    parameter at depth ``i`` of ``L`` gets ``lr * layer_decay ** (L + 1 - i)``; depths come
    from the engine for dual-stream models (recipe parts at their stage's or block's depth,
    :meth:`DualStreamEngine.parameter_depths`), else from the parameter names
    (:func:`layer_ids`). ``backbone_lr`` replaces ``lr`` for a trainable backbone's parameters.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ids: dict[str, int] = {}
    total = 0
    if layer_decay:
        if isinstance(model, DualStreamEngine):
            ids, total = model.parameter_depths()
        else:
            ids, total = layer_ids(n for n, _ in named)
    groups: dict[tuple[float, float, float], list[nn.Parameter]] = {}
    for name, p in named:
        decay = 0.0 if p.ndim <= 1 else weight_decay
        scale = layer_decay ** (total + 1 - ids[name]) if layer_decay else 1.0
        base = lr
        if backbone_lr is not None and isinstance(model, DualStreamEngine):
            base = backbone_lr if name.startswith("backbone.") else lr
        groups.setdefault((decay, base, scale), []).append(p)
    return [
        {"params": ps, "weight_decay": wd, "lr": base * scale, "lr_scale": scale}
        for (wd, base, scale), ps in sorted(
            groups.items(), key=lambda kv: (-kv[0][0], -kv[0][1], -kv[0][2])
        )
    ]


def kernel_options(name: str, params: Iterable[Tensor]) -> dict[str, bool]:
    """How the optimiser updates its parameters: AdamW's fused kernel when every parameter is a
    floating-point CUDA tensor, else the multi-tensor (``foreach``) kernels, which give the same
    values as the per-parameter loop (one kernel per step for all parameters, not one each).

    Example:
        >>> kernel_options("adamw", [torch.zeros(2)]), kernel_options("sgd", [torch.zeros(2)])
        ({'foreach': True}, {'foreach': True})
    """
    params = list(params)
    cuda = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    if name == "adamw" and cuda:
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The config's optimiser on ``model``'s trainable parameters (:func:`param_groups`), with
    the fastest kernels their device has (:func:`kernel_options`); a state loaded later (resume)
    keeps those kernels, so a run saved on a GPU resumes on a CPU and the other way round."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_decay, cfg.backbone_lr)
    options = kernel_options(cfg.name, (p for g in groups for p in g["params"]))
    optimizer: torch.optim.Optimizer
    if cfg.name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, **options)
    else:
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **options)

    def keep_kernels(opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:  # a loaded state brings the saving run's choice
            group.update({"foreach": None, "fused": None} | options)

    optimizer.register_load_state_dict_post_hook(keep_kernels)
    return optimizer


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Factor on the base LR at each step: linear warmup from ``warmup_ratio`` (mmseg's
    ``warmup_ratio``: KTB starts at 0.1 x lr) to 1, then poly or cosine to min_lr."""
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    start = cfg.warmup_ratio

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return start + (1 - start) * (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "none":
            return 1.0
        span = max(total_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        if cfg.scheduler == "poly":
            return floor + (1 - floor) * (1 - progress) ** cfg.power
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
