"""The checkpoint schema, at the models level: training writes it, prediction and evaluation read
it (neither imports the other).

A checkpoint is Lightning's file with the trainable weights only (frozen backbone tensors are
left out) and, under ``"rsfusion"``, a :class:`CheckpointMeta`: what prediction needs to
preprocess inputs exactly as in training (bands, normalisation with the X statistics, classes,
palette, window), the model's build spec, the resolved config and a hash of the frozen weights.
Files are read with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsfusion.errors import CheckpointMismatchError, MissingFileError
from rsfusion.models.base import ModelSpec

__all__ = ["META_KEY", "CheckpointMeta", "check_frozen", "frozen_digest", "read_checkpoint"]

#: the key of a checkpoint that holds its :class:`CheckpointMeta` (as a plain dict)
META_KEY = "rsfusion"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about its model and data (stored as a plain dict).

    Attributes:
        card: the dataset card. ``rgb_modality`` / ``x_modality`` (None: RGB only) and their
            ``rgb_bands`` / ``x_bands`` are as the model sees them.
        rgb_norm, x_norm: the normalisations (``Normalise.describe()``, ``XNorm.to_dict()``).
        classes, palette, ignore_index: the card's classes, colours and ignore label.
        window: the training window (prediction's default).
        model: the :class:`ModelSpec` fields; config: the resolved experiment config.
        frozen_sha256: hash of the frozen weights left out of the file (None: nothing frozen).
        extra: what a card kind adds (natural images: encodings, resize, crop, pad multiple).

    Example:
        >>> meta = CheckpointMeta.from_dict({
        ...     "card": "vaihingen", "rgb_modality": "irrg", "rgb_bands": ["nir", "red", "green"],
        ...     "x_modality": "dsm", "x_bands": ["elevation"], "rgb_norm": {}, "x_norm": {},
        ...     "classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "ignore_index": 255,
        ...     "window": 256, "model": {"name": "mobanet", "num_classes": 2,
        ...     "rgb_channels": 3, "x_channels": 1}, "config": {"seed": 7}, "kind": "remote"})
        >>> meta.spec.seed, meta.extra
        (7, {'kind': 'remote'})
        >>> CheckpointMeta.from_dict(meta.to_dict()) == meta
        True
    """

    card: str
    rgb_modality: str
    rgb_bands: list[str]
    x_modality: str | None
    x_bands: list[str]
    rgb_norm: dict[str, Any]
    x_norm: dict[str, Any]
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    window: int
    model: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    frozen_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "checkpoint") -> CheckpointMeta:
        """Read the stored dict; unknown keys go to :attr:`extra`, a missing one is an error
        naming ``source``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise CheckpointMismatchError(
                f"{source} lacks rsfusion metadata {missing}: it was not written by "
                "scripts/train.py (or by a version too old to predict from)"
            )
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The stored form: one flat dict (``extra`` keys at the top level)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    def get(self, key: str, default: Any = None) -> Any:
        """A card-kind key of :attr:`extra` (``"kind"``, ``"pad_multiple"``, ...)."""
        return self.extra.get(key, default)

    @property
    def spec(self) -> ModelSpec:
        """The model's build spec; the backbone seed falls back to the config's (checkpoints
        written before the spec carried it)."""
        return ModelSpec(**{"seed": self.config.get("seed", 42), **self.model})

    def with_frozen(self, model: nn.Module) -> CheckpointMeta:
        """The same metadata with the hash of ``model``'s frozen weights."""
        return dataclasses.replace(self, frozen_sha256=frozen_digest(model))

    def check_fits(self, other: CheckpointMeta, source: str) -> None:
        """Refuse a checkpoint (``source``) whose classes or bands differ from ``other``'s."""
        for key in ("classes", "rgb_bands", "x_bands"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                raise CheckpointMismatchError(
                    f"{source}: its {key} {mine} differ from this config's {theirs}; use the "
                    "config the checkpoint was trained with (its config.yaml sits in the run "
                    "folder)."
                )


def read_checkpoint(
    path: str | Path, flag: str = "--ckpt"
) -> tuple[dict[str, Any], CheckpointMeta]:
    """A checkpoint file (read as data: ``weights_only=True``) and its metadata.

    Raises:
        MissingFileError: no such file.
        CheckpointMismatchError: a file that is not a checkpoint torch can read as data, or one
            without rsfusion metadata; the message names ``flag`` and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{flag} {path}: no such checkpoint file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointMismatchError(
            f"{flag} {path} cannot be read as a checkpoint of tensors and plain values "
            f"({first}); give a last.ckpt / best-*.ckpt written by scripts/train.py"
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get(META_KEY), dict):
        raise CheckpointMismatchError(
            f"{flag} {path} carries no rsfusion metadata: train it with scripts/train.py"
        )
    return saved, CheckpointMeta.from_dict(saved[META_KEY], f"{flag} {path}")


def check_frozen(meta: CheckpointMeta, model: nn.Module, source: str) -> None:
    """Refuse a checkpoint trained on other frozen weights than ``model`` holds (the frozen
    backbone is not in the file: it is rebuilt, and must be the same)."""
    digest = frozen_digest(model)
    if meta.frozen_sha256 != digest:
        raise CheckpointMismatchError(
            f"{source} was trained on a frozen backbone with sha256 {meta.frozen_sha256}, this "
            f"one has {digest}: load the same backbone weights (model.weights of the run's "
            f"config.yaml: {meta.model.get('weights')})"
        )


def frozen_digest(model: nn.Module) -> str | None:
    """SHA-256 over the frozen parameters (name, shape, dtype, bytes); None when none is frozen.

    Checkpoints leave the frozen backbone out and keep this hash; prediction and evaluation
    refuse a checkpoint whose hash differs from the backbone they build.
    """
    from rsfusion.models.backbones.weights import tensors_digest

    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    return tensors_digest(frozen) if frozen else None
