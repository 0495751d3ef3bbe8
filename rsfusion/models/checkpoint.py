"""The checkpoint schema, at the models level: training writes it, prediction and evaluation read
it (neither imports the other).

A checkpoint is Lightning's file with the trainable weights only (frozen backbone tensors are
left out) and, under ``"rsfusion"``, a :class:`CheckpointMeta`: what prediction needs to
preprocess inputs exactly as in training (bands, normalisation with the X statistics, classes,
palette, window), the model's build spec, the resolved config and a hash of the frozen weights.
A torch file from a user is data, never code: :func:`read_torch_file` (the reader of
checkpoints and of backbone weights files) loads it with ``torch.load(weights_only=True)``
(tensors, numbers, strings, lists, dicts), so a file holding pickled Python objects is refused
before anything in it runs. Empty, truncated or corrupt files, and checkpoints whose tensors hold
NaN or inf, are refused with one message naming the file.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rsfusion.errors import (
    CheckpointMismatchError,
    MissingFileError,
    NonFiniteError,
    UserError,
    WeightsError,
)
from rsfusion.models.base import ModelSpec

__all__ = [
    "META_KEY",
    "CheckpointMeta",
    "check_frozen",
    "frozen_digest",
    "nonfinite_tensors",
    "read_checkpoint",
    "read_torch_file",
]

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
        """Refuse a checkpoint (``source``) whose classes, bands or model (``model.name``,
        ``arch``, ``backbone``, ``kwargs``) differ from ``other``'s."""
        fix = (
            "use the config the checkpoint was trained with (its config.yaml sits in the run "
            "folder)."
        )
        for key in ("classes", "rgb_bands", "x_bands"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                raise CheckpointMismatchError(
                    f"{source}: its {key} {mine} differ from this config's {theirs}; {fix}"
                )
        for key in ("name", "arch", "backbone", "kwargs"):
            mine, theirs = getattr(self.spec, key), getattr(other.spec, key)
            if mine != theirs:
                if key == "kwargs":
                    keys = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
                    what = f"model.kwargs differ in {keys}: {mine} vs this config's {theirs}"
                else:
                    what = f"model.{key} is {mine!r}, this config's {theirs!r}"
                raise CheckpointMismatchError(
                    f"{source}: it was built with other model settings ({what}); {fix}"
                )


_CKPT_FIX = "give a last.ckpt / best-*.ckpt written by scripts/train.py"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_torch_file(
    path: str | Path,
    what: str = "weights",
    *,
    name: str | None = None,
    error: type[UserError] = WeightsError,
    fix: str = "pass an intact file of plain tensors (torch.save(model.state_dict(), path))",
) -> Any:
    """A torch file read as data (``torch.load(weights_only=True)``; memory-mapped when it can
    be): the one reader of every torch file a user gives the package.

    Args:
        path: the file.
        what: what it should be, for messages ("a checkpoint", "weights").
        name: how messages name it (default: the path), e.g. ``"--ckpt run/last.ckpt"``.
        error: the :class:`UserError` raised when it cannot be read as data.
        fix: what to do instead, appended to the message.

    Raises:
        MissingFileError: no such file.
        UserError (``error``): an empty, truncated or corrupt file, or one holding pickled
            Python objects (refused before any of them is built: nothing in the file runs).

    Example:
        >>> class Payload:
        ...     def __reduce__(self):
        ...         return (print, ("this would run",))
        >>> path = Path(getfixture("tmp_path")) / "evil.pt"
        >>> torch.save({"w": torch.ones(1), "x": Payload()}, path)
        >>> read_torch_file(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        rsfusion.errors.WeightsError: ...evil.pt holds pickled Python objects (print)...
    """
    path = Path(path)
    label = name or str(path)
    if not path.is_file():
        raise MissingFileError(f"{label}: no such file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:  # torch's zip format is memory-mapped, legacy files read
            mmap = f.read(4) == b"PK\x03\x04"
    except OSError as err:
        raise error(f"{label} cannot be read ({err.strerror or err}): {fix}") from None
    if size == 0:
        raise error(f"{label} is empty (0 bytes): {fix}")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes are not for users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = _GLOBAL.search(str(err))
        if found:
            raise error(
                f"{label} holds pickled Python objects ({found[1]}) besides tensors and plain "
                f"values: they are never loaded, since loading them could run code; {fix}"
            ) from None
        raise error(
            f"{label} cannot be read as {what} of tensors and plain values "
            f"({_torch_reason(err)}): it is corrupt, not a torch file, or holds pickled "
            f"objects; {fix}"
        ) from None
    except (PermissionError, IsADirectoryError) as err:
        raise error(f"{label} cannot be read ({err.strerror or err}): {fix}") from None
    except Exception as err:  # truncated zip, garbage, I/O error: one clear message
        raise error(
            f"{label} cannot be read as {what} of tensors and plain values "
            f"({_torch_reason(err)}): it is truncated, corrupt, or not a torch file; {fix}"
        ) from None


def _torch_reason(err: BaseException) -> str:
    """The informative line of a torch.load error (torch's own advice left out)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else type(err).__name__)
    first = lines[0] if lines else ""
    first = first.split(". This is an internal miniz error")[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def nonfinite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``tensors`` holding NaN or inf.

    Example:
        >>> nonfinite_tensors({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")]),
        ...                    "n": torch.tensor([3]), "s": "text"})
        ['b']
    """
    return [
        k
        for k, v in tensors.items()
        if isinstance(v, Tensor)
        and (v.is_floating_point() or v.is_complex())
        and not bool(torch.isfinite(v).all())
    ]


def read_checkpoint(
    path: str | Path, flag: str = "--ckpt"
) -> tuple[dict[str, Any], CheckpointMeta]:
    """A checkpoint file (read as data: :func:`read_torch_file`) and its metadata.

    Raises:
        MissingFileError: no such file.
        CheckpointMismatchError: a file that is not a checkpoint torch can read as data (empty,
            truncated, corrupt, or holding pickled objects), or one without rsfusion metadata;
            the message names ``flag`` and the file.
        NonFiniteError: weights holding NaN or inf (a run that diverged).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{flag} {path}: no such checkpoint file")
    saved = read_torch_file(
        path, "a checkpoint", name=f"{flag} {path}", error=CheckpointMismatchError, fix=_CKPT_FIX
    )
    if not isinstance(saved, dict) or not isinstance(saved.get(META_KEY), dict):
        raise CheckpointMismatchError(
            f"{flag} {path} carries no rsfusion metadata: train it with scripts/train.py"
        )
    state = saved.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{flag} {path} holds no state_dict of weights; {_CKPT_FIX}")
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteError(
            f"{flag} {path}: {len(bad)} of {len(state)} tensors hold NaN or inf (e.g. {bad[0]}); "
            "the run that wrote it diverged: use an earlier checkpoint, and retrain with a lower "
            "optim.lr or check the training data for NaN/inf values"
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
