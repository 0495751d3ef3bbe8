"""Dataset cards: one YAML file per dataset in data_catalog/, read into typed objects."""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsfusion.paths import catalog_dir
from rsfusion.yamlio import load_yaml


@dataclass(frozen=True)
class ClassInfo:
    """One semantic class: name and its colour in colour-coded label rasters."""

    name: str
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Modality:
    """One input modality of a dataset (an orthophoto, a DSM, ...)."""

    name: str
    patterns: tuple[str, ...]
    bands: tuple[str, ...]
    dtype: str
    description: str = ""
    unit: str | None = None


@dataclass(frozen=True)
class DatasetCard:
    """Everything rsfusion knows about a dataset without reading its files."""

    name: str
    title: str
    kind: str
    gsd_m: float | None
    tile_fields: tuple[str, ...]
    modalities: dict[str, Modality]
    label_patterns: dict[str, tuple[str, ...]]
    label_encoding: str
    ignore_index: int
    classes: tuple[ClassInfo, ...]
    metric_exclude: tuple[str, ...]
    splits: dict[str, dict[str, tuple[str, ...]]]
    default_split: str
    assumed_crs: str | None = None
    boundary_colour: tuple[int, int, int] | None = None
    source_url: str = ""
    licence: str = ""
    files: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [c.colour for c in self.classes]

    @property
    def metric_classes(self) -> list[int]:
        """Indices of the classes averaged in mF1 / mIoU (ISPRS: all but clutter)."""
        return [i for i, c in enumerate(self.classes) if c.name not in self.metric_exclude]

    def modality(self, name: str) -> Modality:
        if name not in self.modalities:
            raise KeyError(
                f"dataset card '{self.name}' has no modality '{name}'; "
                f"choose one of {sorted(self.modalities)}"
            )
        return self.modalities[name]

    def split(self, preset: str | None = None) -> dict[str, tuple[str, ...]]:
        """Tile ids per split ('train', 'test', ...) of a named preset (default: the card's)."""
        preset = preset or self.default_split
        if preset not in self.splits:
            raise KeyError(
                f"dataset card '{self.name}' has no split preset '{preset}'; "
                f"choose one of {sorted(self.splits)}"
            )
        return self.splits[preset]

    def all_tile_ids(self) -> list[str]:
        """Every tile id named by any split preset, in a stable order."""
        seen: dict[str, None] = {}
        for preset in self.splits.values():
            for ids in preset.values():
                for tid in ids:
                    seen.setdefault(tid, None)
        return sorted(seen, key=_natural_key)

    def tile_fields_of(self, tile_id: str) -> dict[str, int | str]:
        """Parse a tile id ('2_10', '7') into the card's named fields ({'row': 2, 'col': 10})."""
        parts = str(tile_id).split("_")
        if len(parts) != len(self.tile_fields):
            raise ValueError(
                f"tile id '{tile_id}' does not have the {len(self.tile_fields)} part(s) "
                f"{list(self.tile_fields)} that dataset '{self.name}' uses (e.g. "
                f"'{'_'.join('1' for _ in self.tile_fields)}')"
            )
        return {k: int(v) if v.isdigit() else v for k, v in zip(self.tile_fields, parts)}

    def format_pattern(self, pattern: str, tile_id: str) -> str:
        """Fill a file pattern's fields for one tile id."""
        return pattern.format(**self.tile_fields_of(tile_id))


def _natural_key(s: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in str(s).replace("_", " ").split()]


def _as_ids(values: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in values)


def _pattern_fields(pattern: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(pattern) if f}


def list_cards() -> list[str]:
    """Names of the shipped dataset cards."""
    return sorted(p.stem for p in catalog_dir().glob("*.yaml"))


def load_card(name_or_path: str | Path) -> DatasetCard:
    """Load a dataset card by name (looked up in data_catalog/) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        stem = path.stem if path.suffix in (".yaml", ".yml") else str(name_or_path)
        path = catalog_dir() / f"{stem}.yaml"
        if not path.exists():
            known = list_cards()
            close = difflib.get_close_matches(stem, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise FileNotFoundError(
                f"no dataset card '{name_or_path}' in {catalog_dir()} (known: {known}){hint}"
            )
    raw = load_yaml(path.read_text())
    try:
        return _parse_card(raw, path)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"dataset card {path} is malformed: {err}") from err


def _parse_card(raw: dict[str, Any], path: Path) -> DatasetCard:
    tile_fields = tuple(raw.get("tile_fields", ["id"]))
    modalities = {}
    for mname, m in raw["modalities"].items():
        patterns = tuple(m["patterns"])
        for p in patterns:
            unknown = _pattern_fields(p.replace(":02d", "")) - set(tile_fields)
            if unknown:
                raise ValueError(f"pattern '{p}' uses fields {unknown} not in {tile_fields}")
        modalities[mname] = Modality(
            name=mname,
            patterns=patterns,
            bands=tuple(m["bands"]),
            dtype=m.get("dtype", "uint8"),
            description=m.get("description", ""),
            unit=m.get("unit"),
        )
    labels = raw.get("labels", {})
    label_patterns = {k: tuple(v) for k, v in labels.items() if k in ("full", "eroded")}
    classes = tuple(ClassInfo(c["name"], tuple(c["colour"])) for c in raw["classes"])
    splits = {
        preset: {split: _as_ids(ids) for split, ids in parts.items()}
        for preset, parts in raw.get("splits", {}).items()
    }
    exclude = tuple(raw.get("metric_exclude", []))
    names = {c.name for c in classes}
    if not set(exclude) <= names:
        raise ValueError(f"metric_exclude names unknown classes {set(exclude) - names}")
    boundary = labels.get("boundary_colour")
    return DatasetCard(
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        kind=raw.get("kind", "remote_sensing"),
        gsd_m=raw.get("gsd_m"),
        tile_fields=tile_fields,
        modalities=modalities,
        label_patterns=label_patterns,
        label_encoding=labels.get("encoding", "rgb"),
        ignore_index=int(raw.get("ignore_index", 255)),
        classes=classes,
        metric_exclude=exclude,
        splits=splits,
        default_split=raw.get("default_split", next(iter(splits), "official")),
        assumed_crs=raw.get("assumed_crs"),
        boundary_colour=tuple(boundary) if boundary else None,
        source_url=raw.get("source_url", ""),
        licence=raw.get("licence", ""),
        files=tuple(raw.get("files", [])),
        path=path,
    )
