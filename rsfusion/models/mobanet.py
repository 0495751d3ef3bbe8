"""MoBaNet (arXiv 2026): parameter-efficient, modality-balanced symmetric fusion on a frozen VFM.

Recipe parts on the dual-stream engine: a trainable copy of the RGB patch embedding for X (DSM
repeated to 3 channels); CPIA, the cross-modal prompt-injected adapter, in one of its two forms
(the authors' released code has both):

* ``cpia="prompt"`` (the DINOv2 path, the paper's main results): one CPIA per stage prompts the
  patch tokens entering the stage, ``x_m += u + p_m`` (ratio 1/4);
* ``cpia="adapter"`` (the SAM path): in every block, after the frozen block has run on both
  streams, that block's own CPIA generates the per-modality prompts ``u + p_m`` from the two
  streams' tokens and each stream's bottleneck adapter (C -> C/16, + Linear(prompt) C -> C/16,
  ReLU, dropout .1, C/16 -> C zero-initialised) adds its output to the tokens.

Then DGFM fusion of each stage's maps; a shared 1x1 projection C->256 of the fused, RGB and X
maps; a UPerNet head (64 ch) on the fused pyramid; RGB and X auxiliary heads on the stage-1 maps
(trained on hard pixels with ``model.aux_loss.mode=hard``; MCRM masking with
``model.masking.mode=mcrm``).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from rsfusion.models.backbones.base import Backbone, StreamState, as_tokens, tokens_like
from rsfusion.models.backbones.factory import LITE0_WEIGHTS, build_backbone, load_backbone_weights
from rsfusion.models.base import ModelSpec
from rsfusion.models.engine import Recipe, build_engine, recipe_options, resize_logits
from rsfusion.models.fusion import DGFM
from rsfusion.models.heads import AuxHead, UPerNetHead
from rsfusion.models.peft import (
    BottleneckAdapter,
    CrossModalPrompt,
    prompt_streams,
    stream_adapters,
)
from rsfusion.registry import register_model

__all__ = ["LITE0_WEIGHTS", "MoBaNet", "build_backbone", "load_backbone_weights", "mobanet"]


class MoBaNet(Recipe):
    """MoBaNet's trainable parts: X embedding, CPIA, DGFM, projections, UPerNet + aux heads.

    Hooks (README hook table): ``embed_x`` trainable copy; ``before_stage`` CPIA prompts
    (``cpia='prompt'``); ``in_block`` the shared blocks, then, with ``cpia='adapter'``, each
    block's CPIA and prompt-injected adapters; ``after_stage`` DGFM; ``decode`` projections,
    UPerNet and the aux heads.

    Args:
        backbone: the frozen backbone (its stages give the channels).
        num_classes: output classes.
        prompt_ratio: CPIA bottleneck ratio r (1/4 in MoBaNet).
        cpia: ``"prompt"`` (tokens prompted before each stage, the DINOv2 path) or
            ``"adapter"`` (prompt-injected adapters in every block, the SAM path).
        cpia_scope: with ``cpia="adapter"``: ``"block"`` (default, the released code) gives
            every block its own CPIA, which reads that block's outputs and feeds each stream's
            adapter its own prompt ``u + p_m``; ``"stage"`` is this package's reading before
            the released code was read (one CPIA per stage computing the shared ``u`` from the
            tokens entering the stage, for all of its blocks; ``gamma_m`` and ``beta_m`` then
            go unused), kept so that checkpoints trained with it still load and run.
        dgfm_hidden: DGFM reduction width (default C // 8: 128 for ViT-L).
        proj_dim: shared projection width (256).
        head_channels: UPerNet width (64).
    """

    embed_parts = ("x_embed",)
    stage_parts = {"prompts": "before", "dgfm": "after", "proj": "after"}
    #: the role names before one name per role (checkpoints written before 2026-12-07)
    renamed = {"cpia.": "prompts.", "aux_rgb.": "head_rgb.", "aux_x.": "head_x."}
    block_parts = ("adapters.rgb", "adapters.x", "block_prompts")

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        prompt_ratio: float = 0.25,
        cpia: Literal["prompt", "adapter"] = "prompt",
        cpia_scope: Literal["block", "stage"] = "block",
        dgfm_hidden: int | None = None,
        proj_dim: int = 256,
        head_channels: int = 64,
    ) -> None:
        super().__init__()
        if cpia not in ("prompt", "adapter"):
            raise ValueError(f"MoBaNet cpia must be 'prompt' or 'adapter', got {cpia!r}")
        if cpia_scope not in ("block", "stage"):
            raise ValueError(f"MoBaNet cpia_scope must be 'block' or 'stage', got {cpia_scope!r}")
        dims = [s.channels for s in backbone.stages]
        self.cpia_mode = cpia
        self.cpia_scope = cpia_scope if cpia == "adapter" else "stage"
        self.x_embed = self.copy_embedding(backbone)
        inputs = backbone.stage_input_channels()
        if self.cpia_scope == "stage":  # built first: the random init of older versions
            self.prompts = nn.ModuleList(CrossModalPrompt(c, prompt_ratio) for c in inputs)
        if cpia == "adapter":
            if inputs != dims:
                raise ValueError(
                    "MoBaNet's prompt-injected adapters need blocks of constant width (ViT/SAM); "
                    f"backbone {backbone.name} changes width inside stages: use cpia=prompt"
                )
            widths = [[c] * s.depth for c, s in zip(dims, backbone.stages)]
            self.adapters = stream_adapters(widths, lambda c: BottleneckAdapter(c, prompt_dim=c))
            if self.cpia_scope == "block":
                self.block_prompts = nn.ModuleList(
                    nn.ModuleList(CrossModalPrompt(c, prompt_ratio) for c in stage)
                    for stage in widths
                )
        self.dgfm = nn.ModuleList(DGFM(c, dgfm_hidden or max(c // 8, 1)) for c in dims)
        self.proj = nn.ModuleList(nn.Conv2d(c, proj_dim, 1, bias=False) for c in dims)
        self.head = UPerNetHead([proj_dim] * len(dims), head_channels, num_classes=num_classes)
        self.head_rgb = AuxHead(proj_dim, proj_dim, num_classes)
        self.head_x = AuxHead(proj_dim, proj_dim, num_classes)
        self._prompt: Tensor | None = None

    def before_stage(
        self, stage: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        if self.cpia_mode == "prompt":
            return prompt_streams(self.prompts[stage], r, x)
        if self.cpia_scope == "stage":
            tokens = as_tokens(r.patches()), as_tokens(x.patches())
            self._prompt = self.prompts[stage].prompt(*tokens)
        return r, x

    def in_block(
        self, backbone: Backbone, stage: int, index: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """The shared block on both streams; with ``cpia='adapter'`` then the block's
        prompt-injected adapters on its outputs (each with its own residual)."""
        r, x = super().in_block(backbone, stage, index, r, x)
        if self.cpia_mode != "adapter":
            return r, x
        tr, tx = as_tokens(r.patches()), as_tokens(x.patches())
        if self.cpia_scope == "block":
            pr, px = self.block_prompts[stage][index].stream_prompts(tr, tx)
        else:
            pr = px = self._prompt
        ar, ax = self.adapters["rgb"][stage][index], self.adapters["x"][stage][index]
        r = r.with_patches(tokens_like(tr + ar(tr, pr), r.patches()))
        x = x.with_patches(tokens_like(tx + ax(tx, px), x.patches()))
        return r, x

    def after_stage(self, stage: int, r: Tensor, x: Tensor) -> Tensor:
        return self.dgfm[stage](r, x)

    def decode(
        self, fused: list[Tensor], rgb: list[Tensor], x: list[Tensor], size: tuple[int, int]
    ) -> Tensor | dict[str, Any]:
        out = resize_logits(self.head([p(f) for p, f in zip(self.proj, fused)]), size)
        if not self.training:
            return out
        aux = {
            "rgb": resize_logits(self.head_rgb(self.proj[0](rgb[0])), size),
            "x": resize_logits(self.head_x(self.proj[0](x[0])), size),
        }
        return {"out": out, "aux": aux}


@register_model("mobanet", recipe_options(MoBaNet))
def mobanet(spec: ModelSpec) -> nn.Module:
    """MoBaNet on the dual-stream engine; recipe options from ``model.kwargs``."""
    return build_engine(spec, MoBaNet, "MoBaNet")
