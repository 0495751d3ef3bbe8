"""A generalist checkpoint (SegRGB-X trained over several datasets) seen as one dataset's model.

A joint run predicts the unified label space and stores, per source dataset, what prediction
needs (``meta.extra["joint"][source]``: bands, normalisation, classes, palette, window). For
prediction and evaluation one source is picked (``--dataset``): its metadata replaces the
top-level one, and :class:`DatasetView` gives every sample that dataset and its X modality (so
SegRGB-X selects the modality's LoRA) and keeps the logits of the dataset's own classes
(``UnifiedLabelSpace.select_logits``: eq. 8's remap), so the rest of the inference path is the
single-dataset one. ``--modality`` overrides the X modality (the LoRA), also for single-dataset
SegRGB-X checkpoints.
"""

from __future__ import annotations

import difflib

from torch import Tensor, nn

from rsfusion.data.labelspace import UnifiedLabelSpace
from rsfusion.errors import UnknownNameError
from rsfusion.models.base import SampleMeta, SegmentationModel
from rsfusion.models.checkpoint import CheckpointMeta

__all__ = ["DatasetView", "dataset_view", "joint_sources"]

#: keys of a source's stored facts that are not CheckpointMeta fields of a single-dataset run
_SOURCE_ONLY = ("ratio", "x_repeat3")


def joint_sources(meta: CheckpointMeta) -> list[str]:
    """The source datasets of a joint checkpoint, in training order ([] for one dataset)."""
    return list((meta.get("joint") or {}).keys())


class DatasetView(SegmentationModel):
    """``model`` (unified classes) as a model of dataset ``card``'s own classes and modality.

    Args:
        model: the generalist model (``forward(rgb, x, meta=...)``).
        space: the unified label space (None: logits pass unchanged, only the metadata is set).
        card: the dataset every sample belongs to.
        modality: its X modality (SegRGB-X's LoRA choice).
    """

    takes_meta = False

    def __init__(
        self, model: nn.Module, space: UnifiedLabelSpace | None, card: str, modality: str | None
    ) -> None:
        super().__init__()
        self.model, self.space, self.card, self.modality = model, space, card, modality
        self.has_fp32_stages = bool(getattr(model, "has_fp32_stages", False))

    @property
    def fp32_stages(self) -> int:  # type: ignore[override]
        return int(getattr(self.model, "fp32_stages", 0))

    @fp32_stages.setter
    def fp32_stages(self, value: int) -> None:
        if hasattr(self.model, "fp32_stages"):
            self.model.fp32_stages = value

    def forward(self, rgb: Tensor, x: Tensor | None = None) -> Tensor:
        meta = SampleMeta.repeat(rgb.shape[0], self.card, self.modality)
        out = self.model(rgb, x, meta=meta)
        logits = out["out"] if isinstance(out, dict) else out
        if self.space is None:
            return logits
        return self.space.select_logits(logits, self.card)


def _pick(name: str, known: list[str], what: str, flag: str) -> str:
    if name in known:
        return name
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UnknownNameError(f"{flag} {name}: not one of the checkpoint's {what} {known}{hint}")


def dataset_view(
    model: nn.Module,
    meta: CheckpointMeta,
    dataset: str | None = None,
    modality: str | None = None,
    source: str = "checkpoint",
) -> tuple[nn.Module, CheckpointMeta]:
    """The model and metadata to predict ``dataset`` with (a source name of a joint
    checkpoint, or its card); ``modality`` overrides the X modality the model is told.

    A single-dataset checkpoint is returned as it is (with ``modality`` set as its default
    metadata where the model takes metadata); a joint one needs ``dataset``.
    """
    sources = joint_sources(meta)
    if not sources:
        if dataset is not None and dataset != meta.card:
            raise UnknownNameError(
                f"--dataset {dataset}: {source} was trained on '{meta.card}' alone; drop --dataset"
            )
        if modality is not None and hasattr(model, "default_meta"):
            model.default_meta = (meta.card, modality)
        return model, meta
    facts = meta.get("joint")
    if dataset is None:
        raise UnknownNameError(
            f"{source} is a generalist model trained on {sources}: pick the dataset whose "
            "classes, normalisation and modality to use with --dataset NAME"
        )
    by_card = {str(f["card"]): name for name, f in facts.items()}
    name = dataset if dataset in facts else by_card.get(dataset, dataset)
    name = _pick(name, sources, "datasets", "--dataset")
    own = {k: v for k, v in facts[name].items() if k not in _SOURCE_ONLY}
    view_meta = CheckpointMeta.from_dict(
        {
            **own,
            "model": meta.model,
            "config": meta.config,
            "frozen_sha256": meta.frozen_sha256,
            "source_dataset": name,
        },
        f"{source} (dataset {name})",
    )
    space = UnifiedLabelSpace.from_dict(meta.get("label_space"), f"{source} label space")
    chosen = modality or view_meta.x_modality
    return DatasetView(model, space, view_meta.card, chosen), view_meta
