"""The small protocol every backbone implements so the dual-stream engine can walk it.

A backbone is an embedding followed by stages of blocks. The engine owns the walk (both
streams, hooks at fixed points); the backbone says how to embed, run one block (or one of its
two halves: token mixer, MLP) on a named stream, leave a stage (output norm, tokens -> map) and
enter the next (downsampling). The README's section "The engine's hook table" lists the hooks.

Every call that runs backbone modules on one stream names the stream ('rgb' or 'x') and runs
inside :func:`stream_scope`, so a part injected into the backbone (per-stream LoRA,
:mod:`rsfusion.models.peft.lora`) knows which stream it serves.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from timm.layers import DropPath
from torch import Tensor, nn

from rsfusion.errors import BlockSplitError

__all__ = [
    "BACKBONE_MODES",
    "STREAMS",
    "Backbone",
    "BackboneMode",
    "BlockSplitError",
    "StageInfo",
    "StreamState",
    "active_stream",
    "as_tokens",
    "stream_scope",
    "tokens_like",
]

Stream = Literal["rgb", "x"]
STREAMS: tuple[str, str] = ("rgb", "x")

BackboneMode = Literal["frozen", "stochastic_depth", "trainable"]
#: ``frozen``: weights frozen, eval mode (dropout, drop-path off, BatchNorm statistics fixed);
#: ``stochastic_depth``: weights and BatchNorm statistics frozen, drop-path active in training
#: (KTB 0.3, CPAL 0.5); ``trainable``: an ordinary trainable backbone (SegRGB-X's MiT).
BACKBONE_MODES: tuple[str, ...] = ("frozen", "stochastic_depth", "trainable")

_STREAM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rsfusion_stream", default=None
)
#: the streams entered while torch.compile traces (it traces one thread: no context needed)
_TRACED: list[str] = []


@contextlib.contextmanager
def stream_scope(stream: str) -> Iterator[None]:
    """Backbone modules called inside run on ``stream`` ('rgb' or 'x')."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be 'rgb' or 'x', got {stream!r}")
    if torch.compiler.is_compiling():  # a plain list: ContextVar.set breaks torch.compile's graph
        _TRACED.append(stream)
        try:
            yield
        finally:
            _TRACED.pop()
        return
    token = _STREAM.set(stream)
    try:
        yield
    finally:
        _STREAM.reset(token)


def active_stream() -> str | None:
    """The stream the backbone is running on now (None outside a backbone call)."""
    if torch.compiler.is_compiling():
        return _TRACED[-1] if _TRACED else None
    return _STREAM.get()


@dataclass(frozen=True)
class StageInfo:
    """One stage: output channels, reduction (stride) w.r.t. the input, number of blocks."""

    channels: int
    reduction: int
    depth: int


@dataclass
class StreamState:
    """What flows through a stream: tokens (B, N, C) on an (h, w) grid, or a map (B, C, H, W).

    Token layout is ``[prefix | patches | extra]``: ``prefix`` leading non-patch tokens (class /
    register tokens), the ``h * w`` patch tokens, then ``extra`` trailing tokens that recipes
    append for a stage (SegRGB-X's control and aligned prompts). Attention sees all tokens;
    spatial operators (depthwise convs, spatial reduction, window partition) see the patch grid
    only (:meth:`split`, :meth:`map_patches`).

    Example:
        >>> state = StreamState(torch.zeros(1, 1 + 6, 4), (2, 3), prefix=1)  # cls + 2x3 patches
        >>> prompted = state.with_extra(torch.ones(1, 2, 4))
        >>> prompted.patches().shape, prompted.extra_tokens().shape
        (torch.Size([1, 6, 4]), torch.Size([1, 2, 4]))
        >>> prompted.map_patches(nn.Identity()).shape  # a spatial op sees the 2x3 grid only
        torch.Size([1, 9, 4])
    """

    data: Tensor
    hw: tuple[int, int]
    prefix: int = 0
    extra: int = 0

    @property
    def is_tokens(self) -> bool:
        return self.data.ndim == 3

    def patches(self) -> Tensor:
        """Patch tokens only (B, h*w, C) in token layout; the map itself otherwise."""
        if not self.is_tokens:
            return self.data
        end = self.data.shape[1] - self.extra
        return self.data[:, self.prefix : end]

    def extra_tokens(self) -> Tensor:
        """The trailing extra (prompt) tokens (B, extra, C)."""
        return self.data[:, self.data.shape[1] - self.extra :]

    def split(self, tokens: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``tokens`` (default: the state's; any width) as (prefix, patches, extra) parts."""
        t = self.data if tokens is None else tokens
        n = t.shape[1]
        return t[:, : self.prefix], t[:, self.prefix : n - self.extra], t[:, n - self.extra :]

    def join(self, prefix: Tensor, patches: Tensor, extra: Tensor) -> Tensor:
        """The inverse of :meth:`split` (parts may have a new width)."""
        parts = [p for p in (prefix, patches, extra) if p.shape[1]]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def map_patches(self, fn: nn.Module | object, tokens: Tensor | None = None) -> Tensor:
        """Apply a spatial operator ``fn`` ((B, C, h, w) -> (B, C', h, w)) to the patch tokens of
        ``tokens`` (default: the state's) on their grid; prefix and extra tokens pass through
        unchanged, so ``fn`` must keep the channels (C' = C) when there are any. Operators that
        change the grid (spatial reduction) use :meth:`split` and :meth:`join` instead."""
        prefix, patches, extra = self.split(tokens)
        b, n, c = patches.shape
        grid = patches.transpose(1, 2).reshape(b, c, *self.hw)
        out = fn(grid)  # type: ignore[operator]
        return self.join(prefix, out.flatten(2).transpose(1, 2), extra)

    def with_data(self, data: Tensor) -> StreamState:
        """The same layout around new data (a block's output)."""
        return StreamState(data, self.hw, self.prefix, self.extra)

    def with_patches(self, patches: Tensor) -> StreamState:
        """The same state with its patch tokens (or map) replaced."""
        if not self.is_tokens:
            return StreamState(patches, self.hw, 0, 0)
        if self.prefix == 0 and self.extra == 0:
            return StreamState(patches, self.hw, 0, 0)
        prefix, _, extra = self.split()
        return self.with_data(self.join(prefix, patches, extra))

    def with_extra(self, tokens: Tensor) -> StreamState:
        """Append ``tokens`` (B, M, C) as extra tokens (after any already there)."""
        if not self.is_tokens:
            raise ValueError("extra tokens need a token-layout stream (B, N, C), not a map")
        return StreamState(
            torch.cat([self.data, tokens], dim=1),
            self.hw,
            self.prefix,
            self.extra + tokens.shape[1],
        )

    def drop_extra(self) -> tuple[StreamState, Tensor]:
        """The state without its extra tokens, and those tokens (SegRGB-X's O_M)."""
        if self.extra == 0:
            return self, self.data[:, :0]
        n = self.data.shape[1] - self.extra
        return StreamState(self.data[:, :n], self.hw, self.prefix, 0), self.data[:, n:]


class Backbone(nn.Module, abc.ABC):
    """Base class of the backbone adapters walked by :class:`DualStreamEngine`.

    Subclasses set :attr:`stages` and :attr:`name` and implement the abstract methods; those
    whose blocks split into a token-mixer half and an MLP half set :attr:`splits_blocks` and
    implement :meth:`_mixer` and :meth:`_mlp`. The public calls (:meth:`run_block`,
    :meth:`mixer`, :meth:`mlp`, ...) take the stream and run inside :func:`stream_scope`.

    Declared capabilities:

    * :attr:`splits_blocks`: blocks have mixer / MLP halves (KTB's adapters, CPAL's MCP);
    * :attr:`reads_output`: the next stage starts from the stage's output map (norm applied:
      MiT, InternImage, CNNs) rather than from the raw block tokens (ViT, Swin); decides how a
      stream rewritten after a stage continues (:meth:`continue_from`);
    * :attr:`accepts_extra_tokens`: blocks run with extra (prompt) tokens in the stream;
    * :attr:`stride`: inputs are zero-padded to a multiple of this;
    * :attr:`mode`: see :data:`BACKBONE_MODES` (:meth:`set_mode`).
    """

    name: str = "backbone"
    stages: Sequence[StageInfo] = ()
    splits_blocks: ClassVar[bool] = False
    reads_output: ClassVar[bool] = False
    accepts_extra_tokens: ClassVar[bool] = False
    stride: int = 1
    mode: BackboneMode | None = None

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def embedding(self) -> nn.Module:
        """The patch / stem embedding module (recipes copy it for the X stream)."""

    @abc.abstractmethod
    def _embed(self, image: Tensor, embedding: nn.Module | None) -> StreamState:
        """Embed an image with ``embedding`` (default: the backbone's own)."""

    @abc.abstractmethod
    def blocks(self, stage: int) -> Sequence[nn.Module]:
        """The blocks of a stage, in order."""

    def _block(self, stage: int, index: int, state: StreamState) -> StreamState:
        """One whole block (default: the block module on the data, or mixer then MLP)."""
        if self.splits_blocks:
            return self._mlp(stage, index, self._mixer(stage, index, state))
        return state.with_data(self.blocks(stage)[index](state.data))

    def _mixer(self, stage: int, index: int, state: StreamState) -> StreamState:
        """Token-mixer half with its residual: ``t + DropPath(PostNorm(Mixer(Norm t)))``."""
        raise BlockSplitError(
            f"backbone {self.name} ({type(self).__name__}) cannot split its blocks into token-"
            "mixer and MLP halves, so block-level adapters and cross prompts are unavailable"
        )

    def _mlp(self, stage: int, index: int, state: StreamState) -> StreamState:
        """MLP half with its residual: ``t + DropPath(PostNorm(MLP(Norm t)))``."""
        return self._mixer(stage, index, state)  # raises the same BlockSplitError

    @abc.abstractmethod
    def _stage_output(self, stage: int, state: StreamState, stream: str) -> Tensor:
        """The stage's feature map (B, C, H, W): output norm applied, tokens reshaped."""

    def _next_stage(self, stage: int, state: StreamState) -> StreamState:
        """Move a stream from the end of ``stage`` into ``stage + 1`` (downsampling)."""
        return state

    def stage_modules(self, stage: int) -> tuple[list[nn.Module], list[nn.Module]]:
        """Non-block modules of a stage: (entering it: downsampling; leaving it: output norms).

        Used for layer-wise LR decay of a trainable backbone (:meth:`parameter_depths`).
        """
        return [], []

    # ------------------------------------------------------------------ the public calls
    def embed(
        self, image: Tensor, embedding: nn.Module | None = None, stream: str = "rgb"
    ) -> StreamState:
        """Embed an image on ``stream`` with ``embedding`` (default: the backbone's own)."""
        with stream_scope(stream):
            return self._embed(image, embedding)

    def run_block(
        self, stage: int, index: int, state: StreamState, stream: str = "rgb"
    ) -> StreamState:
        """Run one whole block on one stream."""
        self._check_extra(state)
        with stream_scope(stream):
            return self._block(stage, index, state)

    def mixer(self, stage: int, index: int, state: StreamState, stream: str = "rgb") -> StreamState:
        """A block's token-mixer half (attention, DCN, ...) with its norms, post-norm, drop-path
        and residual, on one stream; then :meth:`mlp` completes the block."""
        self._check_extra(state)
        with stream_scope(stream):
            return self._mixer(stage, index, state)

    def mlp(self, stage: int, index: int, state: StreamState, stream: str = "rgb") -> StreamState:
        """A block's MLP half with its norms, post-norm, drop-path and residual."""
        self._check_extra(state)
        with stream_scope(stream):
            return self._mlp(stage, index, state)

    def stage_output(self, stage: int, state: StreamState, stream: str = "rgb") -> Tensor:
        """The stage's feature map (B, C, H, W) of the patch tokens; ``stream`` picks the output
        norm where a backbone keeps one per stream (KTB's Swin)."""
        if state.extra:
            state, _ = state.drop_extra()
        with stream_scope(stream):
            return self._stage_output(stage, state, stream)

    def next_stage(self, stage: int, state: StreamState, stream: str = "rgb") -> StreamState:
        """Move a stream from the end of ``stage`` into ``stage + 1``."""
        with stream_scope(stream):
            return self._next_stage(stage, state)

    def continue_from(
        self, stage: int, state: StreamState, output: Tensor, rewritten: Tensor | None
    ) -> StreamState:
        """The state entering :meth:`next_stage` after ``stage``, given the stage's ``output``
        map and the map a recipe may have ``rewritten`` it to (CMX's FRM).

        Backbones that read the output (:attr:`reads_output`) continue from the (rewritten)
        map; the others add the rewrite's change ``rewritten - output`` to their patch tokens
        [inf: FRM is defined on MiT, whose next stage reads the normalised map].
        """
        if self.reads_output:
            new = output if rewritten is None else rewritten
            return StreamState(new, (int(new.shape[-2]), int(new.shape[-1])), 0, 0)
        if rewritten is None:
            return state
        delta = rewritten - output
        return state.with_patches(state.patches() + tokens_like(as_tokens(delta), state.patches()))

    def _check_extra(self, state: StreamState) -> None:
        if state.extra and not self.accepts_extra_tokens:
            raise BlockSplitError(
                f"backbone {self.name} ({type(self).__name__}) cannot run its blocks with "
                f"{state.extra} extra (prompt) tokens in the stream"
            )

    # ------------------------------------------------------------------ derived
    def stage_input_channels(self, in_chans: int = 3) -> list[int]:
        """Channels of the state entering each stage (before_stage hooks size their parts).

        Found by walking a small zero image, so it holds for any stem and downsampling.
        """
        size = 2 * max(s.reduction for s in self.stages)
        channels = []
        with torch.no_grad():
            state = self.embed(torch.zeros(1, in_chans, size, size))
            for i in range(len(self.stages)):
                channels.append(state.data.shape[-1] if state.is_tokens else state.data.shape[1])
                for j in range(len(self.blocks(i))):
                    state = self.run_block(i, j, state)
                if self.reads_output:
                    out = self.stage_output(i, state)
                    state = self.continue_from(i, state, out, None)
                state = self.next_stage(i, state)
        return channels

    def block_channels(self) -> list[list[int]]:
        """Output channels of every block, stage by stage (what a block adapter reads).

        Constant-width stages (Swin, ViT) give the stage width; CNNs override it with the
        widths measured by their construction check.
        """
        return [[s.channels] * len(self.blocks(i)) for i, s in enumerate(self.stages)]

    def block_depths(self) -> list[list[int]]:
        """Depth of every block for layer-wise LR decay: 1..L in forward order."""
        depths, total = [], 0
        for i in range(len(self.stages)):
            n = len(self.blocks(i))
            depths.append(list(range(total + 1, total + n + 1)))
            total += n
        return depths

    def parameter_depths(self, prefix: str = "") -> tuple[dict[str, int], int]:
        """Depth of every parameter (name -> 0..L+1) for layer-wise LR decay, and L.

        Embedding 0; block ``(i, j)`` its forward position 1..L; modules entering stage ``i``
        (downsampling) the depth before its first block; modules leaving it (output norms) its
        last block's; anything else L + 1.
        """
        depths = self.block_depths()
        total = sum(len(d) for d in depths)
        by_param: dict[int, int] = {}

        def mark(module: nn.Module, depth: int) -> None:
            for p in module.parameters():
                by_param.setdefault(id(p), depth)

        mark(self.embedding(), 0)
        start = 0
        for i, stage in enumerate(depths):
            entering, leaving = self.stage_modules(i)
            for m in entering:
                mark(m, start)
            for j, block in enumerate(self.blocks(i)):
                mark(block, stage[j])
            end = stage[-1] if stage else start
            for m in leaving:
                mark(m, end)
            start = end
        out = {}
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            embed_token = leaf in ("pos_embed", "cls_token", "reg_token", "absolute_pos_embed")
            out[prefix + name] = 0 if embed_token else by_param.get(id(p), total + 1)
        return out, total

    # ------------------------------------------------------------------ modes
    def set_mode(self, mode: BackboneMode) -> None:
        """Freeze (``frozen``, ``stochastic_depth``) or unfreeze (``trainable``) the weights.

        Parameters injected by PEFT parts after freezing (LoRA, marked ``_rsfusion_peft``)
        stay trainable whatever the mode.
        """
        if mode not in BACKBONE_MODES:
            raise ValueError(f"backbone mode must be one of {BACKBONE_MODES}, got {mode!r}")
        self.mode = mode
        for p in self.parameters():
            if not getattr(p, "_rsfusion_peft", False):
                p.requires_grad_(mode == "trainable")
        # the mode last asked for by train() (a new module is in training mode), not the
        # eval-forced flag: Lightning keeps submodules in whatever mode they were built in
        self.train(self.__dict__.get("_asked_training", True))

    def freeze(self) -> None:
        """Freeze every parameter and keep norm statistics fixed (mode ``frozen``)."""
        self.set_mode("frozen")

    def train(self, mode: bool = True) -> Backbone:
        """Trainable: as any module. Frozen: always eval (dropout and drop-path off, BatchNorm
        statistics fixed). Stochastic depth: eval, but drop-path follows ``mode``."""
        self.__dict__["_asked_training"] = mode
        if self.mode == "trainable":
            return super().train(mode)
        super().train(False)
        if mode and self.mode == "stochastic_depth":
            for m in self.modules():
                if isinstance(m, DropPath):
                    m.training = True
        return self


def as_tokens(t: Tensor) -> Tensor:
    """(B, C, H, W) maps as (B, H*W, C) tokens; tokens unchanged (CNN and ViT stages alike)."""
    return t.flatten(2).transpose(1, 2) if t.ndim == 4 else t


def tokens_like(tokens: Tensor, ref: Tensor) -> Tensor:
    """Tokens back to the layout of ``ref``."""
    if ref.ndim == 3:
        return tokens
    b, c, h, w = ref.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)
