"""The small protocol every frozen backbone implements so the dual-stream engine can walk it.

A backbone is an embedding followed by stages of blocks. The engine owns the walk (both
streams, hooks at fixed points); the backbone only says how to embed, run one block, leave a
stage (output norm, tokens -> map) and enter the next (downsampling). ARCHITECTURE.md.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class StageInfo:
    """One stage: output channels, reduction (stride) w.r.t. the input, number of blocks."""

    channels: int
    reduction: int
    depth: int


@dataclass
class StreamState:
    """What flows through a stream: tokens (B, N, C) on an (h, w) grid, or a map (B, C, H, W).

    ``prefix`` counts leading non-patch tokens (class / register tokens) in token layout.
    """

    data: Tensor
    hw: tuple[int, int]
    prefix: int = 0

    @property
    def is_tokens(self) -> bool:
        return self.data.ndim == 3

    def patches(self) -> Tensor:
        """Patch tokens only (B, h*w, C) in token layout; the map itself otherwise."""
        return self.data[:, self.prefix :] if self.is_tokens else self.data

    def with_patches(self, patches: Tensor) -> StreamState:
        """The same state with its patch tokens (or map) replaced."""
        if not self.is_tokens:
            return StreamState(patches, self.hw, 0)
        data = patches if self.prefix == 0 else _cat_prefix(self.data[:, : self.prefix], patches)
        return StreamState(data, self.hw, self.prefix)


def _cat_prefix(prefix: Tensor, patches: Tensor) -> Tensor:
    import torch

    return torch.cat([prefix, patches], dim=1)


class Backbone(nn.Module, abc.ABC):
    """Base class of the frozen-backbone adapters walked by :class:`DualStreamEngine`.

    Subclasses set :attr:`stages` and :attr:`name` and implement the methods below. Every
    parameter is frozen by :meth:`freeze` (the engine calls it); recipes add trainable parts.
    """

    name: str = "backbone"
    stages: Sequence[StageInfo] = ()

    @abc.abstractmethod
    def embedding(self) -> nn.Module:
        """The patch / stem embedding module (recipes copy it for the X stream)."""

    @abc.abstractmethod
    def embed(self, image: Tensor, embedding: nn.Module | None = None) -> StreamState:
        """Embed an image with ``embedding`` (default: the backbone's own)."""

    @abc.abstractmethod
    def blocks(self, stage: int) -> Sequence[nn.Module]:
        """The blocks of a stage, in order (the engine runs them through :meth:`run_block`)."""

    def run_block(self, stage: int, index: int, state: StreamState) -> StreamState:
        """Run one block on one stream."""
        block = self.blocks(stage)[index]
        return StreamState(block(state.data), state.hw, state.prefix)

    def run_block_adapted(
        self,
        stage: int,
        index: int,
        state: StreamState,
        adapter: Callable[[Tensor], Tensor],
    ) -> StreamState:
        """Run one block with a parallel adapter (KTB MAPA adaptation, METHODS.md section 1).

        ``t1 = t + attn_branch(t)``; ``out = t1 + ffn_branch(t1) + adapter(t1)``. The adapter
        maps patch tokens (B, N, C) to a delta of the same shape (any scale is its own);
        prefix tokens get no delta. A zero adapter gives exactly :meth:`run_block`.
        """
        raise NotImplementedError(
            f"backbone {self.name} ({type(self).__name__}) cannot split its blocks into "
            "attention and FFN sub-steps, so block adapters (run_block_adapted) are unavailable"
        )

    @abc.abstractmethod
    def stage_output(self, stage: int, state: StreamState, stream: str = "rgb") -> Tensor:
        """The stage's feature map (B, C, H, W): output norm applied, tokens reshaped.

        ``stream`` ('rgb' or 'x') lets a backbone keep a separate output norm per stream (KTB).
        """

    def next_stage(self, stage: int, state: StreamState) -> StreamState:
        """Move a stream from the end of ``stage`` into ``stage + 1`` (downsampling)."""
        return state

    def stage_input_channels(self, in_chans: int = 3) -> list[int]:
        """Channels of the state entering each stage (before_stage hooks size their parts).

        Found by walking a small zero image, so it holds for any stem and downsampling.
        """
        import torch

        size = 2 * max(s.reduction for s in self.stages)
        channels = []
        with torch.no_grad():
            state = self.embed(torch.zeros(1, in_chans, size, size))
            for i in range(len(self.stages)):
                channels.append(state.data.shape[-1] if state.is_tokens else state.data.shape[1])
                for j in range(len(self.blocks(i))):
                    state = self.run_block(i, j, state)
                state = self.next_stage(i, state)
        return channels

    def freeze(self) -> None:
        """Freeze every parameter and keep norm statistics fixed."""
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        # A frozen backbone stays in eval mode (dropout off, BN statistics fixed).
        return super().train(False)


def as_tokens(t: Tensor) -> Tensor:
    """(B, C, H, W) maps as (B, H*W, C) tokens; tokens unchanged (CNN and ViT stages alike)."""
    return t.flatten(2).transpose(1, 2) if t.ndim == 4 else t


def tokens_like(tokens: Tensor, ref: Tensor) -> Tensor:
    """Tokens back to the layout of ``ref``."""
    if ref.ndim == 3:
        return tokens
    b, c, h, w = ref.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)
