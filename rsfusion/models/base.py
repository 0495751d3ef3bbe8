"""What every registered model is built from, and the one factory that builds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rsfusion.registry import get_model_builder


@dataclass(frozen=True)
class ModelSpec:
    """Inputs a model builder receives: the config's model section plus data facts.

    Models take ``forward(rgb, x)`` (``x`` may be None) and return logits (B, K, H, W), or a
    dict with ``"out"`` (the logits) and optional ``"aux"`` {name: logits}.
    """

    name: str
    num_classes: int
    rgb_channels: int
    x_channels: int
    arch: str = "Unet"
    backbone: str = "resnet18"
    weights: str | None = None
    weights_required: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the registered model ``spec.name``."""
    return get_model_builder(spec.name)(spec)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; a tensor shared by several modules counts once."""
    params = list(model.parameters())  # nn.Module.parameters() yields each tensor once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return total, trainable
