"""Card-driven natural-image RGB+X datasets (NYUDepthV2, SUN-RGBD, MFNet, ...) on torchgeo.

One :class:`NaturalRGBXDataset` reads any ``kind: natural`` card (schema in
:mod:`rsfusion.catalog`): sample ids from the release's split files, one file per modality
found through the card's patterns, the chosen encodings (:mod:`.encodings`), labels mapped to
class indices. Samples use the ISPRS keys: ``image`` (RGB float, 0-255), ``image_x`` (X, float,
normalised, unknown values 0) and ``mask`` (long, the card's ignore index). A dataset whose
release needs more than the card says is a subclass in ``rsfusion/data/natural/<card>.py``
setting ``card_name`` (it registers itself) and overriding :meth:`list_samples`,
:meth:`find_file` or :meth:`read_modality`.

Images of varying size (SUN-RGBD, UrbanLF) get ``transforms.SampleResizeCrop`` per sample on the CPU;
``transforms.pad_collate`` pads what still differs (mask: ignore) so any batch stacks.

Copies of a release differ: a modality file stored with another channel count is read as the
card's ``channel_variants`` say (DFormer's RGBA depth PNGs: one grey channel), colour-coded
labels are decoded from the file's colours whatever its mode (palette PNGs included), and
release archives the card lists lying in the root are unpacked there on first use
(:mod:`rsfusion.data.archives`); a missing file's error names the archive it comes in.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import torch
from torchgeo.datasets import NonGeoDataset

from rsfusion.catalog import DatasetCard, LabelSpec, Modality, load_card
from rsfusion.data.archives import unpack_needed, where_from
from rsfusion.data.labels import PaletteDecoder
from rsfusion.data.natural.card import GREY
from rsfusion.data.natural.encodings import apply_ops
from rsfusion.data.natural.readers import SampleFileError, SampleFormatError, read_file, to_grey
from rsfusion.data.natural.transforms import Sample
from rsfusion.data.normalise import XNorm
from rsfusion.errors import UnknownNameError

NATURAL_DATASETS: dict[str, type[NaturalRGBXDataset]] = {}


@dataclass(frozen=True)
class SampleRef:
    """One sample: its id, the card's split part and (for conditional releases) condition."""

    id: str
    split: str
    condition: str | None = None

    def fields(self) -> dict[str, str]:
        out = {"id": self.id, "split": self.split}
        return out if self.condition is None else {**out, "condition": self.condition}


def _uses_condition_field(card: DatasetCard) -> bool:
    patterns = [p for m in card.modalities.values() for p in m.patterns]
    patterns += list(card.labels.patterns) if card.labels else []
    patterns += [
        str(s.value) for parts in card.sample_splits.values() for s in parts.values()
    ]  # split files and globs
    return any("{condition}" in p for p in patterns)


def _natural_key(s: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]


def _id_of(token: str, id_from: str) -> str:
    path = PurePosixPath(token.replace("\\", "/"))
    return path.stem if id_from == "stem" else str(path.with_suffix(""))


def list_samples(
    card: DatasetCard,
    root: str | Path,
    preset: str | None,
    part: str,
    condition: str | None = None,
) -> list[SampleRef]:
    """The samples of one split part, read from the release (split file, glob) or the card.

    Raises:
        KeyError: unknown preset, part or condition.
        SampleFileError: the split file is missing.
    """
    root = Path(root)
    source = card.sample_split(preset, part)
    if condition is not None and condition not in card.conditions:
        raise UnknownNameError(
            f"dataset card '{card.name}' has no condition '{condition}'; "
            f"choose one of {sorted(card.conditions)} or null"
        )
    chosen = [card.conditions[condition]] if condition else list(card.conditions.values())
    values: list[str | None] = [None]
    if _uses_condition_field(card):
        values = [c.value or c.name for c in chosen]
    refs: list[SampleRef] = []
    for value in values:
        fields = {"split": part, "condition": value or ""}
        if source.kind == "file":
            path = root / str(source.value).format(**fields)
            if not path.is_file():
                hint = where_from(card, root, "splits") or " Check data.root."
                raise SampleFileError(
                    f"missing split file {path} ({card.name} '{part}' samples).{hint}"
                )
            lines = [ln.split() for ln in path.read_text().splitlines()]
            ids = [_id_of(t[0], source.id_from) for t in lines if t and not t[0].startswith("#")]
        elif source.kind == "range":
            first, last = source.value
            ids = [str(i).zfill(source.zfill) for i in range(first, last + 1)]
        elif source.kind == "ids":
            ids = list(source.value)
        else:
            found = root.glob(str(source.value).format(**fields))
            ids = sorted(
                (_id_of(str(p.relative_to(root)), source.id_from) if source.id_from == "path"
                 else p.stem for p in found),
                key=_natural_key,
            )  # fmt: skip
        refs += [SampleRef(i, part, value) for i in ids]
    if condition and card.conditions[condition].match:
        rx = re.compile(card.conditions[condition].match)
        refs = [r for r in refs if rx.search(r.id)]
    return refs


def decode_index_labels(
    stored: np.ndarray, spec: LabelSpec, num_classes: int, ignore_index: int, source: str
) -> np.ndarray:
    """Stored label values -> class indices: void -> ignore, value_map, then + offset.

    Raises:
        SampleFormatError: a value that is neither void nor maps into 0..num_classes-1.
    """
    if stored.dtype.kind == "f" and not np.all(np.isfinite(stored) & (stored == np.round(stored))):
        raise SampleFormatError(f"{source}: label values must be whole numbers")
    values, inverse = np.unique(stored.astype(np.int64), return_inverse=True)
    mapped = values + spec.offset
    for old, new in spec.value_map.items():
        mapped[values == old] = new
    void = np.isin(values, spec.void)
    mapped[void] = ignore_index
    bad = ~void & ~np.isin(values, list(spec.value_map)) & ((mapped < 0) | (mapped >= num_classes))
    if bad.any():
        raise SampleFormatError(
            f"{source}: label values {values[bad][:8].tolist()} map outside the card's "
            f"{num_classes} classes (void {list(spec.void)}, offset {spec.offset}); "
            "is this the label set the card describes?"
        )
    return mapped[inverse].reshape(stored.shape)


def fit_channels(stored: np.ndarray, mod: Modality, path: Path) -> np.ndarray:
    """A stored ``(C, H, W)`` array with the card's channels of ``mod``: as stored, or read
    through the modality's ``channel_variants`` (e.g. one grey channel of an RGBA depth PNG).

    Raises:
        SampleFormatError: a channel count the card neither stores nor lists as a variant.
    """
    count = stored.shape[0]
    if count == len(mod.bands):
        return stored
    variants = getattr(mod, "channel_variants", {})
    how = variants.get(count)
    if how is None:
        also = f" (also read: {sorted(variants)} channels)" if variants else ""
        raise SampleFormatError(
            f"{path}: has {count} channels; the card's '{mod.name}' modality stores "
            f"{len(mod.bands)} {list(mod.bands)}{also}"
        )
    return to_grey(stored) if how == GREY else stored[list(how)]


def normalise_x(x: np.ndarray, norm: XNorm) -> np.ndarray:
    """X normalisation per sample, as MoBaNet's per-raster one: ``raster_minmax`` (the
    sample's min-max of known values), ``dataset`` (mean/std), ``scale``; unknown (NaN) -> 0."""
    if norm.mode == "raster_minmax":
        known = x[np.isfinite(x)]
        lo, hi = (float(known.min()), float(known.max())) if known.size else (0.0, 1.0)
        out = (x - lo) / max(hi - lo, 1e-6)
    elif norm.mode == "dataset":
        if norm.mean is None or norm.std is None:
            raise ValueError("x_norm 'dataset' needs mean and std (fit them on the train set)")
        out = (x - norm.mean) / max(norm.std, 1e-6)
    else:
        out = x / norm.scale
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


class NaturalRGBXDataset(NonGeoDataset):
    """RGB (+ X) samples and index labels of a natural-image release described by a card.

    Args:
        root: the release's root folder.
        split: 'train', 'val' or 'test'; 'val' reads the card's 'val' part, else its 'test'.
        card: card name or object (default: the subclass's ``card_name``).
        rgb: the RGB modality; x: the X modality (None: RGB only).
        encodings: modality -> encoding name (missing or None: the modality's default).
        preset: split preset (default: the card's); condition: a card condition or None.
        x_norm: X normalisation (default: none, ``scale`` 1).
        transform: per-sample CPU transform (e.g. :class:`SampleResizeCrop`).
        samples: explicit samples instead of the split's.
    """

    card_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.card_name:
            NATURAL_DATASETS[cls.card_name] = cls

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        card: str | DatasetCard | None = None,
        rgb: str = "rgb",
        x: str | None = None,
        encodings: dict[str, str | None] | None = None,
        preset: str | None = None,
        condition: str | None = None,
        x_norm: XNorm | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        samples: Sequence[SampleRef] | None = None,
    ) -> None:
        card = card or self.card_name
        if card is None:
            raise ValueError(f"{type(self).__name__} needs a dataset card")
        self.card = card if isinstance(card, DatasetCard) else load_card(card)
        if self.card.kind != "natural" or self.card.labels is None:
            raise ValueError(f"dataset card '{self.card.name}' is not a natural-image card")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.rgb, self.x = rgb, x
        self.encodings = {rgb: None, **({x: None} if x else {}), **(encodings or {})}
        for name, choice in self.encodings.items():
            self.card.modality(name).encoding(choice)  # unknown names fail here, not mid-epoch
        self.card.sample_split(preset, "train")  # an unknown preset fails here
        parts = self.card.sample_splits[preset or self.card.default_split]
        self.part = "test" if split == "val" and "val" not in parts else split
        self.preset, self.condition = preset, condition
        self.x_norm = x_norm or XNorm("scale", 1.0)
        self.transform = transform
        if self.root.is_dir():
            unpack_needed(self.card, self.root, [*self.encodings, "labels", "splits"],
                          SampleFileError)  # fmt: skip
        self.samples = list(samples) if samples is not None else self.list_samples()
        self._palette = (
            PaletteDecoder(self.card.palette, self.card.ignore_index)
            if self.card.labels.encoding == "rgb"
            else None
        )

    def list_samples(self) -> list[SampleRef]:
        """The split's samples (override for releases the card's sources cannot describe)."""
        return list_samples(self.card, self.root, self.preset, self.part, self.condition)

    def __len__(self) -> int:
        return len(self.samples)

    def find_file(self, patterns: Sequence[str], ref: SampleRef, what: str) -> Path:
        """The first existing file among ``patterns`` filled for ``ref``."""
        paths = [self.root / p.format(**ref.fields()) for p in patterns]
        for path in paths:
            if path.is_file():
                return path
        tried = ", ".join(str(p) for p in paths)
        entry = "labels" if what == "label" else what.strip("'")
        hint = where_from(self.card, self.root, entry)
        raise SampleFileError(
            f"sample '{ref.id}' ({ref.split}): missing {what} file {tried}"
            + (f".{hint}" if hint else "")
        )

    def read_modality(self, name: str, ref: SampleRef) -> np.ndarray:
        """One modality of a sample, encoded: float32 ``(C, H, W)``, unknown values NaN."""
        mod = self.card.modality(name)
        path = self.find_file(mod.patterns, ref, f"'{name}'")
        stored = fit_channels(read_file(path, mod.key, mod.channels_first), mod, path)
        return apply_ops(stored, mod.encoding(self.encodings.get(name)).ops, str(path))

    def read_labels(self, ref: SampleRef) -> np.ndarray:
        """A sample's class indices ``(H, W)`` int64 (ignore index where unlabelled)."""
        spec = self.card.labels
        assert spec is not None
        path = self.find_file(spec.patterns, ref, "label")
        stored = read_file(path, spec.key, as_rgb=self._palette is not None)
        if self._palette is not None:
            rgb = torch.from_numpy(np.ascontiguousarray(stored[:3]))
            return self._palette(rgb, str(path)).numpy().astype(np.int64)
        if stored.shape[0] > 1:
            if spec.channel is None or spec.channel >= stored.shape[0]:
                raise SampleFormatError(
                    f"{path}: index labels with {stored.shape[0]} channels; set the card's "
                    "labels.channel to the one holding the class values"
                )
            stored = stored[spec.channel : spec.channel + 1]
        return decode_index_labels(
            stored[0], spec, self.card.num_classes, self.card.ignore_index, str(path)
        )

    def __getitem__(self, index: int) -> Sample:
        ref = self.samples[index]
        rgb = self.read_modality(self.rgb, ref)
        x = self.read_modality(self.x, ref) if self.x else None
        mask = self.read_labels(ref)
        shapes = {"rgb": rgb.shape[1:], "label": mask.shape}
        if x is not None:
            shapes["x"] = x.shape[1:]
        if len(set(shapes.values())) > 1:
            raise SampleFormatError(
                f"sample '{ref.id}' ({ref.split}) under {self.root}: RGB, X and label sizes "
                f"differ {dict((k, tuple(v)) for k, v in shapes.items())}; they must be aligned"
            )
        sample = {"image": torch.from_numpy(rgb), "mask": torch.from_numpy(mask)}
        if x is not None:
            sample["image_x"] = torch.from_numpy(normalise_x(x, self.x_norm))
        sample = self.transform(sample) if self.transform is not None else sample
        # per-sample metadata (collated to lists): the card and its X modality (SegRGB-X)
        return {**sample, "dataset": self.card.name, "modality": self.x or ""}

    def file_groups(self) -> list[tuple[str, ...]]:
        """Pattern groups a sample needs, one file of each (modalities read, then labels)."""
        spec = self.card.labels
        assert spec is not None
        return [self.card.modality(m).patterns for m in self.encodings] + [spec.patterns]

    def missing_files(self) -> list[str]:
        """Files the split's samples need that do not exist (for ``--dry-run``)."""
        missing = []
        for ref in self.samples:
            for patterns in self.file_groups():
                paths = [self.root / p.format(**ref.fields()) for p in patterns]
                if not any(p.is_file() for p in paths):
                    missing.append(str(paths[0]))
        return missing


def dataset_class_for(card_name: str) -> type[NaturalRGBXDataset]:
    """The registered dataset class of a card (module ``rsfusion.data.natural.<card>``, if
    any), else the generic :class:`NaturalRGBXDataset`."""
    if card_name not in NATURAL_DATASETS:
        module = f"rsfusion.data.natural.{card_name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return NATURAL_DATASETS.get(card_name, NaturalRGBXDataset)
