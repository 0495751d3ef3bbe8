"""InternImage (DCNv3 backbone) as an engine backbone (CPAL; the README's CPAL section).

InternImage (Wang et al., "InternImage: Exploring Large-Scale Vision Foundation Models with
Deformable Convolutions", CVPR 2023, Sec. 3.2, Fig. 3) is a stem (two stride-2 3x3 convs with
LayerNorms, GELU between: stride 4) and four levels of ``C * 2**i`` channels. A block is a
DCNv3 half (:class:`~rsfusion.models.backbones.dcnv3.DCNv3`) and an MLP half, each with its
residual; a level ends with a LayerNorm (where the variant has one) and the next level starts
with a stride-2 3x3 conv + LayerNorm (``levels.{i}.downsample``, stored at the end of level
``i`` as in the official checkpoints).

Module and parameter names follow the authors' classification model
(``classification/models/intern_image.py``; the segmentation backbone
``segmentation/mmseg_custom/models/backbones/intern_image.py`` has the same layout):
``patch_embed.*``, ``levels.{i}.blocks.{j}.{norm1,dcn,norm2,mlp,gamma1,gamma2,res_post_norm1,
res_post_norm2}``, ``levels.{i}.norm``, ``levels.2.post_norms.{k}``, ``levels.{i}.downsample``;
LayerNorms sit inside ``nn.Sequential`` wrappers (with parameter-free permutes) exactly where
the authors' ``build_norm_layer`` puts them (``norm1.0.weight``, ``dw_conv.1.1.weight``,
``patch_embed.norm1.1.weight``), so official state dicts load without renames
(:mod:`rsfusion.models.backbones.internimage_weights`).

Variant settings (:func:`internimage_settings`), each from the authors' files (repository
OpenGVLab/InternImage):

* ``channels``, ``depths``, ``groups``, ``mlp_ratio`` (4.0 everywhere), ``offset_scale``,
  ``layer_scale``, ``post_norm``: the ImageNet configs ``classification/configs/
  internimage_{t,s,b}_1k_224.yaml``, ``internimage_{l,xl}_22kto1k_384.yaml``,
  ``internimage_h_22kto1k_640.yaml`` (and ``_384``), ``internimage_g_22kto1k_512.yaml``; keys
  a config leaves out take ``classification/config.py``'s defaults (LAYER_SCALE None,
  POST_NORM / RES_POST_NORM / LEVEL2_POST_NORM / CENTER_FEATURE_SCALE / REMOVE_CENTER False,
  DW_KERNEL_SIZE None = the DCN kernel 3). T: 64, (4, 4, 18, 4), (4, 8, 16, 32), offset 1,
  no layer scale, pre-norm. S: 80, (4, 4, 21, 4), (5, 10, 20, 40), layer scale 1e-5,
  post-norm. B: 112, (4, 4, 21, 4), (7, 14, 28, 56), 1e-5, post-norm. L: 160,
  (5, 5, 22, 5), (10, 20, 40, 80), offset 2, 1e-5, post-norm. XL: 192, (5, 5, 24, 5),
  (12, 24, 48, 96), offset 2, 1e-5, post-norm. H: 320, (6, 6, 32, 6), (10, 20, 40, 80),
  offset 1, no layer scale, ``dw_kernel_size`` 5, ``res_post_norm``, ``level2_post_norm``
  at block ids (5, 11, 17, 23, 29), ``center_feature_scale`` (as CPAL's InternImage-H).
  G: 512, (2, 2, 48, 4), (16, 32, 64, 128), dw 5, post-norm, level-2 post-norms every 6th
  block, centre feature scale.
* The segmentation configs (``segmentation/configs/ade20k/upernet_internimage_*``) build the
  same architectures with ``layer_scale=1.0`` for T..XL: S..XL checkpoints carry their trained
  ``gamma`` values anyway, and T's classification checkpoint has none (a segmentation
  checkpoint of T does: build it with ``layer_scale=1.0``). Their ``drop_path_rate`` (T .2,
  S .3, B/L/XL .4, H .5; CPAL .5) is not a default here: ``drop_path_rate`` defaults to 0 and
  acts in the ``stochastic_depth`` / ``trainable`` modes only; the rule is the authors' linear
  ramp from 0 over all blocks (``drop_path_type='uniform'``: the same rate everywhere).
* Fixed as in every config: GELU, LayerNorm (eps 1e-6) as the main norm, DCN kernel 3, stride 1,
  pad 1, dilation 1, ``drop_rate`` 0 (dropout after the stem and in the MLP; an option).

The two halves of a block are exactly the authors' ``InternImageLayer`` arithmetic, chosen by
the variant: with a layer scale, ``x + DropPath(gamma1 * DCN(norm1 x))`` (pre-norm) or
``x + DropPath(gamma1 * norm1(DCN x))`` (post-norm; the authors' layer-scale branch ignores
``res_post_norm``); without, ``x + DropPath(norm1(DCN x))`` (post-norm),
``x + DropPath(res_post_norm1(DCN(norm1 x)))`` (res-post-norm, H) or
``x + DropPath(DCN(norm1 x))``; the MLP half likewise with ``norm2`` / ``gamma2`` /
``res_post_norm2``. The level-2 post-norms of H/G (``levels.2.post_norms``), which the authors
apply in the level's loop right after blocks ``level2_post_norm_block_ids``, are applied at the
end of those blocks' :meth:`InternImageBackbone.mlp` half (so a recipe adding something after
``mlp`` adds it after the post-norm).

A level's output (what the authors return as the level's feature and what its downsampling
reads) is the blocks' output through the level's ``norm`` where the level has one (every
variant except post-norm ones without centre feature scale: S, B, L, XL, which have no level
norm). The next level reads that very map, so the adapter declares :attr:`reads_output`: a map a
recipe rewrites after a level is what the next level downsamples. States between hooks are
tokens (B, h*w, C) in the row-major order of the authors' channels-last grids (B, h, w, C);
stage outputs are maps (B, C, h, w). Inputs are zero-padded right/bottom to a multiple of 32;
the engine crops the logits back. DCN is spatial, so no extra (prompt) tokens in the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn

from rsfusion.models.backbones.base import Backbone, StageInfo, StreamState
from rsfusion.models.backbones.dcnv3 import DCNv3, ToChannelsFirst, ToChannelsLast

__all__ = [
    "INTERNIMAGE_NAMES",
    "DownsampleLayer",
    "InternImageBackbone",
    "InternImageLayer",
    "InternImageLevel",
    "MLPLayer",
    "StemLayer",
    "internimage_settings",
]

_COMMON: dict[str, Any] = {
    "mlp_ratio": 4.0,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "drop_path_type": "linear",
    "layer_scale": None,
    "offset_scale": 1.0,
    "post_norm": False,
    "dw_kernel_size": None,
    "level2_post_norm": False,
    "level2_post_norm_block_ids": None,
    "res_post_norm": False,
    "center_feature_scale": False,
    "remove_center": False,
}

#: The authors' variants (module docstring: which file each setting comes from).
_VARIANTS: dict[str, dict[str, Any]] = {
    "internimage_t": {"channels": 64, "depths": (4, 4, 18, 4), "groups": (4, 8, 16, 32)},
    "internimage_s": {
        "channels": 80,
        "depths": (4, 4, 21, 4),
        "groups": (5, 10, 20, 40),
        "layer_scale": 1e-5,
        "post_norm": True,
    },
    "internimage_b": {
        "channels": 112,
        "depths": (4, 4, 21, 4),
        "groups": (7, 14, 28, 56),
        "layer_scale": 1e-5,
        "post_norm": True,
    },
    "internimage_l": {
        "channels": 160,
        "depths": (5, 5, 22, 5),
        "groups": (10, 20, 40, 80),
        "layer_scale": 1e-5,
        "offset_scale": 2.0,
        "post_norm": True,
    },
    "internimage_xl": {
        "channels": 192,
        "depths": (5, 5, 24, 5),
        "groups": (12, 24, 48, 96),
        "layer_scale": 1e-5,
        "offset_scale": 2.0,
        "post_norm": True,
    },
    "internimage_h": {
        "channels": 320,
        "depths": (6, 6, 32, 6),
        "groups": (10, 20, 40, 80),
        "dw_kernel_size": 5,
        "res_post_norm": True,
        "level2_post_norm": True,
        "level2_post_norm_block_ids": (5, 11, 17, 23, 29),
        "center_feature_scale": True,
    },
    "internimage_g": {
        "channels": 512,
        "depths": (2, 2, 48, 4),
        "groups": (16, 32, 64, 128),
        "dw_kernel_size": 5,
        "post_norm": True,
        "level2_post_norm": True,
        "level2_post_norm_block_ids": (5, 11, 17, 23, 29, 35, 41, 47),
        "center_feature_scale": True,
    },
}

#: The InternImage variants the authors define.
INTERNIMAGE_NAMES: tuple[str, ...] = tuple(_VARIANTS)

#: The level that carries the H/G post-norms (the authors' ``level2_post_norm``).
_POST_NORM_LEVEL = 2


def internimage_settings(model_name: str) -> dict[str, Any]:
    """The authors' construction settings of an InternImage variant (Wang et al., CVPR 2023,
    Table 1; values and sources in the module docstring), in their constructor's names."""
    if model_name not in _VARIANTS:
        raise ValueError(
            f"unknown InternImage variant {model_name!r}; expected one of {INTERNIMAGE_NAMES}"
        )
    return {**_COMMON, **_VARIANTS[model_name]}


def _layer_norm(
    channels: int, *, channels_first_in: bool = False, out_first: bool = False
) -> nn.Sequential:
    """A LayerNorm (eps 1e-6) wrapped as the authors' ``build_norm_layer(..., 'LN', ...)``:
    an ``nn.Sequential`` with the permutes around it, so checkpoint keys match."""
    layers: list[nn.Module] = [ToChannelsLast()] if channels_first_in else []
    layers.append(nn.LayerNorm(channels, eps=1e-6))
    if out_first:
        layers.append(ToChannelsFirst())
    return nn.Sequential(*layers)


class StemLayer(nn.Module):
    """The stem (``patch_embed``): conv 3x3/2 -> LN -> GELU -> conv 3x3/2 -> LN; image (B, 3, H,
    W) to a channels-last grid (B, H/4, W/4, C) (InternImage, Wang et al. 2023, Sec. 3.2)."""

    def __init__(self, in_chans: int = 3, out_chans: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans // 2, kernel_size=3, stride=2, padding=1)
        self.norm1 = _layer_norm(out_chans // 2, channels_first_in=True, out_first=True)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chans // 2, out_chans, kernel_size=3, stride=2, padding=1)
        self.norm2 = _layer_norm(out_chans, channels_first_in=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class DownsampleLayer(nn.Module):
    """Between levels: conv 3x3/2 (no bias, C -> 2C) -> LN; channels last in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels, 2 * channels, kernel_size=3, stride=2, padding=1, bias=False
        )
        self.norm = _layer_norm(2 * channels, channels_first_in=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class MLPLayer(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (the authors' ``MLPLayer``)."""

    def __init__(self, channels: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class InternImageLayer(nn.Module):
    """One InternImage block (the authors' ``InternImageLayer``), channels last.

    :meth:`forward` is the authors' whole block; the engine runs its halves through
    :meth:`InternImageBackbone.mixer` / :meth:`InternImageBackbone.mlp` (module docstring).
    """

    def __init__(
        self,
        channels: int,
        groups: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        post_norm: bool = False,
        layer_scale: float | None = None,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        res_post_norm: bool = False,
        center_feature_scale: bool = False,
        remove_center: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.post_norm = post_norm
        self.norm1 = _layer_norm(channels)
        self.dcn = DCNv3(
            channels,
            kernel_size=3,
            dw_kernel_size=dw_kernel_size,
            stride=1,
            pad=1,
            dilation=1,
            group=groups,
            offset_scale=offset_scale,
            center_feature_scale=center_feature_scale,
            remove_center=remove_center,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _layer_norm(channels)
        self.mlp = MLPLayer(channels, int(channels * mlp_ratio), drop)
        self.layer_scale = layer_scale is not None
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(channels))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(channels))
        self.res_post_norm = res_post_norm
        if res_post_norm:
            self.res_post_norm1 = _layer_norm(channels)
            self.res_post_norm2 = _layer_norm(channels)

    def forward(self, x: Tensor) -> Tensor:
        """The whole block on a channels-last grid (B, H, W, C), as the authors write it."""
        if self.layer_scale:
            if self.post_norm:
                x = x + self.drop_path(self.gamma1 * self.norm1(self.dcn(x)))
                return x + self.drop_path(self.gamma2 * self.norm2(self.mlp(x)))
            x = x + self.drop_path(self.gamma1 * self.dcn(self.norm1(x)))
            return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))
        if self.post_norm:
            x = x + self.drop_path(self.norm1(self.dcn(x)))
            return x + self.drop_path(self.norm2(self.mlp(x)))
        if self.res_post_norm:
            x = x + self.drop_path(self.res_post_norm1(self.dcn(self.norm1(x))))
            return x + self.drop_path(self.res_post_norm2(self.mlp(self.norm2(x))))
        x = x + self.drop_path(self.dcn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class InternImageLevel(nn.Module):
    """A level (the authors' ``InternImageBlock``): blocks, the level-2 post-norms (H/G), the
    output ``norm`` (absent in post-norm variants without centre feature scale) and the
    ``downsample`` into the next level (absent in the last)."""

    def __init__(
        self,
        channels: int,
        depth: int,
        groups: int,
        downsample: bool,
        drop_path: Sequence[float],
        post_norm: bool = False,
        center_feature_scale: bool = False,
        post_norm_block_ids: Sequence[int] | None = None,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.blocks = nn.ModuleList(
            InternImageLayer(
                channels,
                groups,
                drop_path=drop_path[j],
                post_norm=post_norm,
                center_feature_scale=center_feature_scale,
                **block_kwargs,
            )
            for j in range(depth)
        )
        self.norm = _layer_norm(channels) if (not post_norm or center_feature_scale) else None
        self.post_norm_block_ids = (
            None if post_norm_block_ids is None else [int(i) for i in post_norm_block_ids]
        )
        self.post_norms = (
            None
            if self.post_norm_block_ids is None
            else nn.ModuleList(_layer_norm(channels) for _ in self.post_norm_block_ids)
        )
        self.downsample = DownsampleLayer(channels) if downsample else None

    def block_post_norm(self, index: int) -> nn.Module | None:
        """The post-norm the authors apply right after block ``index`` (H/G level 2), if any."""
        if self.post_norm_block_ids is None or index not in self.post_norm_block_ids:
            return None
        assert self.post_norms is not None
        return self.post_norms[self.post_norm_block_ids.index(index)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The authors' level forward on a channels-last grid: (the level's output feature,
        its downsampling into the next level or None)."""
        for j, block in enumerate(self.blocks):
            x = block(x)
            if (norm := self.block_post_norm(j)) is not None:
                x = norm(x)
        if self.norm is not None:
            x = self.norm(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class InternImageBackbone(Backbone):
    """InternImage walked block by block, with DCN / MLP halves (see module docstring).

    Args:
        model_name: ``internimage_t``, ``_s``, ``_b``, ``_l``, ``_xl``, ``_h`` or ``_g``.
        overrides: replace the variant's settings (:func:`internimage_settings`, the authors'
            constructor names), e.g. ``channels``, ``depths``, ``groups`` for tests, or
            ``layer_scale=1.0`` to load a T segmentation checkpoint. ``drop_path_rate``
            defaults to 0 (CPAL trains with 0.5 in the ``stochastic_depth`` mode).

    Example:
        >>> backbone = InternImageBackbone(channels=16, depths=(1, 1, 2, 1), groups=(1, 2, 4, 8))
        >>> [tuple(m.shape) for m in backbone.features(torch.zeros(1, 3, 64, 64))]
        [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]
    """

    splits_blocks = True
    reads_output = True
    stride = 32

    def __init__(self, model_name: str = "internimage_t", **overrides: Any) -> None:
        super().__init__()
        settings = internimage_settings(model_name)
        unknown = sorted(set(overrides) - set(settings) - {"channels", "depths", "groups"})
        if unknown:
            raise ValueError(f"unknown InternImage settings {unknown}; known: {sorted(settings)}")
        settings.update(overrides)
        channels = int(settings["channels"])
        depths = [int(d) for d in settings["depths"]]
        groups = [int(g) for g in settings["groups"]]
        if len(depths) != len(groups) or not depths:
            raise ValueError(f"depths {depths} and groups {groups} must have one entry per level")
        if settings["drop_path_type"] not in ("linear", "uniform"):
            raise ValueError(
                f"drop_path_type must be 'linear' or 'uniform', got {settings['drop_path_type']!r}"
            )
        rate = float(settings["drop_path_rate"])
        total = sum(depths)
        if settings["drop_path_type"] == "uniform":
            rates = [rate] * total
        else:
            rates = [float(r) for r in torch.linspace(0, rate, total, device="cpu")]
        self.settings = settings
        self.name = model_name
        self.patch_embed = StemLayer(3, channels)
        self.pos_drop = nn.Dropout(float(settings["drop_rate"]))
        ids = settings["level2_post_norm_block_ids"] if settings["level2_post_norm"] else None
        self.levels = nn.ModuleList()
        for i, (depth, group) in enumerate(zip(depths, groups)):
            start = sum(depths[:i])
            self.levels.append(
                InternImageLevel(
                    channels * 2**i,
                    depth,
                    group,
                    downsample=i < len(depths) - 1,
                    drop_path=rates[start : start + depth],
                    post_norm=bool(settings["post_norm"]),
                    center_feature_scale=bool(settings["center_feature_scale"]),
                    post_norm_block_ids=ids if i == _POST_NORM_LEVEL else None,
                    mlp_ratio=float(settings["mlp_ratio"]),
                    drop=float(settings["drop_rate"]),
                    layer_scale=settings["layer_scale"],
                    offset_scale=float(settings["offset_scale"]),
                    dw_kernel_size=settings["dw_kernel_size"],
                    res_post_norm=bool(settings["res_post_norm"]),
                    remove_center=bool(settings["remove_center"]),
                )
            )
        self.stride = 4 * 2 ** (len(depths) - 1)
        self.stages = [
            StageInfo(channels * 2**i, 4 * 2**i, depth) for i, depth in enumerate(depths)
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        """The authors' initialisation: Linear weights truncated normal (std .02), biases 0;
        LayerNorms 1 / 0; then every DCNv3 its own reset (offset / mask zero, projections
        Xavier); convs PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DCNv3):
                m.reset_parameters()

    # ------------------------------------------------------------------ modules
    def embedding(self) -> nn.Module:
        return self.patch_embed

    def blocks(self, stage: int) -> Sequence[nn.Module]:
        return list(self.levels[stage].blocks)

    def output_norm(self, stage: int) -> nn.Module | None:
        """The level's output LayerNorm (``levels.{stage}.norm``), None where it has none."""
        return self.levels[stage].norm

    def stage_modules(self, stage: int) -> tuple[list[nn.Module], list[nn.Module]]:
        """Entering: the previous level's ``downsample``; leaving: the level's ``norm`` and its
        level-2 ``post_norms`` (H/G)."""
        level = self.levels[stage]
        entering = [self.levels[stage - 1].downsample] if stage else []
        leaving = [m for m in (level.norm, level.post_norms) if m is not None]
        return entering, leaving

    def features(self, image: Tensor) -> list[Tensor]:
        """The plain single-stream forward as the authors' model (``forward_features_seq_out``
        of the classification model, ``forward`` of the segmentation backbone): every level's
        output (B, C, H, W). No padding: the image's sides should be multiples of 32."""
        x = self.pos_drop(self.patch_embed(image))
        outs = []
        for level in self.levels:
            out, x = level(x)
            outs.append(out.permute(0, 3, 1, 2).contiguous())
        return outs

    # ------------------------------------------------------------------ walk
    def pad(self, image: Tensor) -> Tensor:
        """Zero-pad right/bottom to a multiple of the total stride (32)."""
        h, w = image.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        return F.pad(image, (0, pw, 0, ph)) if ph or pw else image

    def _embed(self, image: Tensor, embedding: nn.Module | None) -> StreamState:
        stem = self.patch_embed if embedding is None else embedding
        return _grid_state(self.pos_drop(stem(self.pad(image))))

    def _mixer(self, stage: int, index: int, state: StreamState) -> StreamState:
        """The DCN half with its residual, as the variant's block (module docstring)."""
        block = self.levels[stage].blocks[index]
        x = _grid(state, self.name)
        if block.layer_scale:
            y = block.norm1(block.dcn(x)) if block.post_norm else block.dcn(block.norm1(x))
            y = block.gamma1 * y
        elif block.post_norm:
            y = block.norm1(block.dcn(x))
        elif block.res_post_norm:
            y = block.res_post_norm1(block.dcn(block.norm1(x)))
        else:
            y = block.dcn(block.norm1(x))
        return _grid_state(x + block.drop_path(y))

    def _mlp(self, stage: int, index: int, state: StreamState) -> StreamState:
        """The MLP half with its residual, as the variant's block; then, after the blocks the
        authors list in ``level2_post_norm_block_ids`` (level 2 of H/G), that post-norm."""
        level = self.levels[stage]
        block = level.blocks[index]
        x = _grid(state, self.name)
        if block.layer_scale:
            y = block.norm2(block.mlp(x)) if block.post_norm else block.mlp(block.norm2(x))
            y = block.gamma2 * y
        elif block.post_norm:
            y = block.norm2(block.mlp(x))
        elif block.res_post_norm:
            y = block.res_post_norm2(block.mlp(block.norm2(x)))
        else:
            y = block.mlp(block.norm2(x))
        x = x + block.drop_path(y)
        if (norm := level.block_post_norm(index)) is not None:
            x = norm(x)
        return _grid_state(x)

    def _stage_output(self, stage: int, state: StreamState, stream: str) -> Tensor:
        """The level's output map (B, C, h, w): its ``norm`` applied where it has one."""
        x = _grid(state, self.name)
        norm = self.levels[stage].norm
        if norm is not None:
            x = norm(x)
        return x.permute(0, 3, 1, 2).contiguous()

    def _next_stage(self, stage: int, state: StreamState) -> StreamState:
        """Downsample the level's (possibly rewritten) output map into level ``stage + 1``
        (``levels.{stage}.downsample``)."""
        if stage + 1 >= len(self.stages):
            return state
        if state.is_tokens:
            raise ValueError(
                f"{self.name}: the next level downsamples the level's output map (B, C, H, W); "
                "pass the state through continue_from first, not the raw block tokens"
            )
        downsample = self.levels[stage].downsample
        return _grid_state(downsample(state.data.permute(0, 2, 3, 1)))


def _grid(state: StreamState, name: str) -> Tensor:
    """A token state (B, h*w, C) as the channels-last grid (B, h, w, C) the blocks run on."""
    if not state.is_tokens:
        raise ValueError(f"{name}: blocks run on token states (B, N, C), got a map")
    b, n, c = state.data.shape
    h, w = state.hw
    if n != h * w:
        raise ValueError(f"{name}: {n} tokens do not fill the {h}x{w} grid")
    return state.data.reshape(b, h, w, c)


def _grid_state(grid: Tensor) -> StreamState:
    """A channels-last grid (B, h, w, C) as a token state (B, h*w, C) on (h, w)."""
    b, h, w, c = grid.shape
    return StreamState(grid.reshape(b, h * w, c), (h, w), 0)
