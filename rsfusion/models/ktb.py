"""KTB, "Keep the Balance" (Cai et al., CVPR 2025) on the dual-stream engine.

Recipe parts (the README's hook table, column KTB):

* ``embed_x``: a trainable copy of the RGB patch embedding (a 1-channel X such as a DSM is
  repeated to the 3 channels it expects, as MoBaNet does);
* ``before_stage``: MAPA prompting, one :class:`CrossModalPrompt` per stage (ratio 1/8; the
  module MoBaNet's CPIA uses with 1/4);
* ``in_block``: MAPA adaptation, one modality-specific :class:`BottleneckAdapter` (C -> C/16,
  ReLU, dropout .1, zero-initialised up-projection, scale 0.5) per block and stream, on the
  block halves :meth:`Backbone.mixer` / :meth:`Backbone.mlp` (it reads the tokens after the
  attention residual, its output is added after the FFN residual);
* ``after_stage``: one :class:`DSCF` per stage with :func:`dscf_stage_options`;
* ``decode``: a fused SegFormer MLP head (512) on the DSCF pyramid and, in training only,
  RGB-only and X-only SegFormer heads (256) on the single-modality stage maps, returned as
  ``{"out", "aux": {"rgb", "x"}}`` for ``model.aux_loss.mode=self_teaching``.

MMST whole-modality masking is the task's ``model.masking.mode=mmst`` (it zeroes the normalised
inputs; the authors zero the token maps after the patch embedding, see
:mod:`rsfusion.training.masking`). The paper's drop-path 0.3 on the frozen Swin is
``model.backbone_mode: stochastic_depth`` with ``model.drop_path_rate: 0.3`` (the paper
configs set both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from rsfusion.errors import BlockSplitError
from rsfusion.models.backbones.base import Backbone, StreamState, as_tokens, tokens_like
from rsfusion.models.base import ModelSpec
from rsfusion.models.engine import Recipe, build_engine, recipe_options, resize_logits
from rsfusion.models.fusion import DSCF, dscf_stage_options
from rsfusion.models.heads import SegFormerHead
from rsfusion.models.peft import (
    BottleneckAdapter,
    CrossModalPrompt,
    prompt_streams,
    stream_adapters,
)
from rsfusion.registry import register_model

__all__ = ["KTB", "fit_dscf_options", "paper_stage"]

#: KTB's four paper stages (DSCF strides, groups and heads are given per stage).
PAPER_STAGES = 4


def paper_stage(stage: int, num_stages: int) -> int:
    """The paper's stage (0..3) whose DSCF settings engine stage ``stage`` takes.

    Aligned at the deepest stage: a 4-stage backbone (Swin) maps 1:1; extra early stages (a
    5-level CNN's stride-2 stage) take stage 1's settings [inf].
    """
    return max(0, stage - max(0, num_stages - PAPER_STAGES))


def fit_dscf_options(options: dict[str, Any], dim: int, reduction: int) -> dict[str, Any]:
    """``options`` with heads and groups lowered until they divide ``d = dim // reduction``.

    Swin-B/L widths take the paper's values unchanged; widths that do not divide (CNN stages,
    e.g. d = 14) get the largest heads <= the paper's dividing d and the largest groups <= the
    paper's dividing both heads and d [inf].
    """
    d = dim // reduction
    if d < 1:
        raise ValueError(f"DSCF width {dim} // reduction {reduction} is 0: lower dscf_reduction")
    heads = max(h for h in range(1, options["heads"] + 1) if d % h == 0)
    groups = max(g for g in range(1, options["groups"] + 1) if heads % g == 0 and d % g == 0)
    return {**options, "heads": heads, "groups": groups}


def _pair(size: int | Sequence[int], name: str = "image_size") -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"{name} must be an int or [height, width], got {size!r}")
    return int(size[0]), int(size[1])


class KTB(Recipe):
    """KTB's trainable parts: X embedding, MAPA prompts and adapters, DSCF, three SegFormer heads.

    Args:
        backbone: the frozen backbone (stages give the widths; its blocks must split into
            halves, :attr:`Backbone.splits_blocks`: Swin, ViT, timm CNNs).
        num_classes: output classes.
        prompt_ratio: MAPA prompt bottleneck ratio r (1/8 in KTB).
        adapter_reduction: adapter bottleneck reduction (C -> C/16).
        adapter_dropout: dropout inside the adapters (.1).
        adapter_scale: factor on the adapter output (0.5).
        dscf_reduction: DSCF width reduction C -> d = C / 8.
        image_size: training crop (int or [H, W]); sizes each DSCF bias table DAT-style to
            (2h - 1, 2w - 1) for its stage map h x w of the padded crop (at least 2) [inf];
            ``None``: DSCF's default table (any size runs either way: the table is sampled).
        dscf_bias_table: one bias-table size (int or [T_h, T_w]) for every stage's DSCF,
            overriding ``image_size``'s; the authors' code gives every stage the table of a
            60 x 80 map, (119, 159), whatever the crop (the paper configs set it).
        faithful: reproduce the authors' frozen identity LayerNorm at the end of each DSCF
            (default: trained).
        head_dim: fused SegFormer head width (512).
        aux_head_dim: RGB-only and X-only SegFormer head width (256).
        head_dropout: Dropout2d before each head's classifier.
    """

    embed_parts = ("x_embed",)
    stage_parts = {"prompts": "before", "dscf": "after"}
    block_parts = ("adapters.rgb", "adapters.x")

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        prompt_ratio: float = 1 / 8,
        adapter_reduction: int = 16,
        adapter_dropout: float = 0.1,
        adapter_scale: float = 0.5,
        dscf_reduction: int = 8,
        image_size: int | Sequence[int] | None = None,
        dscf_bias_table: int | Sequence[int] | None = None,
        faithful: bool = False,
        head_dim: int = 512,
        aux_head_dim: int = 256,
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not backbone.splits_blocks:
            raise BlockSplitError(
                f"KTB needs block adapters, which backbone {backbone.name} "
                f"({type(backbone).__name__}) cannot take: its blocks do not split into "
                "token-mixer and MLP halves"
            )
        dims = [s.channels for s in backbone.stages]
        n = len(dims)
        self.x_embed = self.copy_embedding(backbone)
        self.prompts = nn.ModuleList(
            CrossModalPrompt(c, prompt_ratio) for c in backbone.stage_input_channels()
        )
        widths = backbone.block_channels()
        self.adapters = stream_adapters(
            widths,
            lambda c: BottleneckAdapter(c, adapter_reduction, adapter_dropout, scale=adapter_scale),
        )
        crop = _pair(image_size) if image_size is not None else None
        pad = backbone.stride  # inputs are padded to this multiple
        #: The DSCF keyword arguments of each stage (after fitting to the stage width).
        self.dscf_options: list[dict[str, Any]] = []
        for i, s in enumerate(backbone.stages):
            size = None
            if crop is not None:
                size = tuple(math.ceil(v / pad) * pad // s.reduction for v in crop)
            options = dscf_stage_options(paper_stage(i, n), size)
            if dscf_bias_table is not None:
                options["bias_table"] = _pair(dscf_bias_table, "dscf_bias_table")
            if "bias_table" in options:  # a 1x1 map still needs the table's minimum size 2
                options["bias_table"] = tuple(max(2, t) for t in options["bias_table"])
            self.dscf_options.append(fit_dscf_options(options, s.channels, dscf_reduction))
        self.dscf = nn.ModuleList(
            DSCF(c, dscf_reduction, faithful=faithful, **o) for c, o in zip(dims, self.dscf_options)
        )
        self.head = SegFormerHead(dims, head_dim, num_classes, head_dropout)
        self.head_rgb = SegFormerHead(dims, aux_head_dim, num_classes, head_dropout)
        self.head_x = SegFormerHead(dims, aux_head_dim, num_classes, head_dropout)

    def before_stage(
        self, stage: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """MAPA prompting on the patch tokens (maps are flattened to tokens and back)."""
        return prompt_streams(self.prompts[stage], r, x)

    def in_block(
        self, backbone: Backbone, stage: int, index: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """MAPA adaptation: each stream's block with its own adapter, which reads the tokens
        after the mixer (attention) residual and is added after the MLP residual."""
        out = []
        for stream, state in (("rgb", r), ("x", x)):
            mixed = backbone.mixer(stage, index, state, stream)
            done = backbone.mlp(stage, index, mixed, stream)
            delta = self.adapters[stream][stage][index](as_tokens(mixed.patches()))
            out.append(done.with_patches(done.patches() + tokens_like(delta, done.patches())))
        return out[0], out[1]

    def after_stage(self, stage: int, r: Tensor, x: Tensor) -> Tensor:
        return self.dscf[stage](r, x)

    def decode(
        self, fused: list[Tensor], rgb: list[Tensor], x: list[Tensor], size: tuple[int, int]
    ) -> Tensor | dict[str, Any]:
        out = resize_logits(self.head(fused), size)
        if not self.training:
            return out
        aux = {
            "rgb": resize_logits(self.head_rgb(rgb), size),
            "x": resize_logits(self.head_x(x), size),
        }
        return {"out": out, "aux": aux}


@register_model("ktb", recipe_options(KTB))
def ktb(spec: ModelSpec) -> nn.Module:
    """KTB on the dual-stream engine; recipe options from ``model.kwargs`` (see :class:`KTB`)."""
    return build_engine(spec, KTB, "KTB")
