"""SegRGB-X (arXiv 2603.28023) on the dual-stream engine (the README's SegRGB-X section).

One generalist model for every RGB-X modality. Recipe parts (README hook table, column SegRGB-X):

* ``prepare``: the frozen MA-CLIP (:class:`rsfusion.models.maclip.MACLIP`) embeds each sample's
  RGB and X image with the sample's modality LoRA, giving S^r and S^m (B, D); without MA-CLIP
  (``maclip: null``) S^r and S^m are learnable per-modality embeddings [inf], so the prompts
  and DSRM still know the modality;
* ``embed_x``: the backbone's own patch embedding, shared by both streams (a 1-channel X is
  repeated to 3);
* ``before_stage`` / ``in_block``: modality-aligned embeddings
  (:class:`ModalityAlignedPrompts`): per stage, control prompts from the paired embedding and
  learnable aligned prompts are appended to the patch tokens before every block and their
  outputs dropped after it (paper section III-C); the pairing is ``prompt_pairing`` (Tab. VII,
  default "rgb_dominant");
* backbone: a shared, trainable SegFormer MiT (``model.backbone_mode: trainable``);
* ``after_stage``: at the last stage the shared :class:`DSRM` refines (F4^r, S^r) and
  (F4^m, S^m) (``dsrm_pairing``, Tab. VIII, default "aligned"); then CMX's :class:`FRM`
  rectifies the pair (the rectified maps feed each stream's next stage) and :class:`FFM` fuses
  it into the map sent to the head;
* ``decode``: the SegFormer all-MLP head on the fused pyramid; cross-entropy, with the remap
  term of eq. 8 when trained jointly over several datasets (the task's ``label_space``).

Every component can be switched off from ``model.kwargs``: ``maclip: null``,
``control_prompts: 0``, ``aligned_prompts: 0``, ``dsrm: false``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rsfusion.errors import BlockSplitError
from rsfusion.models.backbones.base import Backbone, StreamState
from rsfusion.models.base import ModelSpec, SampleMeta
from rsfusion.models.engine import Recipe, StageOutput, build_engine, recipe_options, resize_logits
from rsfusion.models.fusion.cmx import FFM, FRM
from rsfusion.models.fusion.dsrm import DSRM
from rsfusion.models.heads import SegFormerHead
from rsfusion.models.peft.aligned_prompts import (
    PAIRINGS,
    ModalityAlignedPrompts,
    paired_embeddings,
)
from rsfusion.registry import register_model

__all__ = ["SegRGBX"]

#: CMX's FFM heads per stage (CMX authors' code: (1, 2, 5, 8)) = MiT's heads.
FFM_HEADS = (1, 2, 5, 8)
#: the key of the learnable embedding used for samples without a modality (no MA-CLIP)
_NONE = "none"


def stage_heads(heads: Sequence[int], dims: Sequence[int]) -> list[int]:
    """FFM heads per stage: ``heads`` aligned at the deepest stage (a backbone with more stages
    repeats the first entry for its early ones), each lowered to a divisor of the stage width.

    Example:
        >>> stage_heads((1, 2, 5, 8), [32, 64, 160, 256])
        [1, 2, 5, 8]
        >>> stage_heads((1, 2, 5, 8), [16, 24, 40, 112, 320])
        [1, 1, 2, 4, 8]
    """
    heads = list(heads)
    if not heads:
        raise ValueError("ffm_heads is empty")
    heads = [heads[0]] * max(0, len(dims) - len(heads)) + heads[-len(dims) :]
    return [max(h for h in range(1, want + 1) if c % h == 0) for want, c in zip(heads, dims)]


def _check_pairing(name: str, value: str) -> str:
    if value not in PAIRINGS:
        raise ValueError(f"SegRGB-X {name} must be one of {PAIRINGS}, got {value!r}")
    return value


class SegRGBX(Recipe):
    """SegRGB-X's parts: MA-CLIP (frozen), aligned prompts, FRM/FFM per stage, DSRM, head.

    Args:
        backbone: the shared backbone (MiT in the paper; its blocks must take extra tokens
            when prompts are on).
        num_classes: output classes (the unified label space when trained jointly).
        maclip: a pre-trained MA-CLIP file (``scripts/pretrain_maclip.py``'s ``maclip.pt``),
            frozen here; null: MA-CLIP off (learnable modality embeddings instead).
        embed_dim: width of the learnable embeddings when ``maclip`` is null.
        control_prompts: control prompts per stage (0: none).
        aligned_prompts: learnable aligned prompts per stage and stream (0: none).
        prompt_pairing: embeddings the streams' control prompts come from (Tab. VII).
        dsrm: build the DSRM at the last stage.
        dsrm_pairing: embeddings the streams' DSRM passes read (Tab. VIII).
        dsrm_prompts, dsrm_heads: DSRM's universal prompts K and attention heads.
        ffm_heads: FFM heads per stage (CMX: 1, 2, 5, 8).
        frm_reduction, ffm_reduction: CMX's channel reductions (1).
        head_channels: the SegFormer head's width (SegFormer: 256 for B0/B1, 768 for B2-B5;
            CMX uses 512).
        head_dropout: Dropout2d before the classifier.
    """

    stage_parts = {"prompts": "before", "frm": "after", "ffm": "after"}

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        maclip: str | None = None,
        embed_dim: int = 64,
        control_prompts: int = 4,
        aligned_prompts: int = 4,
        prompt_pairing: str = "rgb_dominant",
        dsrm: bool = True,
        dsrm_pairing: str = "aligned",
        dsrm_prompts: int = 16,
        dsrm_heads: int = 8,
        ffm_heads: Sequence[int] = FFM_HEADS,
        frm_reduction: int = 1,
        ffm_reduction: int = 1,
        head_channels: int = 512,
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.prompt_pairing = _check_pairing("prompt_pairing", prompt_pairing)
        self.dsrm_pairing = _check_pairing("dsrm_pairing", dsrm_pairing)
        dims = [s.channels for s in backbone.stages]
        self.maclip: nn.Module | None = None
        self.modality_embed: nn.ParameterDict | None = None
        if maclip is not None:
            from rsfusion.models.maclip import MACLIP

            self.maclip = MACLIP.load(maclip)
            self.maclip.freeze()
            embed_dim = int(self.maclip.embed_dim)
        else:
            from rsfusion.models.maclip import MODALITY_POOL

            keys = ["rgb", _NONE, *sorted(set(MODALITY_POOL.values()))]
            self.modality_embed = nn.ParameterDict(
                {k: nn.Parameter(nn.init.trunc_normal_(torch.empty(embed_dim), std=0.02))
                 for k in keys}
            )  # fmt: skip
        self.embed_dim = embed_dim
        self.prompts: nn.ModuleList | None = None
        if control_prompts > 0 or aligned_prompts > 0:
            if not backbone.accepts_extra_tokens:
                raise BlockSplitError(
                    f"SegRGB-X's prompts are extra tokens, which backbone {backbone.name} "
                    f"({type(backbone).__name__}) cannot take: use a MiT backbone, or set "
                    "model.kwargs.control_prompts=0 and aligned_prompts=0"
                )
            self.prompts = nn.ModuleList(
                ModalityAlignedPrompts(c, embed_dim, control_prompts, aligned_prompts) for c in dims
            )
        self.dsrm = DSRM(dims[-1], embed_dim, dsrm_prompts, dsrm_heads) if dsrm else None
        self.frm = nn.ModuleList(FRM(c, frm_reduction) for c in dims)
        self.ffm = nn.ModuleList(
            FFM(c, h, ffm_reduction) for c, h in zip(dims, stage_heads(ffm_heads, dims))
        )
        self.head = SegFormerHead(dims, head_channels, num_classes, dropout=head_dropout)
        self._embeddings: tuple[Tensor, Tensor] | None = None
        self._tokens: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ hooks
    def train(self, mode: bool = True) -> SegRGBX:
        super().train(mode)
        if self.maclip is not None:
            self.maclip.eval()  # frozen: always in evaluation mode
        return self

    def embeddings(self, rgb: Tensor, x: Tensor, meta: SampleMeta) -> tuple[Tensor, Tensor]:
        """S^r and S^m (B, D): MA-CLIP with each sample's modality LoRA, or the learnable
        per-modality embeddings when MA-CLIP is off."""
        from rsfusion.models.maclip import pool_key

        keys = [pool_key(m) if m else None for m in meta.modality]
        if len(keys) != rgb.shape[0]:
            raise ValueError(f"{len(keys)} modalities for a batch of {rgb.shape[0]} samples")
        if self.maclip is not None:
            with torch.no_grad():
                s_r, s_m = self.maclip.encode(rgb, x, keys)
            return s_r.to(rgb.dtype), s_m.to(rgb.dtype)
        table = self.modality_embed
        assert table is not None
        s_r = table["rgb"].expand(rgb.shape[0], -1)
        s_m = torch.stack([table[k or _NONE] for k in keys])
        return s_r, s_m

    def prepare(self, rgb: Tensor, x: Tensor, meta: SampleMeta) -> tuple[Tensor, Tensor]:
        """MA-CLIP's embeddings of the (normalised) inputs, kept for the later hooks."""
        self._embeddings = self.embeddings(rgb, x, meta)
        return rgb, x

    def _paired(self, pairing: str) -> tuple[Tensor, Tensor]:
        if self._embeddings is None:
            raise RuntimeError("SegRGB-X hooks ran without prepare()")
        return paired_embeddings(pairing, *self._embeddings)

    def before_stage(
        self, stage: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """This stage's prompt tokens for each stream (appended in every block)."""
        self._tokens = None
        if self.prompts is not None:
            e_r, e_x = self._paired(self.prompt_pairing)
            prompts = self.prompts[stage]
            self._tokens = (
                prompts(e_r, "rgb").to(r.data.dtype),
                prompts(e_x, "x").to(x.data.dtype),
            )
        return r, x

    def in_block(
        self, backbone: Backbone, stage: int, index: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """``E_hat = [E; M]`` through the block, then ``O_M`` dropped (section III-C)."""
        if self._tokens is None:
            return super().in_block(backbone, stage, index, r, x)
        p_r, p_x = self._tokens
        r = backbone.run_block(stage, index, r.with_extra(p_r), "rgb").drop_extra()[0]
        x = backbone.run_block(stage, index, x.with_extra(p_x), "x").drop_extra()[0]
        return r, x

    def after_stage(self, stage: int, r: Tensor, x: Tensor) -> StageOutput:
        """DSRM at the last stage, then FRM (the streams continue from the rectified maps) and
        FFM (the fused map for the head)."""
        if self.dsrm is not None and stage == len(self.frm) - 1:
            e_r, e_x = self._paired(self.dsrm_pairing)
            r, x = self.dsrm(r, e_r.to(r.dtype)), self.dsrm(x, e_x.to(x.dtype))
        r, x = self.frm[stage](r, x)
        return StageOutput(self.ffm[stage](r, x), r, x)

    def decode(
        self, fused: list[Tensor], rgb: list[Tensor], x: list[Tensor], size: tuple[int, int]
    ) -> Tensor | dict[str, Any]:
        self._embeddings = self._tokens = None
        return resize_logits(self.head(fused), size)


@register_model("segrgbx", recipe_options(SegRGBX))
def segrgbx(spec: ModelSpec) -> nn.Module:
    """SegRGB-X on the dual-stream engine; options from ``model.kwargs`` (see :class:`SegRGBX`)."""
    return build_engine(spec, SegRGBX, "SegRGB-X")
