"""The dual-stream engine: one frozen backbone shared by an RGB and an X stream, walked stage by
stage and block by block, calling the recipe's hooks at fixed points (ARCHITECTURE.md table):

    r = embed(rgb); s = recipe.embed_x(x)
    for each stage i:
        r, s = recipe.before_stage(i, r, s)
        for each block j: r, s = recipe.in_block(i, j, r, s)
        fused_i = recipe.after_stage(i, out_i(r), out_i(s))
        r, s = next_stage(r), next_stage(s)
    return recipe.decode(fused, rgb_maps, x_maps, size)

A method is a :class:`Recipe` (its trainable parts and hook bodies); the engine never changes.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from rsfusion.models.backbones.base import Backbone, StreamState


class Recipe(nn.Module, abc.ABC):
    """Trainable parts of a method and its hooks. Defaults: plain shared backbone, no fusion."""

    def embed_x(self, backbone: Backbone, x: Tensor) -> StreamState:
        """Embed the X stream (default: the backbone's own, shared embedding)."""
        return backbone.embed(x)

    def embed_x_copy(self, backbone: Backbone, x: Tensor, embedding: nn.Module) -> StreamState:
        """Embed X with the recipe's trainable copy of the RGB embedding (MoBaNet, KTB); a
        1-channel X (DSM, depth) is repeated to the copy's 3 input channels."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return backbone.embed(x, embedding)

    def before_stage(
        self, stage: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """Before a stage's blocks (MoBaNet CPIA / KTB MAPA prompts)."""
        return r, x

    def in_block(
        self, backbone: Backbone, stage: int, index: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """One block on both streams (adapters and cross prompts hook here)."""
        return backbone.run_block(stage, index, r), backbone.run_block(stage, index, x)

    def after_stage(self, stage: int, r: Tensor, x: Tensor) -> Tensor:
        """Fuse the stage's two maps (DGFM, DSCF, GPM, FRM/FFM)."""
        return r + x

    @abc.abstractmethod
    def decode(
        self, fused: list[Tensor], rgb: list[Tensor], x: list[Tensor], size: tuple[int, int]
    ) -> Tensor | dict[str, Any]:
        """Head(s) on the pyramids; logits (or {"out", "aux"}) at ``size``."""


class DualStreamEngine(nn.Module):
    """Walk a frozen backbone with two streams; the recipe holds everything trainable.

    Args:
        backbone: a :class:`Backbone` (frozen here, and kept in eval mode).
        recipe: the method's :class:`Recipe`.

    Attributes:
        fp32_stages: under autocast, the embeddings and this many first stages (hooks included)
            run in float32. The full-resolution stages see the inputs' whole dynamic range, and
            rounding there to bfloat16's 8-bit mantissa shifts decisions that rest on small
            elevation differences (tree vs low vegetation): :class:`ModelRunner` sets 1 for
            reduced-precision prediction (measured in benchmarks/predict_bench.py).
    """

    fp32_stages = 0

    def __init__(self, backbone: Backbone, recipe: Recipe) -> None:
        super().__init__()
        backbone.freeze()
        self.backbone = backbone
        self.recipe = recipe

    def _precision(self, stage: int, like: Tensor) -> contextlib.AbstractContextManager:
        """float32 for the embeddings (stage -1) and stages below ``fp32_stages``."""
        device = like.device.type
        if stage < self.fp32_stages and torch.is_autocast_enabled(device):
            return torch.autocast(device, enabled=False)
        return contextlib.nullcontext()

    #: the task may hand :meth:`forward` a per-sample ``token_drop`` (KTB's MMST on tokens)
    masks_tokens = True

    def forward(
        self, rgb: Tensor, x: Tensor | None = None, token_drop: tuple[Tensor, Tensor] | None = None
    ) -> Tensor | dict[str, Any]:
        """Logits (or ``{"out", "aux"}`` in training) for ``rgb`` and ``x`` (B, C, H, W).

        ``token_drop``: per-sample booleans (B,) for RGB and X; those samples' whole token maps
        are zeroed right after patch embedding (KTB's MMST, METHODS.md section 1).
        """
        if x is None:
            raise ValueError("the dual-stream engine needs the X input (image_x)")
        height, width = rgb.shape[-2:]
        with self._precision(-1, rgb):
            r = self.backbone.embed(rgb)
            s = self.recipe.embed_x(self.backbone, x)
        if token_drop is not None:
            r, s = _drop(r, token_drop[0]), _drop(s, token_drop[1])
        fused, rgb_maps, x_maps = [], [], []
        for i in range(len(self.backbone.stages)):
            with self._precision(i, rgb):
                r, s = self.recipe.before_stage(i, r, s)
                for j in range(len(self.backbone.blocks(i))):
                    r, s = self.recipe.in_block(self.backbone, i, j, r, s)
                fr = self.backbone.stage_output(i, r, "rgb")
                fs = self.backbone.stage_output(i, s, "x")
                fused.append(self.recipe.after_stage(i, fr, fs))
                rgb_maps.append(fr)
                x_maps.append(fs)
                r, s = self.backbone.next_stage(i, r), self.backbone.next_stage(i, s)
        padded = _padded_size(rgb, fused[0], self.backbone)
        out = self.recipe.decode(fused, rgb_maps, x_maps, padded)
        return _crop(out, height, width)


def build_engine(spec: Any, recipe: type[Recipe], method: str) -> DualStreamEngine:
    """A registered method's model: its backbone (``model.backbone``, weights loaded) and its
    recipe built from ``model.kwargs`` (minus ``backbone_kwargs``), on the engine.

    X inputs of 1 channel (DSM) or 3 (depth/thermal/... encoded to 3) fit the copied RGB patch
    embedding; others are refused.
    """
    from rsfusion.models.backbones.factory import build_backbone

    if spec.x_channels not in (1, 3):
        raise ValueError(f"{method} takes a 1- or 3-channel X input, got {spec.x_channels}")
    backbone = build_backbone(spec)
    options = {k: v for k, v in spec.kwargs.items() if k != "backbone_kwargs"}
    return DualStreamEngine(backbone, recipe(backbone, spec.num_classes, **options))


def _drop(state: StreamState, selected: Tensor) -> StreamState:
    """Zero the patch tokens (or the map) of the selected samples; prefix tokens stay."""
    if not bool(selected.any()):
        return state
    patches = state.patches()
    keep = ~selected.to(patches.device).view(-1, *([1] * (patches.ndim - 1)))
    return state.with_patches(patches * keep)


def _padded_size(rgb: Tensor, first: Tensor, backbone: Backbone) -> tuple[int, int]:
    reduction = backbone.stages[0].reduction
    return first.shape[-2] * reduction, first.shape[-1] * reduction


def _crop(out: Tensor | dict[str, Any], h: int, w: int) -> Tensor | dict[str, Any]:
    if isinstance(out, Tensor):
        return out[..., :h, :w]
    return {
        "out": out["out"][..., :h, :w],
        "aux": {k: v[..., :h, :w] for k, v in out.get("aux", {}).items()},
    }
