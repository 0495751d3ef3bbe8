"""SegFormer's Mix Transformer (MiT-B0..B5) as an engine backbone (SegRGB-X, CMX).

MiT (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021) has four stages at strides 4..32. Each stage is an overlapping
patch embedding (a strided conv + LayerNorm), blocks of efficient self-attention (keys and
values from a spatially reduced grid, ratio ``sr`` 8/4/2/1) and Mix-FFN (an MLP with a 3x3
depthwise conv between its two linears), then an output LayerNorm. The next stage's patch
embedding reads that normalised output map, so the adapter declares :attr:`reads_output`: a
map a recipe rewrites after a stage (CMX's FRM) is what the next stage embeds
(:meth:`Backbone.continue_from`), and :meth:`next_stage` takes that map.

The modules are segmentation-models-pytorch's ``MixVisionTransformer`` (``self.mit``; parameter
names as in SegFormer's checkpoints), built with SegFormer's B0..B5 settings (smp's
``mix_transformer_encoders``). States between hooks are tokens (B, N, C) on the stage's
(h, w) grid. The block sub-steps are computed here with those modules, never ``Block.forward``
(which takes a map and has no room for extra tokens): with extra (prompt) tokens appended
(:meth:`StreamState.with_extra`) attention queries come from every token and its keys / values
are the spatially reduced patch grid followed by the prompts unreduced; Mix-FFN's depthwise conv
runs on the patch grid only, the prompts skip it. Without extra tokens every step is smp's own
arithmetic, in the same order.

Inputs are zero-padded right/bottom to a multiple of 32 (the total stride); the engine crops
the logits back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from segmentation_models_pytorch.encoders.mix_transformer import (
    MixVisionTransformer,
    mix_transformer_encoders,
)
from torch import Tensor, nn

from rsfusion.models.backbones.base import Backbone, StageInfo, StreamState

__all__ = ["MIT_NAMES", "MiTBackbone", "mit_settings"]

#: The MiT variants SegFormer defines.
MIT_NAMES: tuple[str, ...] = tuple(f"mit_b{i}" for i in range(6))

#: Keys of smp's settings that its encoder wrapper (not ``MixVisionTransformer``) consumes.
_ENCODER_ONLY = ("out_channels",)


def mit_settings(model_name: str) -> dict[str, Any]:
    """SegFormer's construction settings of ``mit_b0``..``mit_b5`` (Xie et al., NeurIPS 2021,
    Table 6; as smp's ``mix_transformer_encoders``): embed dims, depths, heads, spatial
    reduction ratios, MLP ratio 4, ``qkv_bias=True``, LayerNorm eps 1e-6."""
    if model_name not in MIT_NAMES:
        raise ValueError(f"unknown MiT variant {model_name!r}; expected one of {MIT_NAMES}")
    params = dict(mix_transformer_encoders[model_name]["params"])
    for key in _ENCODER_ONLY:
        params.pop(key, None)
    return {k: list(v) if isinstance(v, list) else v for k, v in params.items()}


class MiTBackbone(Backbone):
    """smp's ``MixVisionTransformer`` walked block by block (see module docstring).

    Args:
        model_name: ``mit_b0`` .. ``mit_b5``.
        model_kwargs: override SegFormer's settings (:func:`mit_settings`), e.g.
            ``embed_dims``, ``depths``, ``num_heads`` for tests. ``drop_path_rate`` defaults
            to 0 (SegFormer trains with 0.1); it acts in the ``stochastic_depth`` and
            ``trainable`` modes only.
    """

    splits_blocks = True
    reads_output = True
    accepts_extra_tokens = True
    stride = 32

    def __init__(self, model_name: str = "mit_b0", **model_kwargs: Any) -> None:
        super().__init__()
        if "pretrained" in model_kwargs:
            raise ValueError("pretrained is fixed by MiTBackbone: load weights separately")
        settings = mit_settings(model_name)
        settings["drop_path_rate"] = 0.0
        settings.update(model_kwargs)
        dims, depths = list(settings["embed_dims"]), list(settings["depths"])
        if len(dims) != 4 or len(depths) != 4:
            raise ValueError(f"MiT has 4 stages: got embed_dims {dims}, depths {depths}")
        self.mit = MixVisionTransformer(**settings)
        self.name = model_name
        self.stages = [
            StageInfo(int(dim), 4 * 2**i, int(depth))
            for i, (dim, depth) in enumerate(zip(dims, depths))
        ]

    # ------------------------------------------------------------------ modules
    def patch_embed(self, stage: int) -> nn.Module:
        """The overlapping patch embedding entering ``stage`` (``patch_embed{stage + 1}``)."""
        return self.mit.get_submodule(f"patch_embed{stage + 1}")

    def output_norm(self, stage: int) -> nn.Module:
        """The LayerNorm applied to a stage's output (``norm{stage + 1}``)."""
        return self.mit.get_submodule(f"norm{stage + 1}")

    def embedding(self) -> nn.Module:
        return self.mit.patch_embed1

    def blocks(self, stage: int) -> Sequence[nn.Module]:
        return list(self.mit.get_submodule(f"block{stage + 1}"))

    def stage_modules(self, stage: int) -> tuple[list[nn.Module], list[nn.Module]]:
        entering = [self.patch_embed(stage)] if stage else []
        return entering, [self.output_norm(stage)]

    # ------------------------------------------------------------------ walk
    def pad(self, image: Tensor) -> Tensor:
        """Zero-pad right/bottom to a multiple of the total stride (32)."""
        h, w = image.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        return F.pad(image, (0, pw, 0, ph)) if ph or pw else image

    def _embed(self, image: Tensor, embedding: nn.Module | None) -> StreamState:
        module = self.mit.patch_embed1 if embedding is None else embedding
        return _token_state(module(self.pad(image)))

    def _mixer(self, stage: int, index: int, state: StreamState) -> StreamState:
        """``t + DropPath(EfficientAttention(norm1 t))`` (SegFormer, Xie et al. 2021, Sec. 3.1)."""
        block = self.blocks(stage)[index]
        t = state.data
        out = self.efficient_attention(block.attn, block.norm1(t), state)
        return state.with_data(t + block.drop_path(out))

    def _mlp(self, stage: int, index: int, state: StreamState) -> StreamState:
        """``t + DropPath(MixFFN(norm2 t))``: fc1, 3x3 depthwise conv on the patch grid (extra
        tokens skip it), GELU, fc2 (Mix-FFN, Xie et al. 2021, Sec. 3.1)."""
        block = self.blocks(stage)[index]
        mlp = block.mlp
        t = state.data
        hidden = state.map_patches(mlp.dwconv.dwconv, mlp.fc1(block.norm2(t)))
        out = mlp.drop(mlp.fc2(mlp.drop(mlp.act(hidden))))
        return state.with_data(t + block.drop_path(out))

    def efficient_attention(self, attn: nn.Module, x: Tensor, state: StreamState) -> Tensor:
        """SegFormer's efficient self-attention (Xie et al. 2021, Sec. 3.1, Eq. 2) of smp's
        ``Attention`` module on normalised tokens ``x`` laid out as ``state``.

        Queries: every token. Keys / values: the patch tokens reduced by ``sr_ratio`` (a strided
        conv on the (h, w) grid, then LayerNorm) where ``sr_ratio > 1``, with the prefix and
        extra tokens unreduced around them in the state's layout.
        """
        b, n, c = x.shape
        heads = attn.num_heads
        q = attn.q(x).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
        source = x
        if attn.sr_ratio > 1:
            prefix, patches, extra = state.split(x)
            grid = patches.transpose(1, 2).reshape(b, c, *state.hw)
            reduced = attn.norm(attn.sr(grid).reshape(b, c, -1).permute(0, 2, 1))
            source = state.join(prefix, reduced, extra)
        kv = attn.kv(source).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        weights = attn.attn_drop(((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, n, c)
        return attn.proj_drop(attn.proj(out))

    def _stage_output(self, stage: int, state: StreamState, stream: str) -> Tensor:
        tokens = self.output_norm(stage)(state.patches())
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *state.hw).contiguous()

    def _next_stage(self, stage: int, state: StreamState) -> StreamState:
        """Overlapping patch embedding of the stage's (normalised, possibly rewritten) output map
        into stage ``stage + 1`` (``patch_embed{stage + 2}``)."""
        if stage + 1 >= len(self.stages):
            return state
        if state.is_tokens:
            raise ValueError(
                f"{self.name}: the next stage embeds the stage's output map (B, C, H, W); "
                "pass the state through continue_from first, not the raw block tokens"
            )
        return _token_state(self.patch_embed(stage + 1)(state.data))


def _token_state(grid: Tensor) -> StreamState:
    """A patch-embedding map (B, C, h, w) as a token state (B, h*w, C) on (h, w)."""
    h, w = int(grid.shape[-2]), int(grid.shape[-1])
    return StreamState(grid.flatten(2).transpose(1, 2), (h, w), 0)
