"""Unified label space of the natural RGB-X benchmarks (SegRGB-X generalist training).

One model is trained over several datasets with a unified label space; the loss is
``CE(X, Y) + CE(remap(X), remap(Y))`` with ``remap`` = unified -> the dataset's own classes
(SegRGB-X paper, arXiv 2603.28023, eq. 8). The classes and every dataset's mapping live in
``data_catalog/label_spaces/unified.yaml``; here they become lookup tables usable on tensors on
any device.

Example:
    >>> space = UnifiedLabelSpace.load()
    >>> space.dataset_classes("mfnet")[:3]
    ['unlabelled', 'car', 'person']
    >>> own = torch.tensor([[1, 2, 255]])
    >>> unified = space.remap(own, "mfnet", to="unified")
    >>> [space.classes[i] for i in unified[0, :2].tolist()]
    ['car', 'person']
    >>> space.remap(unified, "mfnet").tolist()
    [[1, 2, 255]]
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rsfusion.errors import UnknownNameError
from rsfusion.paths import catalog_dir
from rsfusion.yamlio import read_yaml

_INVALID = -1  # LUT entry of an id that is neither a class nor the ignore index


def default_path() -> Path:
    """The shipped unified label space: ``data_catalog/label_spaces/unified.yaml``."""
    return catalog_dir() / "label_spaces" / "unified.yaml"


def _entries(raw: Any, where: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Check a list of ``{id, name, ...}`` mappings: ids 0, 1, 2, ... in order, keys present."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: expected a non-empty list of classes")
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or any(k not in entry for k in keys):
            raise ValueError(
                f"{where}[{i}]: expected a mapping with keys {list(keys)}, got {entry}"
            )
        if entry["id"] != i:
            raise ValueError(f"{where}[{i}]: ids must be contiguous from 0, got id {entry['id']}")
    return raw


class UnifiedLabelSpace:
    """Unified classes and each dataset's own classes mapped onto them (one-to-one per dataset).

    Args:
        classes: unified class names; the position is the unified id.
        datasets: per dataset, its own classes in official order as ``(own name, unified name)``.
        ignore_index: label value that passes through every mapping unchanged.
        source: where the space comes from, named in error messages.
    """

    def __init__(
        self,
        classes: Sequence[str],
        datasets: Mapping[str, Sequence[tuple[str, str]]],
        ignore_index: int = 255,
        source: str = "unified label space",
    ) -> None:
        self.source = source
        self.ignore_index = int(ignore_index)
        self._classes = [str(c) for c in classes]
        index = {name: i for i, name in enumerate(self._classes)}
        if len(index) != len(self._classes):
            dup = sorted({c for c in self._classes if self._classes.count(c) > 1})
            raise ValueError(f"{source}: duplicate unified class names {dup}")
        if not 0 < len(self._classes) <= self.ignore_index:
            raise ValueError(
                f"{source}: needs 1 to ignore_index ({self.ignore_index}) unified classes, "
                f"got {len(self._classes)}"
            )
        self._own: dict[str, list[str]] = {}
        self._to_unified: dict[str, Tensor] = {}
        self._from_unified: dict[str, Tensor] = {}
        for name, pairs in datasets.items():
            own = [str(o) for o, _ in pairs]
            targets = [str(u) for _, u in pairs]
            where = f"{source}: dataset '{name}'"
            if len(set(own)) != len(own):
                raise ValueError(f"{where} lists a class twice: {own}")
            if len(own) > self.ignore_index:
                raise ValueError(f"{where} has more classes than ignore_index {self.ignore_index}")
            unknown = [u for u in targets if u not in index]
            if unknown:
                raise ValueError(f"{where} maps to unknown unified classes {unknown}")
            seen: dict[str, str] = {}
            for o, u in zip(own, targets):
                if u in seen:
                    raise ValueError(
                        f"{where}: classes '{seen[u]}' and '{o}' both map to unified '{u}'; "
                        "the mapping must be one-to-one"
                    )
                seen[u] = o
            size = self.ignore_index + 1
            to_u = torch.full((size,), _INVALID, dtype=torch.long)
            to_u[: len(own)] = torch.tensor([index[u] for u in targets], dtype=torch.long)
            to_u[self.ignore_index] = self.ignore_index
            from_u = torch.full((size,), _INVALID, dtype=torch.long)
            from_u[: len(self._classes)] = self.ignore_index
            from_u[to_u[: len(own)]] = torch.arange(len(own))
            from_u[self.ignore_index] = self.ignore_index
            self._own[name], self._to_unified[name], self._from_unified[name] = own, to_u, from_u

    @classmethod
    def from_dict(
        cls, raw: Mapping[str, Any], source: str = "unified label space"
    ) -> UnifiedLabelSpace:
        """Build from the parsed YAML (``ignore_index``, ``classes``, ``datasets``)."""
        classes = _entries(raw.get("classes"), f"{source}: classes", ("id", "name"))
        datasets = raw.get("datasets")
        if not isinstance(datasets, Mapping) or not datasets:
            raise ValueError(f"{source}: expected a non-empty 'datasets' mapping")
        pairs = {
            str(name): [
                (e["name"], e["unified"])
                for e in _entries(
                    spec.get("classes") if isinstance(spec, Mapping) else None,
                    f"{source}: datasets.{name}.classes",
                    ("id", "name", "unified"),
                )
            ]
            for name, spec in datasets.items()
        }
        return cls([c["name"] for c in classes], pairs, raw.get("ignore_index", 255), source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> UnifiedLabelSpace:
        """Read a label-space YAML; default: the shipped ``label_spaces/unified.yaml``."""
        path = Path(path) if path is not None else default_path()
        return cls.from_dict(read_yaml(path, "label space"), source=str(path))

    @property
    def classes(self) -> list[str]:
        """Unified class names; the position is the unified id."""
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def datasets(self) -> list[str]:
        return list(self._own)

    def _check(self, name: str) -> None:
        if name not in self._own:
            close = difflib.get_close_matches(name, self._own, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UnknownNameError(
                f"dataset '{name}' is not in {self.source} (known: {sorted(self._own)}){hint}"
            )

    def dataset_classes(self, name: str) -> list[str]:
        """The dataset's own class names in official order (position = own train id)."""
        self._check(name)
        return list(self._own[name])

    def unified_names(self, name: str) -> list[str]:
        """For each own class of ``name``, in order, the unified class it maps to."""
        lut = self.to_unified(name)
        return [self._classes[int(u)] for u in lut[: len(self._own[name])]]

    def to_unified(self, name: str) -> Tensor:
        """LongTensor LUT indexed by own id: unified id; ``lut[ignore] = ignore``, other ids -1."""
        self._check(name)
        return self._to_unified[name].clone()

    def from_unified(self, name: str) -> Tensor:
        """LongTensor LUT indexed by unified id: own id, or ignore if ``name`` lacks the class."""
        self._check(name)
        return self._from_unified[name].clone()

    def remap(self, labels: Tensor, name: str, to: Literal["own", "unified"] = "own") -> Tensor:
        """Map integer labels between ``name``'s own ids and unified ids (eq. 8's remap: "own").

        Works on any device and shape; returns a long tensor. The ignore index passes through;
        a value that is neither a valid id nor the ignore index raises ``ValueError``.
        """
        self._check(name)
        if to not in ("own", "unified"):
            raise ValueError(f"remap: 'to' must be 'own' or 'unified', got {to!r}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"remap needs integer labels, got {labels.dtype}")
        lut = (self._from_unified if to == "own" else self._to_unified)[name]
        lut = lut.to(labels.device)
        idx = labels.long()
        out = lut[idx.clamp(0, lut.numel() - 1)]
        bad = (idx < 0) | (idx >= lut.numel()) | (out == _INVALID)
        if bool(bad.any()):
            values = sorted({int(v) for v in idx[bad].unique()[:8].tolist()})
            kind, count = (
                ("unified", self.num_classes)
                if to == "own"
                else (f"'{name}'", len(self._own[name]))
            )
            raise ValueError(
                f"labels hold {values} that are neither {kind} class ids (0..{count - 1}) nor "
                f"the ignore index {self.ignore_index}"
            )
        return out

    def select_logits(self, logits: Tensor, name: str, dim: int = 1) -> Tensor:
        """Unified-class scores -> ``name``'s own classes in own order (eq. 8's remap(X))."""
        self._check(name)
        if logits.shape[dim] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[dim]} channels on dim {dim}, the unified space "
                f"{self.num_classes}"
            )
        idx = self._to_unified[name][: len(self._own[name])].to(logits.device)
        return logits.index_select(dim, idx)
