"""The dual-stream engine: one backbone shared by an RGB and an X stream, walked stage by stage
and block by block, calling the recipe's hooks at fixed points (the README's hook table)::

    rgb, x = recipe.prepare(rgb, x, meta)              # raw inputs + per-sample metadata
    r = backbone.embed(rgb); s = recipe.embed_x(backbone, x)
    for each stage i:
        r, s = recipe.before_stage(i, r, s)
        for each block j: r, s = recipe.in_block(backbone, i, j, r, s)
        out = recipe.after_stage(i, output_i(r), output_i(s))   # fused map, or StageOutput
        r, s = continue_from(out's rewritten streams); r, s = next_stage(r), next_stage(s)
    return recipe.decode(fused, rgb_maps, x_maps, size)

A method is a :class:`Recipe` (its trainable parts and hook bodies); the engine never changes.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfusion.models.backbones.base import Backbone, StreamState
from rsfusion.models.base import ModelSpec, SampleMeta, SegmentationModel
from rsfusion.registry import ModelOptions

__all__ = [
    "DualStreamEngine",
    "Recipe",
    "StageOutput",
    "build_engine",
    "migrate_state_dict",
    "recipe_options",
    "resize_logits",
]


@dataclass
class StageOutput:
    """What :meth:`Recipe.after_stage` may return instead of the fused map: the fused map and
    the maps each stream continues from (``None``: unchanged), e.g. CMX's FRM-rectified maps.
    """

    fused: Tensor
    rgb: Tensor | None = None
    x: Tensor | None = None


class Recipe(nn.Module, abc.ABC):
    """Trainable parts of a method and its hooks. Defaults: plain shared backbone, no fusion.

    Layer-wise LR decay reads where the parts sit (:meth:`DualStreamEngine.parameter_depths`):
    :attr:`embed_parts` at depth 0, :attr:`stage_parts` ``{attribute: "before" | "after"}``
    (a ModuleList indexed by stage) at the depth of the stage's first / last block,
    :attr:`block_parts` (nested ``[stage][block]`` lists, dotted paths allowed) at their block's
    depth; everything else (heads) on top.
    """

    embed_parts: ClassVar[tuple[str, ...]] = ()
    #: old -> new state-dict prefixes of parts that were renamed (older checkpoints load)
    renamed: ClassVar[dict[str, str]] = {}
    stage_parts: ClassVar[dict[str, Literal["before", "after"]]] = {}
    block_parts: ClassVar[tuple[str, ...]] = ()

    def prepare(self, rgb: Tensor, x: Tensor, meta: SampleMeta) -> tuple[Tensor, Tensor]:
        """Before embedding: the raw (normalised) inputs and per-sample metadata (SegRGB-X's
        MA-CLIP embeddings and LoRA choice). Returns the inputs to embed."""
        return rgb, x

    def embed_x(self, backbone: Backbone, x: Tensor) -> StreamState:
        """Embed the X stream: with the recipe's submodule ``x_embed`` where it has one
        (``self.x_embed = self.copy_embedding(backbone)``: MoBaNet, KTB), else with the
        backbone's own, shared embedding (CPAL, SegRGB-X); a 1-channel X is repeated to 3."""
        copy_ = self._modules.get("x_embed")
        if copy_ is not None:
            return self.embed_x_copy(backbone, x, copy_)
        if x.shape[1] == 1:  # a DSM or depth map through the shared 3-channel stem
            x = x.expand(-1, 3, -1, -1)
        return backbone.embed(x, stream="x")

    def embed_x_copy(self, backbone: Backbone, x: Tensor, embedding: nn.Module) -> StreamState:
        """Embed X with the recipe's trainable copy of the RGB embedding (MoBaNet, KTB); a
        1-channel X (DSM, depth) is repeated to the copy's 3 input channels."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return backbone.embed(x, embedding, stream="x")

    @staticmethod
    def copy_embedding(backbone: Backbone) -> nn.Module:
        """A trainable copy of the backbone's RGB embedding (for :meth:`embed_x_copy`)."""
        return copy.deepcopy(backbone.embedding()).requires_grad_(True)

    def before_stage(
        self, stage: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """Before a stage's blocks (MoBaNet CPIA / KTB MAPA prompts, SegRGB-X prompt tokens)."""
        return r, x

    def in_block(
        self, backbone: Backbone, stage: int, index: int, r: StreamState, x: StreamState
    ) -> tuple[StreamState, StreamState]:
        """One block on both streams; recipes that hook inside a block call the halves
        :meth:`Backbone.mixer` and :meth:`Backbone.mlp` with the stream named."""
        return backbone.run_block(stage, index, r, "rgb"), backbone.run_block(stage, index, x, "x")

    def after_stage(self, stage: int, r: Tensor, x: Tensor) -> Tensor | StageOutput:
        """Fuse the stage's two maps (DGFM, DSCF, GPM, FFM); a :class:`StageOutput` also
        rewrites the maps the streams continue from (FRM)."""
        return r + x

    @abc.abstractmethod
    def decode(
        self, fused: list[Tensor], rgb: list[Tensor], x: list[Tensor], size: tuple[int, int]
    ) -> Tensor | dict[str, Any]:
        """Head(s) on the pyramids; logits (or {"out", "aux"}) at ``size``."""


class DualStreamEngine(SegmentationModel):
    """Walk a backbone with two streams; the recipe holds the method's parts.

    Args:
        backbone: a :class:`Backbone`; frozen here unless its mode was set before (the
            registered builders set ``model.backbone_mode`` before building the recipe).
        recipe: the method's :class:`Recipe`.
        default_meta: ``(dataset, modality)`` used for batches that carry no
            :class:`SampleMeta` (prediction, evaluation).

    Attributes:
        fp32_stages: under autocast, the embeddings and this many first stages (hooks included)
            run in float32. The full-resolution stages see the inputs' whole dynamic range, and
            rounding there to bfloat16's 8-bit mantissa shifts decisions that rest on small
            elevation differences (tree vs low vegetation): :class:`ModelRunner` sets 1 for
            reduced-precision prediction (measured in benchmarks/predict_bench.py).
        masks_tokens: the task may hand :meth:`forward` a per-sample ``token_drop`` (KTB's MMST
            on tokens).

    Example:
        >>> from rsfusion.models.backbones.vit import ViTBackbone
        >>> class Sum(Recipe):  # fuse by sum (the default after_stage), a 1x1 conv head
        ...     def __init__(self, dim: int) -> None:
        ...         super().__init__()
        ...         self.cls = nn.Conv2d(dim, 2, 1)
        ...     def decode(self, fused, rgb, x, size):
        ...         return nn.functional.interpolate(self.cls(fused[-1]), size=size)
        >>> vit = ViTBackbone("vit_small_patch14_dinov2", depth=2, embed_dim=32, num_heads=2)
        >>> engine = DualStreamEngine(vit, Sum(32))
        >>> engine(torch.rand(1, 3, 40, 50), torch.rand(1, 3, 40, 50)).shape
        torch.Size([1, 2, 40, 50])
        >>> sorted(n for n, p in engine.named_parameters() if p.requires_grad)
        ['recipe.cls.bias', 'recipe.cls.weight']
    """

    fp32_stages = 0
    masks_tokens = True
    takes_meta = True
    has_fp32_stages = True

    def __init__(
        self,
        backbone: Backbone,
        recipe: Recipe,
        default_meta: tuple[str | None, str | None] = (None, None),
    ) -> None:
        super().__init__()
        if backbone.mode is None:
            backbone.set_mode("frozen")
        self.backbone = backbone
        self.recipe = recipe
        self.default_meta = default_meta

    def _precision(self, stage: int, like: Tensor) -> contextlib.AbstractContextManager:
        """float32 for the embeddings (stage -1) and stages below ``fp32_stages``."""
        device = like.device.type
        if stage < self.fp32_stages and torch.is_autocast_enabled(device):
            return torch.autocast(device, enabled=False)
        return contextlib.nullcontext()

    def forward(
        self,
        rgb: Tensor,
        x: Tensor | None = None,
        token_drop: tuple[Tensor, Tensor] | None = None,
        meta: SampleMeta | None = None,
    ) -> Tensor | dict[str, Any]:
        """Logits (or ``{"out", "aux"}`` in training) for ``rgb`` and ``x`` (B, C, H, W).

        ``token_drop``: per-sample booleans (B,) for RGB and X; those samples' whole token maps
        are zeroed right after patch embedding (KTB's MMST).
        ``meta``: per-sample metadata (default: :attr:`default_meta` for every sample).
        """
        if x is None:
            raise ValueError("the dual-stream engine needs the X input (image_x)")
        if meta is None:
            meta = SampleMeta.repeat(rgb.shape[0], *self.default_meta)
        height, width = rgb.shape[-2:]
        backbone, recipe = self.backbone, self.recipe
        with self._precision(-1, rgb):
            rgb, x = recipe.prepare(rgb, x, meta)
            r = backbone.embed(rgb, stream="rgb")
            s = recipe.embed_x(backbone, x)
        if token_drop is not None:
            r, s = _drop(r, token_drop[0]), _drop(s, token_drop[1])
        fused, rgb_maps, x_maps = [], [], []
        for i in range(len(backbone.stages)):
            with self._precision(i, rgb):
                r, s = recipe.before_stage(i, r, s)
                for j in range(len(backbone.blocks(i))):
                    r, s = recipe.in_block(backbone, i, j, r, s)
                fr = backbone.stage_output(i, r, "rgb")
                fs = backbone.stage_output(i, s, "x")
                out = recipe.after_stage(i, fr, fs)
                new_r = new_s = None
                if isinstance(out, StageOutput):
                    out, new_r, new_s = out.fused, out.rgb, out.x
                fused.append(out)
                rgb_maps.append(fr)
                x_maps.append(fs)
                if i + 1 < len(backbone.stages):
                    r = backbone.next_stage(i, backbone.continue_from(i, r, fr, new_r), "rgb")
                    s = backbone.next_stage(i, backbone.continue_from(i, s, fs, new_s), "x")
        padded = _padded_size(fused[0], backbone)
        return _crop(recipe.decode(fused, rgb_maps, x_maps, padded), height, width)

    def parameter_depths(self) -> tuple[dict[str, int], int]:
        """Depth of every parameter (name -> 0..L+1) for layer-wise LR decay, and L.

        Backbone parameters by :meth:`Backbone.parameter_depths`; recipe parts by where the
        recipe declares them (:class:`Recipe`); anything else L + 1.
        """
        depths, total = self.backbone.parameter_depths("backbone.")
        blocks = self.backbone.block_depths()
        recipe = self.recipe
        by_param: dict[int, int] = {}

        def mark(module: nn.Module, depth: int) -> None:
            for p in module.parameters():
                by_param.setdefault(id(p), depth)

        for name in recipe.embed_parts:
            if (part := _part(recipe, name)) is not None:
                mark(part, 0)
        first = [b[0] if b else 0 for b in blocks]
        last = [b[-1] if b else f for b, f in zip(blocks, first)]
        for name, where in recipe.stage_parts.items():
            for i, part in enumerate(_part(recipe, name) or ()):
                mark(part, (first if where == "before" else last)[i])
        for name in recipe.block_parts:
            for i, stage in enumerate(_part(recipe, name) or ()):
                for j, part in enumerate(stage):
                    mark(part, blocks[i][j])
        for name, p in recipe.named_parameters():
            depths[f"recipe.{name}"] = by_param.get(id(p), total + 1)
        return depths, total


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Logits resized to ``size`` in float32 (bilinear), under autocast too: no bf16 rounding of
    the interpolated logits, and CPUs resize few-channel float32 maps 2x faster than bf16."""
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def recipe_options(recipe: type[Recipe]) -> ModelOptions:
    """``model.kwargs`` of an engine model: the recipe's keyword parameters and
    ``backbone_kwargs`` (passed to the backbone's constructor)."""
    return ModelOptions(lambda arch: recipe, extra={"backbone_kwargs": dict[str, Any]})


def build_engine(spec: ModelSpec, recipe: type[Recipe], method: str) -> DualStreamEngine:
    """A registered method's model: its backbone (``model.backbone``, weights loaded, mode
    ``model.backbone_mode`` set before the recipe is built, so PEFT parts the recipe injects stay
    trainable) and its recipe built from ``model.kwargs`` (minus ``backbone_kwargs``).

    X inputs of 1 channel (DSM) or 3 (depth/thermal/... encoded to 3) fit the copied RGB patch
    embedding; others are refused unless the recipe takes ``x_channels`` (then it is passed the
    X width and maps it to 3 channels itself, e.g. CPAL's ``x_proj`` for a 6-channel event
    tensor).
    """
    from rsfusion.models.backbones.factory import build_backbone

    options = {k: v for k, v in spec.kwargs.items() if k != "backbone_kwargs"}
    projects_x = "x_channels" in inspect.signature(recipe.__init__).parameters
    if projects_x:  # the recipe maps any X width to the stem's 3 channels (CPAL on events)
        options["x_channels"] = spec.x_channels
    elif spec.x_channels not in (1, 3):
        raise ValueError(f"{method} takes a 1- or 3-channel X input, got {spec.x_channels}")
    backbone = build_backbone(spec)
    backbone.set_mode(spec.backbone_mode)  # type: ignore[arg-type]
    return DualStreamEngine(
        backbone,
        recipe(backbone, spec.num_classes, **options),
        default_meta=(spec.dataset, spec.modality),
    )


def migrate_state_dict(model: nn.Module, state: dict[str, Any], prefix: str = "") -> int:
    """Rename, in place, the keys of ``state`` (a state dict of ``model``, keys under
    ``prefix``) that older versions of its recipe wrote under other part names
    (:attr:`Recipe.renamed`); returns how many were renamed."""
    renamed = 0
    for name, module in model.named_modules():
        if not isinstance(module, Recipe) or not module.renamed:
            continue
        base = f"{prefix}{name}." if name else prefix
        for key in [k for k in state if k.startswith(base)]:
            rest = key[len(base) :]
            for old, new in module.renamed.items():
                if rest.startswith(old):
                    state[base + new + rest[len(old) :]] = state.pop(key)
                    renamed += 1
                    break
    return renamed


def _part(recipe: Recipe, name: str) -> Any:
    """A declared part of the recipe, or None where this configuration builds none."""
    try:
        return recipe.get_submodule(name)
    except AttributeError:
        return None


def _drop(state: StreamState, selected: Tensor) -> StreamState:
    """Zero the patch tokens (or the map) of the selected samples; prefix tokens stay."""
    if not bool(selected.any()):
        return state
    patches = state.patches()
    keep = ~selected.to(patches.device).view(-1, *([1] * (patches.ndim - 1)))
    return state.with_patches(patches * keep)


def _padded_size(first: Tensor, backbone: Backbone) -> tuple[int, int]:
    reduction = backbone.stages[0].reduction
    return first.shape[-2] * reduction, first.shape[-1] * reduction


def _crop(out: Tensor | dict[str, Any], h: int, w: int) -> Tensor | dict[str, Any]:
    if isinstance(out, Tensor):
        return out[..., :h, :w]
    return {
        "out": out["out"][..., :h, :w],
        "aux": {k: v[..., :h, :w] for k, v in out.get("aux", {}).items()},
    }
