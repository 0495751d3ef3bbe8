"""Any timm CNN (``features_only=True``) as a frozen engine backbone, walked stage by stage.

The split, generic over timm's feature extractors:

* **children**: the modules timm's feature extractor runs, in forward order. For a
  ``FeatureListNet``/``FeatureDictNet`` these are its own items (timm already flattened them);
  for timm's dedicated extractors (``EfficientNetFeatures``, ``MobileNetV3Features``) they are
  the named children with every ``nn.Sequential`` that holds a returned layer opened
  (``blocks`` -> ``blocks.0``, ``blocks.1``, ...).
* **return layers**: the children whose outputs timm returns (``feature_info`` / ``return_layers``);
  a top-level one is moved over following parameter-free top-level children, since
  ``MobileNetV3Features`` names its stem's ``bn1`` but returns the map after ``act1``.
* **embedding (stem)**: every child before the first return layer (``conv_stem`` + ``bn1`` for
  EfficientNet, ``conv1`` + ``bn1`` for ResNet, ``stem_0`` + ``stem_1`` for ConvNeXt). When that is
  empty or holds no parameters (the first returned layer *is* the stem, e.g. RegNet's ``stem``),
  the embedding runs through the first return layer and stage 0 has no blocks (depth 0).
* **stage i**: the children after return layer ``i - 1`` up to and including return layer ``i``
  (EfficientNet: ``blocks.0 | blocks.1 | blocks.2 | blocks.3+4 | blocks.5+6``; ResNet:
  ``act1 | maxpool+layer1 | layer2 | layer3 | layer4``). Children after the last return layer
  never run.

Downsampling lives inside the stages, so stage 0 sits at the stem's resolution (or deeper when
``out_indices`` skips it) and :meth:`next_stage` is the identity. Construction runs the walk and
timm's own forward once on a small random input and raises if any feature map differs: a model
whose forward is not its children in order is refused, not silently mis-split.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from timm.models._features import FeatureDictNet
from torch import Tensor, nn

from rsfusion.models.backbones.base import Backbone, StageInfo, StreamState

__all__ = ["TimmCNNBackbone", "split_children"]


def split_children(model: nn.Module) -> tuple[list[str], list[str]]:
    """The ordered child paths of a timm feature extractor and its return layers among them.

    Args:
        model: a ``timm.create_model(..., features_only=True)`` module.

    Returns:
        ``(children, returns)``: dotted paths relative to ``model`` in forward order, and the
        paths whose outputs timm returns (in order, one per returned feature).
    """
    if isinstance(model, FeatureDictNet):
        children = list(model.keys())
        return children, [c for c in children if c in model.return_layers]
    targets = list(model.feature_info.module_name())
    children = _open_sequentials(model, "", targets)
    for k, target in enumerate(targets):
        # timm's own extractors (MobileNetV3Features) name the stem's norm but return the stem
        # after its activation: move a top-level target over parameter-free top-level children.
        i = children.index(target) if target in children else -1
        while 0 <= i < len(children) - 1 and "." not in target and _is_free(model, children[i + 1]):
            i += 1
        if i >= 0:
            targets[k] = children[i]
    missing = [t for t in targets if t not in children]
    if missing:
        raise ValueError(
            f"{type(model).__name__}: returned layers {missing} are not reachable through "
            "Sequential containers; this model cannot be split into stages"
        )
    return children, targets


def _is_free(model: nn.Module, path: str) -> bool:
    """A top-level child without parameters (an activation, a pool)."""
    return "." not in path and not any(True for _ in model.get_submodule(path).parameters())


def _open_sequentials(module: nn.Module, prefix: str, targets: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name, child in module.named_children():
        path = prefix + name
        if path not in targets and any(t.startswith(path + ".") for t in targets):
            if not isinstance(child, nn.Sequential):
                raise ValueError(f"{path} holds a returned layer but is not an nn.Sequential")
            out += _open_sequentials(child, path + ".", targets)
        else:
            out.append(path)
    return out


class TimmCNNBackbone(Backbone):
    """A timm CNN's ``features_only`` extractor split into stem + stages (see module docstring).

    A stage's "blocks" are its children (``StageInfo.depth`` counts them) and intermediate
    children may change channels and resolution (:meth:`block_channels`). States are maps
    (B, C, H, W); :meth:`stage_output` returns the map, which the next stage reads.

    A CNN block has no attention / MLP split; the closest analogue of the halves (KTB's "read
    after the attention residual, add after the FFN residual", authors' code) is used:
    the mixer half is the whole block and the MLP half the identity, so an adapter reads the
    block's output and its delta is added to it.
    Inputs are zero-padded right/bottom to a multiple of the largest reduction (:attr:`stride`),
    so stage ``i``'s map is exactly ``padded size / stages[i].reduction``; the engine crops back.

    Args:
        model_name: timm name, e.g. ``efficientnet_lite0``, ``resnet18``.
        out_indices: feature levels to return (default: every level timm offers).
        model_kwargs: passed to ``timm.create_model`` (e.g. ``in_chans``, ``output_stride``).
            Always ``pretrained=False``: load weights separately (e.g.
            :func:`rsfusion.models.backbones.lite0.load_efficientnet_lite0`).
    """

    splits_blocks = True
    reads_output = True

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] | None = None,
        **model_kwargs: object,
    ) -> None:
        super().__init__()
        for key in ("pretrained", "features_only"):
            if key in model_kwargs:
                raise ValueError(f"{key} is fixed by TimmCNNBackbone; load weights separately")
        kwargs: dict[str, object] = {"features_only": True, "pretrained": False, **model_kwargs}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        model = timm.create_model(model_name, **kwargs)
        levels = tuple(range(len(model.feature_info.info)))
        if out_indices is None and tuple(model.feature_info.out_indices) != levels:
            model = timm.create_model(model_name, **{**kwargs, "out_indices": levels})
        self.model = model
        self.name = model_name

        children, returns = split_children(model)
        first = children.index(returns[0])
        stem = children[:first]
        if not any(p.numel() for c in stem for p in model.get_submodule(c).parameters()):
            stem = children[: first + 1]  # the first returned layer is the stem itself
        self._stem_paths = stem
        self._stage_paths: list[list[str]] = []
        start = len(stem)
        for ret in returns:
            end = children.index(ret) + 1
            self._stage_paths.append(children[start:end])
            start = end
        info = model.feature_info
        self.stages = [
            StageInfo(c, r, len(p))
            for c, r, p in zip(info.channels(), info.reduction(), self._stage_paths)
        ]
        #: Zero-padding multiple of the input (the largest reduction).
        self.stride = max(s.reduction for s in self.stages)
        stem_module = nn.Sequential(
            OrderedDict((p.replace(".", "_"), model.get_submodule(p)) for p in stem)
        )
        # Not registered as a submodule: its modules already live under self.model.
        object.__setattr__(self, "_stem", stem_module)
        first_conv = next((m for m in stem_module.modules() if isinstance(m, nn.Conv2d)), None)
        #: Input channels of the stem's first convolution (what ``embed`` expects).
        self.in_chans = first_conv.in_channels if first_conv is not None else 3
        self.train()  # a frozen backbone stays in eval mode
        #: Output channels of each child of each stage, measured by the construction check.
        self._block_channels: list[list[int]] = self._check_walk()

    def embedding(self) -> nn.Module:
        return self._stem

    def pad(self, image: Tensor) -> Tensor:
        """Zero-pad right/bottom to a multiple of :attr:`stride` (the largest reduction)."""
        h, w = image.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        return F.pad(image, (0, pw, 0, ph)) if ph or pw else image

    def _embed(self, image: Tensor, embedding: nn.Module | None) -> StreamState:
        """Pad, then run ``embedding`` (default: the backbone's stem) on the image."""
        stem = self._stem if embedding is None else embedding
        return _map_state(stem(self.pad(image)))

    def blocks(self, stage: int) -> Sequence[nn.Module]:
        return [self.model.get_submodule(p) for p in self._stage_paths[stage]]

    def block_names(self, stage: int) -> list[str]:
        """Paths (relative to :attr:`model`) of a stage's children, for logs and tests."""
        return list(self._stage_paths[stage])

    def block_channels(self) -> list[list[int]]:
        """Output channels of each child of each stage (measured by the construction check)."""
        return [list(c) for c in self._block_channels]

    def _block(self, stage: int, index: int, state: StreamState) -> StreamState:
        return _map_state(self.blocks(stage)[index](state.data))

    def _mixer(self, stage: int, index: int, state: StreamState) -> StreamState:
        """The whole block: a CNN block has no attention / MLP split (see the class docs)."""
        return self._block(stage, index, state)

    def _mlp(self, stage: int, index: int, state: StreamState) -> StreamState:
        """The identity: the whole block ran as the mixer half."""
        return state

    def _stage_output(self, stage: int, state: StreamState, stream: str) -> Tensor:
        return state.data

    def features(self, image: Tensor) -> list[Tensor]:
        """Single-stream walk: the stage maps of one (padded) image, as timm would return them."""
        state = self.embed(image)
        maps = []
        for i in range(len(self.stages)):
            for j in range(len(self._stage_paths[i])):
                state = self.run_block(i, j, state)
            maps.append(self.stage_output(i, state))
            state = self.next_stage(i, state)
        return maps

    @torch.no_grad()
    def _check_walk(self) -> list[list[int]]:
        """Walk == timm's forward on a random input; returns each child's output channels."""
        gen = torch.Generator().manual_seed(0)
        device = next(self.model.parameters()).device
        size = 2 * self.stride
        image = torch.randn(1, self.in_chans, size, size, generator=gen).to(device)
        want = self.model(image)
        want = list(want.values()) if isinstance(want, dict) else list(want)
        state = self.embed(image)
        got, channels = [], []
        for i in range(len(self.stages)):
            channels.append([])
            for j in range(len(self._stage_paths[i])):
                state = self.run_block(i, j, state)
                channels[i].append(int(state.data.shape[1]))
            got.append(state.data.clone())
        for i, (g, w, s) in enumerate(zip(got, want, self.stages)):
            expected = (s.channels, size // s.reduction, size // s.reduction)
            if tuple(g.shape[1:]) != expected or g.shape != w.shape or not torch.allclose(g, w):
                raise ValueError(
                    f"{self.name}: the stage walk does not reproduce timm's feature {i} "
                    f"(walk {tuple(g.shape)}, timm {tuple(w.shape)}, feature_info {expected}); "
                    f"stage children {self._stage_paths[i]}"
                )
        return channels


def _map_state(data: Tensor) -> StreamState:
    if not isinstance(data, Tensor) or data.ndim != 4:
        raise TypeError(f"expected a (B, C, H, W) map, got {type(data).__name__}")
    return StreamState(data, (int(data.shape[-2]), int(data.shape[-1])), 0)
