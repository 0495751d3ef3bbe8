"""CPAL (Liu et al., IEEE TCSVT 2025) on the dual-stream engine (the README's CPAL section).

Recipe parts (README hook table, column CPAL):

* ``embed_x``: the backbone's own stem, shared by both streams (a 1-channel X is repeated);
* ``in_block``: CPAL's multi-modal cross prompter (:class:`MCP`) on the block halves, the
  four interleaved residual updates of the authors' code (DCN half of RGB, of X, MLP half of
  RGB, of X; each prompt read from the other stream's latest tokens);
* block weights: frozen, with LoRA (rank 8, alpha 1) on the last stage's DCNv3 ``offset`` and
  ``mask`` Linears of an InternImage (shared by both streams; ``faithful`` adds the authors'
  ``sigmoid(LoRA(x))``);
* ``after_stage``: one :class:`GPM` per stage, its output replacing the RGB feature sent to the
  head (built for the width of ``image_size`` and run at any width, see
  :mod:`rsfusion.models.fusion.gpm`);
* ``decode``: LightHamHead (CPAL-T) or UPerHead (CPAL-L), 512 channels; cross-entropy only.

The authors train with drop-path 0.5 on the frozen InternImage: ``model.backbone_mode:
stochastic_depth``, ``model.drop_path_rate: 0.5`` in the paper configs. Paper Table X runs CPAL
on ViT and MiT too: any backbone whose blocks split into halves takes the MCP prompts (LoRA
then needs explicit ``lora_targets``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn

from rsfusion.errors import BlockSplitError
from rsfusion.models.backbones.base import Backbone, StreamState
from rsfusion.models.base import ModelSpec
from rsfusion.models.engine import Recipe, build_engine, recipe_options, resize_logits
from rsfusion.models.fusion import GPM, gpm_width
from rsfusion.models.heads import LightHamHead, UPerNetHead
from rsfusion.models.peft import MCP, inject_lora
from rsfusion.registry import register_model

__all__ = ["CPAL", "default_lora_targets"]


def default_lora_targets(backbone: Backbone, stages: Sequence[int]) -> list[str]:
    """CPAL's LoRA targets: the DCNv3 offset and mask Linears of ``stages`` of an InternImage
    (CPAL: the last stage only); other backbones have none unless named."""
    from rsfusion.models.backbones.internimage import InternImageBackbone

    if not isinstance(backbone, InternImageBackbone):
        return []
    return [f"levels.{s}.blocks.*.dcn.{leaf}" for s in stages for leaf in ("offset", "mask")]


def _width(image_size: int | Sequence[int], stride: int) -> int:
    """The padded width of the training crop (``image_size`` int or [H, W])."""
    width = image_size if isinstance(image_size, int) else int(image_size[-1])
    return math.ceil(width / stride) * stride


class CPAL(Recipe):
    """CPAL's trainable parts: MCP prompts, LoRA, GPM fusion and the decoder head.

    Args:
        backbone: the frozen backbone (blocks must split into halves).
        num_classes: output classes.
        mcp_hidden, mcp_groups, mcp_dropout: MCP sub-block width (8), groups (4), dropout (.1).
        mcp_stages: stages whose blocks get MCP prompts (default: all; Table IX counts stage 4
            alone and stages 1-4).
        lora_rank, lora_alpha: LoRA rank (8) and alpha (1).
        lora_stages: stages whose DCNv3 offset / mask get LoRA (default: the last).
        lora_targets: fnmatch patterns of backbone Linears for LoRA instead (any backbone).
        gpm_reduction: GPM channel reduction (C -> C/5).
        image_size: training crop (int width or [H, W]); GPM's width-axis layers are built for
            its padded width (the authors': 640).
        head: ``"ham"`` (LightHamHead, CPAL-T) or ``"uper"`` (UPerHead, CPAL-L).
        head_channels, ham_channels: decoder widths (512, 512).
        head_dropout: Dropout2d before the classifier (.1).
        faithful: the authors' code as written: MCP all-zero init and scrambled prompt layout,
            ``sigmoid(LoRA(x))`` (default: Kaiming down/mid, zero up; plain LoRA).
        x_channels: the X input's channels (from the data). The shared stem takes 3: a 1-channel
            X is repeated; any other width goes through ``x_proj``, a trainable 1x1 conv to 3
            channels initialised to the channel mean (DDD17's 6-channel Ev-SegNet event tensor;
            the paper feeds 3-channel "event images derived from raw event data") [inf].
    """

    embed_parts = ("x_proj",)
    stage_parts = {"gpm": "after"}
    block_parts = ("mcp",)

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        mcp_hidden: int = 8,
        mcp_groups: int = 4,
        mcp_dropout: float = 0.1,
        mcp_stages: Sequence[int] | None = None,
        lora_rank: int = 8,
        lora_alpha: float = 1.0,
        lora_stages: Sequence[int] | None = None,
        lora_targets: Sequence[str] | None = None,
        gpm_reduction: int = 5,
        image_size: int | Sequence[int] = 640,
        head: Literal["ham", "uper"] = "ham",
        head_channels: int = 512,
        ham_channels: int = 512,
        head_dropout: float = 0.1,
        faithful: bool = False,
        x_channels: int = 3,
    ) -> None:
        super().__init__()
        self.x_proj: nn.Conv2d | None = None
        if x_channels not in (1, 3):
            self.x_proj = nn.Conv2d(x_channels, 3, 1)
            nn.init.constant_(self.x_proj.weight, 1.0 / x_channels)
            nn.init.zeros_(self.x_proj.bias)
        if not backbone.splits_blocks:
            raise BlockSplitError(
                f"CPAL's cross prompts need block halves, which backbone {backbone.name} "
                f"({type(backbone).__name__}) does not have"
            )
        if head not in ("ham", "uper"):
            raise ValueError(f"CPAL head must be 'ham' or 'uper', got {head!r}")
        n = len(backbone.stages)
        dims = [s.channels for s in backbone.stages]
        prompted = set(range(n) if mcp_stages is None else mcp_stages)
        widths = backbone.block_channels()
        entering = backbone.stage_input_channels()
        # a prompt adds one stream's tokens to the other's before and after a block: blocks
        # that change the width (a CNN's first block of a stage) run without one
        self.mcp = nn.ModuleList(
            nn.ModuleList(
                MCP(c, mcp_hidden, mcp_groups, mcp_dropout, faithful=faithful)
                if c == ([entering[i]] + widths[i])[j]
                else nn.Identity()
                for j, c in enumerate(widths[i] if i in prompted else [])
            )
            for i in range(n)
        )
        stages = [n - 1] if lora_stages is None else list(lora_stages)
        targets = list(lora_targets) if lora_targets is not None else None
        if targets is None:
            targets = default_lora_targets(backbone, stages)
        #: backbone Linears that carry LoRA (injected after the backbone was frozen)
        self.lora_layers: list[str] = []
        if targets and lora_rank > 0:
            self.lora_layers = inject_lora(
                backbone, targets, rank=lora_rank, alpha=lora_alpha,
                activation="sigmoid" if faithful else "none",
            )  # fmt: skip
        width = _width(image_size, backbone.stride)
        self.gpm = nn.ModuleList(
            GPM(c, gpm_width(width, s.reduction), gpm_reduction)
            for c, s in zip(dims, backbone.stages)
        )
        if head == "ham":
            # every level, as CPAL's config (in_index 0-3; mmseg's default is the last three)
            self.head: nn.Module = LightHamHead(
                dims, head_channels, num_classes=num_classes, ham_channels=ham_channels,
                in_index=range(n), dropout=head_dropout,
            )  # fmt: skip
        else:
            self.head = UPerNetHead(
                dims, head_channels, num_classes=num_classes, dropout=head_dropout, act=nn.ReLU
            )

    def embed_x(self, backbone: Backbone, x: Tensor) -> StreamState:
        """The shared stem; an X of another width than 1 or 3 first through ``x_proj``."""
        if self.x_proj is not None:
            x = self.x_proj(x)
        return super().embed_x(backbone, x)

    def in_block(
        self, backbone: Backbone, stage: int, index: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """The four interleaved updates, MCP's P1 beside the DCN half, P2 beside the MLP."""
        mcp = self.mcp[stage][index] if len(self.mcp[stage]) else None
        if not isinstance(mcp, MCP):
            return super().in_block(backbone, stage, index, r, x)

        def prompted(state: StreamState, other: StreamState, block: nn.Module) -> StreamState:
            return state.with_patches(state.patches() + block(other.patches()))

        r = prompted(backbone.mixer(stage, index, r, "rgb"), x, mcp.p1)
        x = prompted(backbone.mixer(stage, index, x, "x"), r, mcp.p1)
        r = prompted(backbone.mlp(stage, index, r, "rgb"), x, mcp.p2)
        x = prompted(backbone.mlp(stage, index, x, "x"), r, mcp.p2)
        return r, x

    def after_stage(self, stage: int, r: Tensor, x: Tensor) -> Tensor:
        """GPM: the fused map replaces the RGB feature sent to the head."""
        return self.gpm[stage](r, x)

    def decode(
        self, fused: list[Tensor], rgb: list[Tensor], x: list[Tensor], size: tuple[int, int]
    ) -> Tensor | dict[str, Any]:
        return resize_logits(self.head(fused), size)


@register_model("cpal", recipe_options(CPAL))
def cpal(spec: ModelSpec) -> nn.Module:
    """CPAL on the dual-stream engine; recipe options from ``model.kwargs`` (see :class:`CPAL`)."""
    return build_engine(spec, CPAL, "CPAL")
