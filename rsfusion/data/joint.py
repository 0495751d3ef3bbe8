"""Generalist training data (SegRGB-X, arXiv 2603.28023, section III-E, eq. 8): one
datamodule over several datasets whose labels meet in a unified label space.

The config's ``data.joint`` names the sources: each is the ``data`` section with its overrides
applied (:func:`~rsfusion.config_schema.joint_overrides`), built by :func:`make_datamodule` as
on its own (natural and ISPRS cards mix). Training: each batch comes from ONE source, drawn
with probability proportional to its ``ratio``; validation and test: one loader per source.
Every batch keeps its source's augmentation and normalisation, then its mask is mapped to
unified ids (:class:`~rsfusion.data.labelspace.UnifiedLabelSpace`).

Example:
    >>> from rsfusion.config import DataConfig
    >>> cfg = DataConfig(x="thermal", joint={"mfnet": {"card": "mfnet", "ratio": 3},
    ...                                      "pst900": {"card": "pst900"}})
    >>> [(name, src.card, ratio) for name, src, ratio in joint_sources(cfg)]
    [('mfnet', 'mfnet', 3.0), ('pst900', 'pst900', 1.0)]
    >>> card = joint_card(cfg)
    >>> card.name, card.modality("thermal").bands, card.class_names[62]
    ('joint', ('thermal', 'thermal', 'thermal'), 'car')
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from lightning import LightningDataModule
from torch import Tensor

from rsfusion.catalog import DatasetCard, Modality, load_card
from rsfusion.config_schema import DataConfig, TypeMismatch, joint_overrides, type_error
from rsfusion.data.labelspace import UnifiedLabelSpace, default_path
from rsfusion.errors import ConfigError, MissingFileError, UnknownNameError

__all__ = ["JointCard", "JointDataModule", "joint_card", "joint_sources", "load_label_space"]

_DRAW_SALT = 0x10_1A7  # keeps the source draw's stream apart from the sub-samplers' (seed, epoch)
_PASS_STRIDE = 1_000_000  # sub-sampler epoch of a source's pass p: epoch + p * stride (+ rank)
_RANK_STRIDE = 1_000_000_000


def load_label_space(cfg: DataConfig, where: str = "config") -> UnifiedLabelSpace:
    """The unified label space of ``cfg.label_space`` (null: the shipped ``unified.yaml``)."""
    path = Path(cfg.label_space) if cfg.label_space else default_path()
    if not path.is_file():
        raise ConfigError(f"data.label_space: no file {path} (in {where})")
    try:
        return UnifiedLabelSpace.load(path)
    except ValueError as err:
        raise ConfigError(f"data.label_space: {err} (in {where})") from None


def _seen_card(cfg: DataConfig) -> DatasetCard:
    """One source's card as the model sees it (encoded bands)."""
    from rsfusion.data.factory import model_card

    return cast(DatasetCard, model_card(cfg))  # a source has no ``joint``: a DatasetCard


def joint_sources(cfg: DataConfig, where: str = "config") -> list[tuple[str, DataConfig, float]]:
    """The sources of ``cfg.joint``: (name, resolved ``data`` section, ratio), in config order.

    Raises:
        ConfigError: no source, a ratio that is not > 0, a bad key or value under a source
            (named ``data.joint.<source>.<key>``), a card that the label space lacks or lists
            with other classes, an RGB input that is not 3 channels, or an X input (as the
            model sees it: the encoded channels) that is not 1 or 3 channels.
    """
    if cfg.x is None:
        raise ConfigError(
            f"data.x: null, but a joint run gives the model every source's X (in {where}); set "
            "data.x to any modality name (each source sets its own under data.joint)"
        )
    try:
        sources = joint_overrides(cfg, ("data",), lambda _: where)
    except TypeMismatch as err:
        raise type_error(err, where) from None
    space = load_label_space(cfg, where)
    for name, src, _ in sources:
        key = f"data.joint.{name}"
        try:
            card = load_card(src.card)
        except MissingFileError as err:
            raise ConfigError(f"{key}.card: {err} (in {where})") from None
        if card.name not in space.datasets:
            raise ConfigError(
                f"{key}.card: dataset '{card.name}' is not in the label space {space.source} "
                f"(in {where}); add datasets.{card.name} (its classes in official order, each "
                f"mapped to a unified class) there, or set data.label_space to a file that has "
                f"it (it has: {', '.join(space.datasets)})"
            )
        if space.dataset_classes(card.name) != card.class_names:
            raise ConfigError(
                f"{key}.card: the label space {space.source} lists '{card.name}' classes "
                f"{space.dataset_classes(card.name)}, the card {card.class_names}; make them "
                "agree (official order)"
            )
        if card.ignore_index != space.ignore_index:
            raise ConfigError(
                f"{key}.card: '{card.name}' ignores {card.ignore_index}, the label space "
                f"{space.ignore_index}; a joint run needs one ignore index"
            )
        if src.x is None:
            raise ConfigError(f"{key}.x: null; every source of a joint run needs an X modality")
        try:
            seen = _seen_card(src)
            rgb, x = len(seen.modality(src.rgb).bands), len(seen.modality(src.x).bands)
        except UnknownNameError as err:
            raise ConfigError(f"{key}: {err} (in {where})") from None
        if rgb != 3:
            raise ConfigError(
                f"{key}.rgb: '{src.rgb}' of '{card.name}' has {rgb} channels, a joint run "
                f"takes 3 (in {where}); pick a 3-band RGB modality"
            )
        if x not in (1, 3):
            raise ConfigError(
                f"{key}.x: '{src.x}' of '{card.name}' gives {x} channels (encoding "
                f"{src.x_encoding or 'default'}), a joint run takes 1 (repeated to 3) or 3 "
                f"(in {where}); pick another data.joint.{name}.x_encoding"
            )
    return sources


@dataclass(frozen=True)
class JointCard:
    """The joint data as model-building code reads a :class:`DatasetCard` (``model_spec``):
    ``name`` "joint", the unified classes and ignore index, and 3-channel RGB and X inputs
    (``modality`` answers for the top-level and every source's RGB / X names, with the first
    source's bands as the model sees them; a 1-channel X is repeated to 3).

    ``metric_classes`` are the unified ids of the sources' own metric classes (union).
    """

    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    metric_classes: list[int]
    modalities: dict[str, Modality] = field(default_factory=dict)
    name: str = "joint"
    kind: str = "joint"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def modality(self, name: str) -> Modality:
        if name not in self.modalities:
            raise UnknownNameError(
                f"the joint data has no modality '{name}'; choose one of {sorted(self.modalities)}"
            )
        return self.modalities[name]


def _fallback_colour(i: int) -> tuple[int, int, int]:
    return ((53 * i + 40) % 256, (97 * i + 120) % 256, (151 * i + 200) % 256)


def joint_card(
    cfg: DataConfig, sources: Sequence[tuple[str, DataConfig, float]] | None = None
) -> JointCard:
    """The :class:`JointCard` of a joint ``data`` section (``sources``: its
    :func:`joint_sources`, computed when not given). A unified class takes its colour from the
    first source that has it, else a fixed colour."""
    sources = list(sources) if sources is not None else joint_sources(cfg)
    space = load_label_space(cfg)
    palette: dict[int, tuple[int, int, int]] = {}
    metric: set[int] = set()
    for _, src, _ in sources:
        card = load_card(src.card)
        lut = space.to_unified(card.name)
        for own, colour in enumerate(card.palette):
            palette.setdefault(int(lut[own]), tuple(colour))  # type: ignore[arg-type]
        metric.update(int(lut[i]) for i in card.metric_classes)
    first = sources[0][1]
    seen = _seen_card(first)
    rgb_bands = tuple(seen.modality(first.rgb).bands)
    x_bands = tuple(seen.modality(first.x).bands)  # type: ignore[arg-type]
    x_bands = x_bands * 3 if len(x_bands) == 1 else x_bands
    modalities: dict[str, Modality] = {}
    for src in (cfg, *(s for _, s, _ in sources)):
        modalities.setdefault(src.rgb, Modality(src.rgb, (), rgb_bands, "float32"))
        if src.x is not None:
            modalities.setdefault(src.x, Modality(src.x, (), x_bands, "float32"))
    return JointCard(
        classes=tuple(space.classes),
        palette=tuple(palette.get(i, _fallback_colour(i)) for i in range(space.num_classes)),
        ignore_index=space.ignore_index,
        metric_classes=sorted(metric),
        modalities=modalities,
    )


def label_space_dict(space: UnifiedLabelSpace) -> dict[str, Any]:
    """``space`` in the YAML form :meth:`UnifiedLabelSpace.from_dict` reads (checkpoints)."""
    return {
        "ignore_index": space.ignore_index,
        "classes": [{"id": i, "name": c} for i, c in enumerate(space.classes)],
        "datasets": {
            d: {
                "classes": [
                    {"id": i, "name": o, "unified": u}
                    for i, (o, u) in enumerate(
                        zip(space.dataset_classes(d), space.unified_names(d))
                    )
                ]
            }
            for d in space.datasets
        },
    }


@dataclass
class _SourceClock:
    """What a sub-datamodule reads as its ``trainer``: only ``current_epoch`` (its samplers'
    ``epoch_fn``), set per pass over the source so each pass draws a fresh order."""

    current_epoch: int = 0


class JointTrainLoader:
    """One joint training epoch: the source of each batch from
    :meth:`JointDataModule.source_sequence`, the batch from that source's own train loader
    (restarted, with the next pass's order, when it runs out); each batch gets ``"source"``."""

    def __init__(self, dm: JointDataModule, loaders: Sequence[Any]) -> None:
        self.dm, self.loaders = dm, list(loaders)

    def __len__(self) -> int:
        return sum(len(loader) for loader in self.loaders)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, rank = self.dm.current_epoch(), self.dm.rank()
        iters: dict[int, Iterator[dict[str, Any]]] = {}
        passes = [0] * len(self.loaders)

        def restart(i: int) -> None:
            sub_epoch = epoch + passes[i] * _PASS_STRIDE + rank * _RANK_STRIDE
            self.dm.clocks[i].current_epoch = sub_epoch
            iters[i] = iter(self.loaders[i])

        for i in self.dm.source_sequence(epoch, len(self)):
            if i not in iters:
                restart(i)
            try:
                batch = next(iters[i])
            except StopIteration:
                passes[i] += 1
                restart(i)
                batch = next(iters[i])
            batch["source"] = [self.dm.sources[i]] * len(batch["mask"])
            yield batch


class JointDataModule(LightningDataModule):
    """Several datasets as one, for generalist training (SegRGB-X) in a unified label space.

    Sub-datamodule ``i`` is :func:`make_datamodule` of source ``i`` with seed ``seed + i``.

    Training epoch: as many batches as the sources' own train loaders hold together (the sum
    of their lengths). The source of each batch is drawn i.i.d. with probability proportional
    to its ratio, from (seed, epoch) only, so a resumed run draws the same sequence; a source
    drawn more often than its loader is long starts a new pass (its samplers see epoch
    ``epoch + pass * 10**6``, so each pass has its own order). Under DDP every rank draws the
    same source sequence and its own samples (rank folded into the sub-samplers' epoch).

    Validation / test: one loader per source, in :func:`joint_sources` order
    (``dataloader_idx`` = source index). ``on_after_batch_transfer`` applies the source's own
    augmentation / normalisation, maps the mask to unified ids, repeats a 1-channel X to 3 and
    fills ``"dataset"``, ``"modality"`` and ``"source"`` per sample.

    Attributes:
        sources: source names; ``ratios``: their ratios; ``subs``: their datamodules.
        label_space: the :class:`UnifiedLabelSpace`.
        card: the :class:`JointCard` (what ``model_spec`` reads).
        num_classes, class_names, ignore_index: the unified classes and ignore index.
    """

    def __init__(self, cfg: DataConfig, seed: int = 42) -> None:
        from rsfusion.data.factory import make_datamodule

        super().__init__()
        resolved = joint_sources(cfg)
        self.cfg, self.seed = cfg, seed
        self.sources = [name for name, _, _ in resolved]
        self.source_cfgs = [src for _, src, _ in resolved]
        self.ratios = [ratio for _, _, ratio in resolved]
        self.label_space = load_label_space(cfg)
        self.card = joint_card(cfg, resolved)
        self.num_classes = self.card.num_classes
        self.class_names = self.card.class_names
        self.ignore_index = self.card.ignore_index
        self.subs = [make_datamodule(src, seed + i) for i, src in enumerate(self.source_cfgs)]
        self.clocks = [_SourceClock() for _ in self.subs]
        for sub, clock in zip(self.subs, self.clocks):
            sub.trainer = clock  # read only as ``trainer.current_epoch`` by their samplers
        self.cards = [load_card(src.card).name for src in self.source_cfgs]
        self.x_repeat = [
            len(sub.card.modality(src.x).bands) == 1
            for sub, src in zip(self.subs, self.source_cfgs)
        ]

    def current_epoch(self) -> int:
        """The trainer's epoch (0 without a trainer)."""
        return self.trainer.current_epoch if self.trainer is not None else 0

    def rank(self) -> int:
        """The trainer's global rank (0 without a trainer)."""
        return self.trainer.global_rank if self.trainer is not None else 0

    def source_sequence(self, epoch: int, length: int | None = None) -> list[int]:
        """Source indices of an epoch's training batches: ``length`` (default: the epoch's
        batches, after ``setup("fit")``) i.i.d. draws, P(i) = ratio_i / sum(ratios), from
        (seed, epoch) only."""
        if length is None:
            length = len(self.train_dataloader())
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + _DRAW_SALT)
        weights = torch.tensor(self.ratios, dtype=torch.float64)
        return torch.multinomial(weights, length, replacement=True, generator=g).tolist()

    def setup(self, stage: str) -> None:
        for sub in self.subs:
            sub.setup(stage)

    def train_dataloader(self) -> JointTrainLoader:
        loaders = [sub.train_dataloader() for sub in self.subs]
        for name, loader in zip(self.sources, loaders):
            if len(loader) == 0:
                raise ConfigError(
                    f"data.joint.{name}: its train loader holds no batch; lower its batch_size "
                    "(or raise samples_per_epoch)"
                )
        return JointTrainLoader(self, loaders)

    def val_dataloader(self) -> list[Any]:
        return [sub.val_dataloader() for sub in self.subs]

    def test_dataloader(self) -> list[Any]:
        return [sub.test_dataloader() for sub in self.subs]

    def source_index(self, batch: dict[str, Any], dataloader_idx: int = 0) -> int:
        """The source of a batch: its ``"source"`` entry (training), else the loader index."""
        names = batch.get("source")
        if names is None:
            if not 0 <= dataloader_idx < len(self.sources):
                raise ValueError(f"dataloader_idx {dataloader_idx}: there is no such source")
            return dataloader_idx
        names = [names] if isinstance(names, str) else list(names)
        if len(set(names)) != 1 or names[0] not in self.sources:
            raise ValueError(f"a joint batch must come from one source of {self.sources}: {names}")
        return self.sources.index(names[0])

    def transfer_batch_to_device(
        self, batch: dict[str, Any], device: torch.device, dataloader_idx: int
    ) -> dict[str, Any]:
        sub = self.subs[self.source_index(batch, dataloader_idx)]
        return sub.transfer_batch_to_device(batch, device, dataloader_idx)

    def _stage(self) -> str | None:
        trainer = self.trainer
        if trainer is None:
            return None
        if trainer.training:
            return "train"
        return "eval" if trainer.validating or trainer.sanity_checking or trainer.testing else None

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """The source's own augmentation / normalisation (none without a trainer, as in
        torchgeo), then :meth:`to_unified`."""
        i = self.source_index(batch, dataloader_idx)
        stage = self._stage()
        if stage is not None:
            sub = self.subs[i]
            batch = (sub.train_aug if stage == "train" else sub.aug)(batch)
        return self.to_unified(batch, i)

    def to_unified(self, batch: dict[str, Any], i: int) -> dict[str, Any]:
        """Source ``i``'s batch as the model takes it: mask in unified ids, X of 3 channels,
        per-sample ``"dataset"`` (card), ``"modality"`` (X) and ``"source"`` lists."""
        n = len(batch["mask"])
        batch["mask"] = self.label_space.remap(batch["mask"], self.cards[i], to="unified")
        x: Tensor | None = batch.get("image_x")
        if x is not None and self.x_repeat[i] and x.shape[1] == 1:
            batch["image_x"] = x.expand(-1, 3, *x.shape[2:]).contiguous()
        batch.setdefault("dataset", [self.cards[i]] * n)
        batch.setdefault("modality", [self.source_cfgs[i].x or ""] * n)
        batch.setdefault("source", [self.sources[i]] * n)
        return batch

    def describe(self) -> dict[str, Any]:
        """Checkpoint metadata: the first source's preprocessing keys at the top level (bands
        as the model sees them), the unified ``classes`` / ``palette`` / ``ignore_index`` /
        ``metric_classes``, ``joint`` {source: its own ``describe()`` plus ``ratio``} and
        ``label_space`` (the unified space as a dict, so a checkpoint can rebuild it)."""
        joint = {
            name: {**sub.describe(), "ratio": ratio, "x_repeat3": rep}
            for name, sub, ratio, rep in zip(self.sources, self.subs, self.ratios, self.x_repeat)
        }
        first = self.source_cfgs[0]
        own = {k: v for k, v in joint[self.sources[0]].items() if k not in ("ratio", "x_repeat3")}
        return {
            **own,
            "rgb_bands": list(self.card.modality(first.rgb).bands),
            "x_bands": list(self.card.modality(first.x).bands),  # type: ignore[arg-type]
            "classes": self.card.class_names,
            "palette": [list(c) for c in self.card.palette],
            "ignore_index": self.ignore_index,
            "metric_classes": list(self.card.metric_classes),
            "joint": joint,
            "label_space": label_space_dict(self.label_space),
        }
