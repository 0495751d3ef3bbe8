"""What a checkpoint says about its model, at the models level (training writes it, inference
and evaluation read it; neither imports the other)."""

from __future__ import annotations

from torch import nn

__all__ = ["frozen_digest"]


def frozen_digest(model: nn.Module) -> str | None:
    """SHA-256 over the frozen parameters (name, shape, dtype, bytes); None when none is frozen.

    Checkpoints leave the frozen backbone out and keep this hash; prediction and evaluation
    refuse a checkpoint whose hash differs from the backbone they build.
    """
    from rsfusion.models.backbones.weights import tensors_digest

    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    return tensors_digest(frozen) if frozen else None
