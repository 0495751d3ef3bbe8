"""timm Swin Transformers as frozen engine backbones (KTB, Cai et al. CVPR 2025).

Four stages at strides 4..32 with widths ``embed * 2**i``. States between hooks are tokens
(B, h*w, C); each block runs on the (B, h, w, C) grid inside the adapter. The patch merging
leading into stage ``i + 1`` (timm's ``layers[i + 1].downsample``) is :meth:`next_stage`,
shared by both streams. Inputs are zero-padded right/bottom to a multiple of the total stride
(32); the engine crops the logits back.

Window attention follows the segmentation Swin (Microsoft's Swin-Transformer-Semantic-
Segmentation, mmseg): every block keeps its window and shift whatever the grid (timm's
``always_partition``), and a grid that is not a multiple of the window is zero-padded *before*
the cyclic shift, with the shift mask built on the padded grid. Where the grid is a multiple of
the window this is exactly timm's own forward; elsewhere timm (shift, then pad) differs at the
bottom/right windows, so the sub-steps are computed here with timm's modules, never
``block.forward``. Any input size runs without rebuilding the model.

Per-stage output norms: stages 1-3 get LayerNorms (initialised to weight 1, bias 0; loaded
from segmentation checkpoints' ``norm0..norm2``), stage 4 uses the classifier's final
``norm`` (``norm3`` in segmentation checkpoints). The X stream has a frozen copy of all four
(:meth:`SwinBackbone.sync_x_norms` after loading weights).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, window_partition, window_reverse
from torch import Tensor, nn

from rsfusion.models.backbones.base import Backbone, StageInfo, StreamState

__all__ = ["SwinBackbone", "shift_window_mask"]

#: Attention logit added between tokens of different regions of a shifted window (as Swin).
MASK_VALUE = -100.0


def shift_window_mask(
    grid: tuple[int, int],
    window: tuple[int, int],
    shift: tuple[int, int],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The shifted-window attention mask (num_windows, N, N) on a padded ``grid``.

    After the cyclic shift, the last ``shift`` rows (columns) wrapped around from the top
    (left) and the ``window - shift`` before them are separate regions; tokens of one window
    attend only within their region (0 inside, ``MASK_VALUE`` across).
    """
    labels = []
    for n, w, s in zip(grid, window, shift):
        region = torch.zeros(n, dtype=torch.long, device=device)
        if s:
            region[n - w :] = 1
            region[n - s :] = 2
        labels.append(region)
    label = labels[0][:, None] * 3 + labels[1][None, :]  # (H, W)
    wins = window_partition(label[None, :, :, None], window).reshape(-1, window[0] * window[1])
    differ = wins[:, :, None] != wins[:, None, :]
    return torch.zeros(differ.shape, dtype=dtype, device=device).masked_fill(differ, MASK_VALUE)


class SwinBackbone(Backbone):
    """A timm SwinTransformer walked block by block (see module docstring).

    Args:
        model_name: timm name, e.g. ``swin_base_patch4_window12_384``.
        model_kwargs: passed to ``timm.create_model`` (e.g. ``embed_dim``, ``depths``,
            ``num_heads``, ``window_size`` for tests). ``strict_img_size=False`` and
            ``always_partition=True`` are the defaults here; ``drop_path_rate`` defaults to 0
            (it acts in the ``stochastic_depth`` and ``trainable`` modes only).
    """

    splits_blocks = True

    def __init__(self, model_name: str = "swin_base_patch4_window12_384", **model_kwargs: object):
        super().__init__()
        if "pretrained" in model_kwargs:
            raise ValueError("pretrained is fixed by SwinBackbone: load weights separately")
        model_kwargs.setdefault("strict_img_size", False)
        model_kwargs.setdefault("always_partition", True)
        model_kwargs.setdefault("drop_path_rate", 0.0)
        model_kwargs["num_classes"] = 0
        swin = timm.create_model(model_name, pretrained=False, **model_kwargs)
        if not isinstance(swin, SwinTransformer):
            raise ValueError(f"{model_name} is a {type(swin).__name__}, not a timm SwinTransformer")
        for module in swin.modules():  # timm leaves Swin's window attention off SDPA by default
            if hasattr(module, "fused_attn"):
                module.fused_attn = True
        self.swin = swin
        self.name = model_name
        self.patch = int(max(swin.patch_embed.patch_size))
        self.stride = self.patch * 2 ** (len(swin.layers) - 1)
        self.stages = [
            StageInfo(int(info["num_chs"]), int(info["reduction"]), len(layer.blocks))
            for info, layer in zip(swin.feature_info, swin.layers)
        ]
        eps = float(getattr(swin.norm, "eps", 1e-5))
        self.stage_norms = nn.ModuleList(
            nn.LayerNorm(s.channels, eps=eps) for s in self.stages[:-1]
        )
        self.x_norms = nn.ModuleList(
            copy.deepcopy(self.output_norm(i)) for i in range(len(self.stages))
        )
        self._masks: dict[tuple, Tensor] = {}
        self.freeze()  # eval mode until the engine's builder sets the configured mode

    def output_norm(self, stage: int, stream: str = "rgb") -> nn.Module:
        """The LayerNorm applied to a stage's output: pre-trained (RGB) or its frozen copy (X)."""
        if stream == "x":
            return self.x_norms[stage]
        if stream != "rgb":
            raise ValueError(f"stream must be 'rgb' or 'x', got {stream!r}")
        return self.swin.norm if stage == len(self.stages) - 1 else self.stage_norms[stage]

    def sync_x_norms(self) -> None:
        """Copy the RGB output norms into the X stream's (after loading weights)."""
        with torch.no_grad():
            for i, norm in enumerate(self.x_norms):
                norm.load_state_dict(self.output_norm(i).state_dict())

    def embedding(self) -> nn.Module:
        return self.swin.patch_embed

    def pad(self, image: Tensor) -> Tensor:
        """Zero-pad right/bottom to a multiple of the total stride (32)."""
        h, w = image.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        return F.pad(image, (0, pw, 0, ph)) if ph or pw else image

    def _embed(self, image: Tensor, embedding: nn.Module | None) -> StreamState:
        grid = (embedding or self.swin.patch_embed)(self.pad(image))  # (B, h, w, C)
        pos = getattr(self.swin, "absolute_pos_embed", None)
        if pos is not None:
            grid = grid + _fit_pos(pos, grid.shape[1:3])
        b, h, w, c = grid.shape
        return StreamState(grid.reshape(b, h * w, c), (h, w), 0)

    def blocks(self, stage: int) -> Sequence[nn.Module]:
        return list(self.swin.layers[stage].blocks)

    def _mixer(self, stage: int, index: int, state: StreamState) -> StreamState:
        """``t + DropPath(W-MSA(norm1 t))`` on the (shifted) window grid."""
        block = self.blocks(stage)[index]
        t = state.data
        b, n, c = t.shape
        attn = self.window_attention(block, block.norm1(t).reshape(b, *state.hw, c))
        return StreamState(t + block.drop_path1(attn.reshape(b, n, c)), state.hw, 0)

    def _mlp(self, stage: int, index: int, state: StreamState) -> StreamState:
        """``t + DropPath(MLP(norm2 t))``."""
        block = self.blocks(stage)[index]
        t = state.data
        return StreamState(t + block.drop_path2(block.mlp(block.norm2(t))), state.hw, 0)

    def window_attention(self, block: nn.Module, x: Tensor) -> Tensor:
        """(Shifted-)window attention of one block on a normalised (B, H, W, C) grid."""
        _, h, w, c = x.shape
        window, shift = tuple(block.window_size), tuple(block.shift_size)
        ph, pw = (-h) % window[0], (-w) % window[1]
        x = F.pad(x, (0, 0, 0, pw, 0, ph))  # zeros after norm1, before the shift (as Swin-seg)
        grid = (h + ph, w + pw)
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            mask = self._mask(grid, window, shift, x)
        windows = window_partition(x, window).reshape(-1, window[0] * window[1], c)
        out = block.attn(windows, mask=mask).reshape(-1, window[0], window[1], c)
        out = window_reverse(out, window, *grid)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2))
        return out[:, :h, :w]

    def _mask(self, grid: tuple[int, int], window: tuple, shift: tuple, like: Tensor) -> Tensor:
        key = (grid, window, shift, like.device, like.dtype)
        if key not in self._masks:
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[key] = shift_window_mask(grid, window, shift, like.device, like.dtype)
        return self._masks[key]

    def stage_modules(self, stage: int) -> tuple[list[nn.Module], list[nn.Module]]:
        entering = [self.swin.layers[stage].downsample] if stage else []
        return entering, [self.output_norm(stage), self.x_norms[stage]]

    def _stage_output(self, stage: int, state: StreamState, stream: str) -> Tensor:
        tokens = self.output_norm(stage, stream)(state.data)
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *state.hw)

    def _next_stage(self, stage: int, state: StreamState) -> StreamState:
        """Patch merging into stage ``stage + 1`` (timm ``layers[stage + 1].downsample``)."""
        if stage + 1 >= len(self.stages):
            return state
        b, _, c = state.data.shape
        grid = self.swin.layers[stage + 1].downsample(state.data.reshape(b, *state.hw, c))
        b, h, w, c = grid.shape
        return StreamState(grid.reshape(b, h * w, c), (h, w), 0)


def _fit_pos(pos: Tensor, hw: tuple[int, int]) -> Tensor:
    """An absolute position embedding (1, N, C) or (1, H, W, C) as (1, h, w, C) (bicubic)."""
    if pos.ndim == 3:
        side = math.isqrt(pos.shape[1])
        pos = pos.reshape(1, side, side, pos.shape[2])
    if tuple(pos.shape[1:3]) != tuple(hw):
        image = F.interpolate(pos.permute(0, 3, 1, 2), size=hw, mode="bicubic", align_corners=False)
        pos = image.permute(0, 2, 3, 1)
    return pos
