"""The image encoder of Segment Anything (timm's ``samvit_*``) as a frozen engine backbone.

SAM's encoder is a plain ViT (patch 16, no class token) with an absolute position embedding,
windowed attention (14 x 14 windows) in most blocks, global attention in a few, and decomposed
relative position terms inside the attention. Its blocks are grouped into four "stages" ending
at the global-attention blocks (B: 2, 5, 8, 11; L: 5, 11, 17, 23; H: 7, 15, 23, 31), all at 1/16
resolution, as MoBaNet's SAM path walks it. Inputs are padded (right/bottom) to a multiple of 16,
the position embedding is resampled to the token grid and the relative-position tables of the
global blocks are interpolated to it (timm does both). SAM has no per-tap output norm: its conv
"neck" (to 256 channels) follows the last block only and is dropped here, so each stage hands
its raw block tokens on as a map [inf].

Weights: a SAM release checkpoint (``sam_vit_l_0b3195.pth``, keys ``image_encoder.*``), a timm
one, or a timm / ``hf-hub:`` name (``samvit_large_patch16.sa1b``): :func:`load_sam_weights`.

Example:
    >>> import torch
    >>> sam = SamBackbone("samvit_base_patch16", **TINY_SAM)
    >>> [s.depth for s in sam.stages], sam.taps
    ([2, 2, 2, 2], (1, 3, 5, 7))
    >>> state = sam.embed(torch.rand(1, 3, 40, 56))  # padded to 48 x 64: a 3 x 4 grid
    >>> state.hw, sam.stage_output(1, sam.run_block(1, 0, state)).shape
    ((3, 4), torch.Size([1, 32, 3, 4]))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed_nhwc
from timm.models.vision_transformer_sam import window_partition, window_unpartition
from torch import Tensor, nn

from rsfusion.errors import BlockSplitError, WeightsError, WeightsUnavailable
from rsfusion.models.backbones.base import Backbone, StageInfo, StreamState
from rsfusion.models.backbones.vit import default_taps
from rsfusion.models.backbones.weights import (
    FILE_SUFFIXES,
    LoadReport,
    _first,
    read_source,
    tensors_digest,
)
from rsfusion.models.base import ModelSpec

__all__ = ["TINY_SAM", "SamBackbone", "build_sam_backbone", "load_sam_weights"]

log = logging.getLogger(__name__)

#: A tiny SAM-like encoder for tests and docs: 8 blocks of width 32, 4 x 4 windows, global
#: attention in blocks 1, 3, 5 and 7 (the four taps), built for 64 px (a 4 x 4 grid).
TINY_SAM: dict[str, Any] = {
    "embed_dim": 32,
    "depth": 8,
    "num_heads": 2,
    "window_size": 4,
    "global_attn_indexes": (1, 3, 5, 7),
    "img_size": 64,
}
_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_DROPPED = ("neck.", "head.")  # SAM's conv neck and classifier: not part of this backbone


class SamBackbone(Backbone):
    """timm's ``VisionTransformerSAM`` walked stage by stage (the SAM image encoder).

    Blocks split into an attention half (windowed or global, with its residual) and an MLP
    half. Token states are (B, h*w, C) on the (h, w) grid; blocks see them as (B, h, w, C).

    Args:
        model_name: timm name, ``samvit_base_patch16`` / ``_large_`` / ``_huge_``.
        taps: last block of each stage (default: the global-attention blocks when there are
            four of them, else four evenly spaced groups).
        model_kwargs: passed to ``timm.create_model`` (``drop_path_rate``; ``embed_dim``,
            ``depth``, ``window_size``, ``global_attn_indexes``, ``img_size`` for tests). The
            default ``img_size`` (1024) keeps the released weights' tables as they are.
    """

    splits_blocks = True

    def __init__(
        self,
        model_name: str = "samvit_large_patch16",
        taps: Sequence[int] | None = None,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        self.sam = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        self.sam.neck = nn.Identity()  # the 256-channel neck follows the last block only
        self.name = model_name
        depth = len(self.sam.blocks)
        if taps is None:
            global_blocks = tuple(i for i, b in enumerate(self.sam.blocks) if b.window_size == 0)
            taps = global_blocks if len(global_blocks) == 4 else default_taps(depth)
        self.taps = tuple(int(t) for t in taps)
        if list(self.taps) != sorted(set(self.taps)) or not 0 <= self.taps[-1] < depth:
            raise ValueError(f"taps {self.taps} must increase and lie below the depth {depth}")
        self.patch = int(self.sam.patch_embed.patch_size[0])
        starts = (0, *(t + 1 for t in self.taps[:-1]))
        self._ranges = [(s, t + 1) for s, t in zip(starts, self.taps)]
        dim = int(self.sam.embed_dim)
        self.stages = [StageInfo(dim, self.patch, end - start) for start, end in self._ranges]
        self.stride = self.patch

    def embedding(self) -> nn.Module:
        return self.sam.patch_embed

    def pad(self, image: Tensor) -> Tensor:
        """Zero-pad right/bottom to a multiple of the patch size."""
        h, w = image.shape[-2:]
        ph, pw = (-h) % self.patch, (-w) % self.patch
        return F.pad(image, (0, pw, 0, ph)) if ph or pw else image

    def _embed(self, image: Tensor, embedding: nn.Module | None) -> StreamState:
        sam = self.sam
        grid = (embedding or sam.patch_embed)(self.pad(image))  # (B, h, w, C)
        if sam.pos_embed is not None:
            grid = grid + resample_abs_pos_embed_nhwc(sam.pos_embed, grid.shape[1:3])
        grid = sam.norm_pre(sam.patch_drop(sam.pos_drop(grid)))
        b, h, w, c = grid.shape
        return StreamState(grid.reshape(b, h * w, c), (h, w))

    def blocks(self, stage: int) -> Sequence[nn.Module]:
        start, end = self._ranges[stage]
        return list(self.sam.blocks[start:end])

    def _sam_block(self, stage: int, index: int) -> nn.Module:
        block = self.blocks(stage)[index]
        if not all(hasattr(block, p) for p in (*_BLOCK_PARTS, "window_size")):
            raise BlockSplitError(
                f"{self.name}: block type {type(block).__name__} is not timm's SAM Block, so it "
                "cannot be split into attention and MLP halves"
            )
        return block

    @staticmethod
    def _grid(state: StreamState) -> Tensor:
        b, _, c = state.data.shape
        return state.data.reshape(b, *state.hw, c)

    def _block(self, stage: int, index: int, state: StreamState) -> StreamState:
        out = self.blocks(stage)[index](self._grid(state))  # timm's own forward
        return state.with_data(out.reshape(state.data.shape))

    def _mixer(self, stage: int, index: int, state: StreamState) -> StreamState:
        """``t + DropPath(LayerScale(Attn(Norm1 t)))``, windowed where the block is."""
        block = self._sam_block(stage, index)
        t = self._grid(state)
        y = block.norm1(t)
        pad_hw = None
        if block.window_size > 0:
            y, pad_hw = window_partition(y, block.window_size)
        y = block.drop_path1(block.ls1(block.attn(y)))
        if block.window_size > 0:
            y = window_unpartition(y, block.window_size, state.hw, pad_hw)
        return state.with_data((t + y).reshape(state.data.shape))

    def _mlp(self, stage: int, index: int, state: StreamState) -> StreamState:
        """``t + DropPath(LayerScale(MLP(Norm2 t)))``."""
        block = self._sam_block(stage, index)
        t = state.data
        return state.with_data(t + block.drop_path2(block.ls2(block.mlp(block.norm2(t)))))

    def _stage_output(self, stage: int, state: StreamState, stream: str) -> Tensor:
        b, _, c = state.data.shape
        return state.data.transpose(1, 2).reshape(b, c, *state.hw)


def load_sam_weights(backbone: SamBackbone, source: str | Path) -> LoadReport:
    """Load SAM image-encoder weights into ``backbone`` in place.

    Reads a SAM release checkpoint (``image_encoder.*`` keys; the prompt encoder and mask
    decoder are dropped), a timm state dict, or a timm / ``hf-hub:`` name. The position
    embedding and the relative-position tables are resampled when the model was built for
    another input size; the conv neck is dropped (this backbone has none).

    Raises:
        WeightsUnavailable: no file, or a hub name that cannot be had (offline).
        WeightsError: the weights do not fit (another width or depth, missing tensors).
    """
    tensors, label = read_source(source)
    official = any(k.startswith("image_encoder.") for k in tensors)
    state: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in tensors.items():
        name = key
        if official:
            if not key.startswith("image_encoder."):
                dropped.append(key)
                continue
            name = key[len("image_encoder.") :].replace(".mlp.lin", ".mlp.fc")
        if name.startswith(_DROPPED):
            dropped.append(key)
            continue
        state[name] = value
    expected = backbone.sam.state_dict()
    dropped += [k for k in list(state) if k not in expected]
    state = {k: v for k, v in state.items() if k in expected}
    resized = _fit(state, expected)
    bad = [
        f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in state]
    if bad or missing:
        width = state.get("patch_embed.proj.weight")
        have = f"width {width.shape[0]}" if width is not None else "no patch embedding"
        depth = 1 + max(
            (int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1
        )
        problem = f"shapes do not fit: {_first(bad, 3)}" if bad else f"missing {_first(missing)}"
        raise WeightsError(
            f"{label} does not fit {backbone.name} (width {backbone.sam.embed_dim}, depth "
            f"{len(backbone.sam.blocks)}): the file has {have}, depth {depth}; {problem}. Fix: "
            "set model.backbone to the file's SAM variant or point model.weights at a matching "
            "file."
        )
    with torch.no_grad():
        backbone.sam.load_state_dict(state, strict=False)
    now = backbone.sam.state_dict()
    digest = tensors_digest({k: now[k] for k in state})
    return LoadReport(label, len(state), [], dropped, resized, digest)


def _fit(state: dict[str, Tensor], expected: dict[str, Tensor]) -> list[str]:
    """Resample the position embedding and relative-position tables to the model's sizes."""
    notes = []
    pos = state.get("pos_embed")
    want = expected.get("pos_embed")
    fits = pos is not None and want is not None and pos.ndim == 4
    if fits and pos.shape != want.shape and pos.shape[-1] == want.shape[-1]:
        state["pos_embed"] = resample_abs_pos_embed_nhwc(pos.float(), want.shape[1:3])
        notes.append(f"pos_embed: grid {tuple(pos.shape[1:3])} -> {tuple(want.shape[1:3])}")
    tables = [k for k in state if k.endswith(("rel_pos_h", "rel_pos_w")) and k in expected]
    for key in tables:
        t, w = state[key], expected[key]
        if t.shape != w.shape and t.ndim == 2 and t.shape[1] == w.shape[1]:
            line = F.interpolate(t.float().T[None], size=w.shape[0], mode="linear")
            state[key] = line[0].T.contiguous()
            notes.append(f"{key}: {t.shape[0]} -> {w.shape[0]} positions (linear)")
    return notes


def build_sam_backbone(spec: ModelSpec, kwargs: dict[str, Any]) -> SamBackbone:
    """The ``samvit_*`` backbone a config names, with ``model.weights`` loaded.

    Offline with no file: a loud warning and random init, or a :class:`WeightsError` with
    ``model.weights_required: true`` (the policy of every other backbone).
    """
    backbone = SamBackbone(spec.backbone, **kwargs)
    if not spec.weights:
        return backbone
    if Path(spec.weights).suffix in FILE_SUFFIXES and not Path(spec.weights).is_file():
        raise WeightsError(f"model.weights {spec.weights}: no such file")
    try:
        report = load_sam_weights(backbone, spec.weights)
    except WeightsUnavailable as err:
        from rsfusion.models.backbones.factory import weights_not_loaded

        weights_not_loaded(spec, err)  # the warning (or error) of every other backbone
        return backbone
    log.info("backbone %s: %s", spec.backbone, report.summary())
    return backbone
