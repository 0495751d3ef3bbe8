"""What every registered model is built from, and the one factory that builds it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from rsfusion.registry import get_model_builder

__all__ = ["ModelSpec", "SampleMeta", "SegmentationModel", "build_model", "count_parameters"]


@dataclass(frozen=True)
class ModelSpec:
    """Inputs a model builder receives: the config's model section plus data facts.

    Models take ``forward(rgb, x)`` (``x`` may be None) and return logits (B, K, H, W), or a
    dict with ``"out"`` (the logits) and optional ``"aux"`` {name: logits}.

    ``dataset`` and ``modality`` (the card and its X modality) fill :class:`SampleMeta` where a
    batch carries none (prediction, evaluation). ``backbone_mode`` is one of
    :data:`~rsfusion.models.backbones.base.BACKBONE_MODES`; ``drop_path_rate`` (when set)
    builds the backbone with that stochastic depth. ``seed`` (when set) seeds the RNGs right
    before the backbone is built, so a randomly initialised backbone, and the hash of its frozen
    weights, never depend on what was built before it.
    """

    name: str
    num_classes: int
    rgb_channels: int
    x_channels: int
    arch: str = "Unet"
    backbone: str = "resnet18"
    weights: str | None = None
    weights_required: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_mode: str = "frozen"
    drop_path_rate: float | None = None
    dataset: str | None = None
    modality: str | None = None
    seed: int | None = None


class SegmentationModel(nn.Module):
    """Base class of every registered model: ``forward(rgb, x)`` -> logits (or ``{"out",
    "aux"}`` in training), with its capabilities declared here, read directly by the task and
    the prediction runner (no ``getattr`` defaults that a rename would silently bypass).

    Attributes:
        masks_tokens: ``forward`` takes ``token_drop`` (KTB's MMST on the tokens).
        takes_meta: ``forward`` takes ``meta`` (a :class:`SampleMeta`).
        has_fp32_stages: :attr:`fp32_stages` runs the first stages in float32 under autocast.
        fp32_stages: how many (the prediction runner sets it for bf16 / fp16).
    """

    masks_tokens: ClassVar[bool] = False
    takes_meta: ClassVar[bool] = False
    has_fp32_stages: ClassVar[bool] = False
    fp32_stages: int = 0


@dataclass(frozen=True)
class SampleMeta:
    """Per-sample metadata a batch carries to the model: dataset (card name) and X modality.

    SegRGB-X picks a LoRA per sample by modality and remaps labels per dataset; the
    datamodules put ``"dataset"`` and ``"modality"`` in every sample, collated to lists.

    Example:
        >>> meta = SampleMeta.repeat(2, "nyudepthv2", "depth")
        >>> meta.modality, len(meta)
        (('depth', 'depth'), 2)
    """

    dataset: tuple[str | None, ...]
    modality: tuple[str | None, ...]

    def __post_init__(self) -> None:
        if len(self.dataset) != len(self.modality):
            raise ValueError(
                f"SampleMeta: {len(self.dataset)} datasets for {len(self.modality)} modalities"
            )

    def __len__(self) -> int:
        return len(self.dataset)

    @classmethod
    def repeat(cls, n: int, dataset: str | None, modality: str | None) -> SampleMeta:
        """The same dataset and modality for ``n`` samples."""
        return cls((dataset,) * n, (modality,) * n)

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> SampleMeta | None:
        """The collated ``"dataset"`` / ``"modality"`` entries of a batch (None without them)."""
        if "dataset" not in batch or "modality" not in batch:
            return None
        return cls(_strings(batch["dataset"]), _strings(batch["modality"]))

    def select(self, index: Sequence[int]) -> SampleMeta:
        """The metadata of the samples at ``index`` (in that order)."""
        return SampleMeta(
            tuple(self.dataset[i] for i in index), tuple(self.modality[i] for i in index)
        )


def _strings(value: Any) -> tuple[str | None, ...]:
    """Collated strings as a tuple; ``""`` (what datasets put for "none": collation refuses
    None) becomes None."""
    if isinstance(value, str):
        value = (value,)
    return tuple(str(v) if v else None for v in value)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the registered model ``spec.name``."""
    return get_model_builder(spec.name)(spec)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; a tensor shared by several modules counts once."""
    params = list(model.parameters())  # nn.Module.parameters() yields each tensor once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return total, trainable
