"""Dataset cards: one YAML file per dataset in data_catalog/, read into typed objects.

Two kinds of card. ``kind: remote_sensing`` (ISPRS, Autzen): georeferenced tiles named by
``tile_fields``, colour-coded label rasters, split presets listing tile ids.

``kind: natural`` (NYUDepthV2, SUN-RGBD, MFNet, ...): one sample = a few aligned image files
named by a sample id. Keys (unknown keys are refused, with a suggestion)::

    name, title, kind: natural
    release: which copy of the dataset the layout follows, and where it comes from
    source_url, licence, files
    image_size: [h, w]       # or "varying": then configs crop/resize per sample on the CPU
    modalities:              # at least the RGB one and one X; the config picks data.rgb/data.x
      <name>:
        patterns: ["Depth/{id}.png", ...]  # relative to the root; first existing file wins;
                             # fields {id}, {split} (the split part: train/val/test) and
                             # {condition} (when the card has conditions)
        bands: [depth]       # the stored channels
        dtype, unit, description   # informative
        key: <var>           # the variable inside .mat/.npz files (default: the only one)
        channels_first: false      # .npy/.mat arrays stored (C, H, W) instead of (H, W, C)
        encodings:           # name -> ordered ops turning the stored file into channels
          metres: {invalid: [0], scale: {uint16: 0.001}}   # see rsfusion.data.natural.encodings
          repeat3: {to_unit: true, repeat: 3, bands: [depth, depth, depth]}
        default_encoding: repeat3  # used when the config's data.x_encoding is null
    labels:
      patterns: ["Label/{id}.png"]  # 8/16-bit index PNG, .npy, .npz or .mat
      encoding: index        # index (class ids) or rgb (colours of the classes' palette)
      void: [0]              # stored values meaning "unlabelled" -> ignore_index
      value_map: {7: 3}      # stored -> class index, before the offset (optional)
      offset: -1             # class = stored + offset for the rest (NYU 1..40 -> 0..39)
      key, channel           # .mat/.npz variable; channel of a multi-channel index image
    ignore_index: 255        # outside [0, classes); every other value must map into it
    classes: [{name, colour}, ...]
    metric_exclude: []
    splits:                  # presets -> parts (train / val / test) -> one sample source:
      official:
        train: {file: train.txt, count: 795}  # the release's split file: one sample a line,
                             # id = first token's file stem (id_from: path keeps folders)
        test: {range: [1, 654], zfill: 0}     # or {ids: [...]}, or {glob: "test/rgb/*.png"}
    default_split: official
    conditions:              # optional named subsets; the config's data.condition picks one
      night: {match: "N$"}   # regex searched in the sample id, and/or
      fog: {value: fog}      # the value of {condition} in patterns, files and globs

Natural cards are parsed and validated by :mod:`rsfusion.data.natural.card`; errors name the
card file and the key path (``modalities.depth.encodings.metres: unknown op 'scael'; did you
mean 'scale'?``). Encoding ops are listed in :mod:`rsfusion.data.natural.encodings`.

Adding a natural dataset: (1) this card, ``data_catalog/<name>.yaml``; (2) a fake-release
generator ``tests/data/<name>/data.py`` and tests; (3) ``configs/bases/<name>.yaml`` on top of
``bases/natural.yaml`` (crop sizes, encodings) and a runnable config; (4) only when the card
cannot describe the release, ``rsfusion/data/natural/<name>.py`` with a ``NaturalRGBXDataset``
subclass setting ``card_name`` (it is found by the card's name).
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rsfusion.errors import ConfigError, MissingFileError, UnknownNameError
from rsfusion.paths import catalog_dir
from rsfusion.yamlio import read_yaml


@dataclass(frozen=True)
class ClassInfo:
    """One semantic class: name and its colour in colour-coded label rasters."""

    name: str
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Encoding:
    """How a natural card's stored modality file becomes channels: ordered ops and band names."""

    name: str
    ops: dict[str, Any]
    bands: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Modality:
    """One input modality of a dataset (an orthophoto, a DSM, a depth map, ...)."""

    name: str
    patterns: tuple[str, ...]
    bands: tuple[str, ...]
    dtype: str
    description: str = ""
    unit: str | None = None
    encodings: dict[str, Encoding] = field(default_factory=dict)
    default_encoding: str | None = None
    key: str | None = None
    channels_first: bool = False

    def encoding(self, name: str | None = None) -> Encoding:
        """The named encoding, the default one, or "raw" (stored channels as they are)."""
        name = name or self.default_encoding or "raw"
        if name in self.encodings:
            return self.encodings[name]
        if name == "raw":
            return Encoding("raw", {}, self.bands, "stored values as they are")
        raise UnknownNameError(
            f"modality '{self.name}' has no encoding '{name}'; choose one of "
            f"{sorted({*self.encodings, 'raw'})}"
        )


@dataclass(frozen=True)
class LabelSpec:
    """Where a natural card's label files are and how stored values become class indices."""

    patterns: tuple[str, ...]
    encoding: str = "index"
    void: tuple[int, ...] = ()
    offset: int = 0
    value_map: dict[int, int] = field(default_factory=dict)
    key: str | None = None
    channel: int | None = None


@dataclass(frozen=True)
class SplitSource:
    """The samples of one split part: a split file, an id range, an id list or a file glob."""

    kind: str
    value: Any
    id_from: str = "stem"
    zfill: int = 0
    count: int | None = None


@dataclass(frozen=True)
class Condition:
    """A named subset of a natural dataset (day/night, a weather, ...)."""

    name: str
    match: str | None = None
    value: str | None = None


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
    release: str = ""
    image_size: tuple[int, int] | None = None
    labels: LabelSpec | None = None
    sample_splits: dict[str, dict[str, SplitSource]] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)

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
            raise UnknownNameError(
                f"dataset card '{self.name}' has no modality '{name}'; "
                f"choose one of {sorted(self.modalities)}"
            )
        return self.modalities[name]

    def split(self, preset: str | None = None) -> dict[str, tuple[str, ...]]:
        """Tile ids per split ('train', 'test', ...) of a named preset (default: the card's)."""
        if self.kind == "natural":
            raise UnknownNameError(
                f"dataset card '{self.name}' is a natural-image card: its samples come from the "
                "release's split files (NaturalRGBXDataset lists them); use sample_split()"
            )
        preset = preset or self.default_split
        if preset not in self.splits:
            raise UnknownNameError(
                f"dataset card '{self.name}' has no split preset '{preset}'; "
                f"choose one of {sorted(self.splits)}"
            )
        return self.splits[preset]

    def sample_split(self, preset: str | None, part: str) -> SplitSource:
        """A natural card's sample source for one part ('train', 'val', 'test') of a preset."""
        preset = preset or self.default_split
        if preset not in self.sample_splits:
            raise UnknownNameError(
                f"dataset card '{self.name}' has no split preset '{preset}'; "
                f"choose one of {sorted(self.sample_splits)}"
            )
        parts = self.sample_splits[preset]
        if part not in parts:
            raise UnknownNameError(f"split preset '{preset}' of '{self.name}' has no '{part}' part")
        return parts[part]

    def encoded(self, choices: dict[str, str | None]) -> DatasetCard:
        """This card with the chosen modalities' ``bands`` replaced by their encodings' output
        channels (``{"depth": "repeat3"}``; None = the modality's default encoding), so that
        channel counts and checkpoint metadata describe what the model receives."""
        modalities = dict(self.modalities)
        for name, choice in choices.items():
            mod = self.modality(name)
            modalities[name] = replace(mod, bands=mod.encoding(choice).bands)
        return replace(self, modalities=modalities)

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
            raise MissingFileError(
                f"no dataset card '{name_or_path}' in {catalog_dir()} (known: {known}){hint}"
            )
    raw = read_yaml(path, "dataset card")  # plain data only: a !!python tag is refused
    if not isinstance(raw, dict):
        raise ConfigError(f"dataset card {path} must hold a mapping (name, modalities, classes)")
    try:
        return _parse_card(raw, path)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"dataset card {path} is malformed: {err}") from err


def _parse_card(raw: dict[str, Any], path: Path) -> DatasetCard:
    if raw.get("kind") == "natural":
        from rsfusion.data.natural.card import parse_natural_card

        return parse_natural_card(raw, path)
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
