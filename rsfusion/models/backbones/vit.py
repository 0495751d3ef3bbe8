"""timm Vision Transformers in the DINOv2 layout as frozen engine backbones (MoBaNet, CPAL).

The ViT's blocks are grouped into four "stages" ending at the taps MoBaNet uses:
blocks (2, 5, 8, 11) for ViT-S/B, (5, 11, 17, 23) for ViT-L, (9, 19, 29, 39) for ViT-G; all
taps at 1/patch resolution. Inputs are padded (right/bottom) to a multiple of the patch size
(256 -> 266 for patch 14); the engine crops the logits back.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch.nn.functional as F
from torch import Tensor, nn

from rsfusion.errors import BlockSplitError
from rsfusion.models.backbones.base import Backbone, StageInfo, StreamState

#: Tap blocks (0-based, inclusive) by depth, as MoBaNet's (ViT-S/B: 12 blocks, L: 24, G: 40).
DEFAULT_TAPS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 40: (9, 19, 29, 39)}


def default_taps(depth: int) -> tuple[int, ...]:
    """The paper's taps for 12/24/40 blocks, else four evenly spaced groups."""
    if depth in DEFAULT_TAPS:
        return DEFAULT_TAPS[depth]
    if depth < 4:
        return tuple(range(depth))
    return tuple(round(depth * (i + 1) / 4) - 1 for i in range(4))


class ViTBackbone(Backbone):
    """A timm VisionTransformer (DINOv2 layout) walked stage by stage.

    Blocks split into attention and MLP halves (timm's pre-norm ``Block``); extra (prompt)
    tokens join the attention like the class token. The final norm is applied at every tap.

    Args:
        model_name: timm name, e.g. ``vit_large_patch14_dinov2`` (``_reg4_`` variants too).
        taps: last block of each stage (default: :func:`default_taps`).
        model_kwargs: passed to ``timm.create_model`` (e.g. ``depth``, ``embed_dim`` for tests;
            ``drop_path_rate`` for stochastic depth).
    """

    splits_blocks = True
    accepts_extra_tokens = True

    def __init__(
        self,
        model_name: str = "vit_large_patch14_dinov2",
        taps: Sequence[int] | None = None,
        **model_kwargs: object,
    ) -> None:
        super().__init__()
        model_kwargs.setdefault("img_size", 518 if "dinov2" in model_name else 224)
        self.vit = timm.create_model(
            model_name, pretrained=False, num_classes=0, dynamic_img_size=True, **model_kwargs
        )
        self.name = model_name
        depth = len(self.vit.blocks)
        self.taps = tuple(taps) if taps is not None else default_taps(depth)
        if list(self.taps) != sorted(set(self.taps)) or self.taps[-1] >= depth:
            raise ValueError(f"taps {self.taps} must increase and lie below the depth {depth}")
        self.patch = int(self.vit.patch_embed.patch_size[0])
        starts = (0, *(t + 1 for t in self.taps[:-1]))
        self._ranges = [(s, t + 1) for s, t in zip(starts, self.taps)]
        dim = int(self.vit.embed_dim)
        self.stages = [StageInfo(dim, self.patch, end - start) for start, end in self._ranges]
        self.stride = self.patch

    def embedding(self) -> nn.Module:
        return self.vit.patch_embed

    def pad(self, image: Tensor) -> Tensor:
        """Zero-pad right/bottom to a multiple of the patch size."""
        h, w = image.shape[-2:]
        ph, pw = (-h) % self.patch, (-w) % self.patch
        return F.pad(image, (0, pw, 0, ph)) if ph or pw else image

    def _embed(self, image: Tensor, embedding: nn.Module | None) -> StreamState:
        image = self.pad(image)
        tokens = (embedding or self.vit.patch_embed)(image)  # (B, h, w, C): dynamic size
        hw = (tokens.shape[1], tokens.shape[2])
        tokens = self.vit.norm_pre(self.vit.patch_drop(self.vit._pos_embed(tokens)))
        return StreamState(tokens, hw, int(self.vit.num_prefix_tokens))

    def blocks(self, stage: int) -> Sequence[nn.Module]:
        start, end = self._ranges[stage]
        return list(self.vit.blocks[start:end])

    def _timm_block(self, stage: int, index: int) -> nn.Module:
        block = self.blocks(stage)[index]
        parts = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
        if not all(hasattr(block, p) for p in parts):
            raise BlockSplitError(
                f"{self.name}: block type {type(block).__name__} is not a timm pre-norm Block, "
                "so it cannot be split into attention and MLP halves"
            )
        return block

    def _block(self, stage: int, index: int, state: StreamState) -> StreamState:
        # timm's own forward: attention sees every token (prefix, patches and extra prompts)
        return state.with_data(self.blocks(stage)[index](state.data))

    def _mixer(self, stage: int, index: int, state: StreamState) -> StreamState:
        """``t + DropPath(LayerScale(Attn(Norm1 t)))`` (timm ``Block``)."""
        block = self._timm_block(stage, index)
        t = state.data
        return state.with_data(t + block.drop_path1(block.ls1(block.attn(block.norm1(t)))))

    def _mlp(self, stage: int, index: int, state: StreamState) -> StreamState:
        """``t + DropPath(LayerScale(MLP(Norm2 t)))`` (timm ``Block``)."""
        block = self._timm_block(stage, index)
        t = state.data
        return state.with_data(t + block.drop_path2(block.ls2(block.mlp(block.norm2(t)))))

    def stage_modules(self, stage: int) -> tuple[list[nn.Module], list[nn.Module]]:
        last = stage == len(self.stages) - 1
        return [], [self.vit.norm] if last else []

    def _stage_output(self, stage: int, state: StreamState, stream: str) -> Tensor:
        patches = self.vit.norm(state.data)[:, state.prefix :]
        b, _, c = patches.shape
        return patches.transpose(1, 2).reshape(b, c, *state.hw)
