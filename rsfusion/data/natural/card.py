"""Parse and validate ``kind: natural`` dataset cards (schema: :mod:`rsfusion.catalog`).

Every problem raises ``ValueError`` naming the key path (``modalities.depth.encodings.metres``)
and, for unknown keys, the closest valid one; :func:`rsfusion.catalog.load_card` adds the file.

Besides the catalog's keys a natural modality may say how copies that store another number of
channels are read (:class:`NaturalModality`)::

    depth:
      bands: [depth]
      channel_variants:   # stored channel count -> how the card's bands are read from it
        4: grey           # ITU-R 601 grey of the first three channels (OpenCV's grey read)
    lidar:
      bands: [lidar_0, lidar_1, lidar_2]
      channel_variants: {4: [0, 1, 2], 1: [0, 0, 0]}   # drop alpha / repeat one channel
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsfusion.catalog import (
    ClassInfo,
    Condition,
    DatasetCard,
    Encoding,
    LabelSpec,
    Modality,
    SplitSource,
)
from rsfusion.data.natural.encodings import RESERVED, check_ops

TOP_KEYS = (
    "name", "title", "kind", "release", "source_url", "licence", "files", "image_size",
    "modalities", "labels", "ignore_index", "classes", "metric_exclude", "splits",
    "default_split", "conditions",
)  # fmt: skip
MODALITY_KEYS = (
    "patterns", "bands", "dtype", "unit", "description", "encodings", "default_encoding", "key",
    "channels_first", "channel_variants",
)  # fmt: skip
LABEL_KEYS = ("patterns", "encoding", "void", "value_map", "offset", "key", "channel")
SOURCE_KINDS = ("file", "range", "ids", "glob")
SOURCE_OPTIONS = ("id_from", "zfill", "count")
SPLIT_PARTS = ("train", "val", "test")
GREY = "grey"


@dataclass(frozen=True)
class NaturalModality(Modality):
    """A natural card's modality; ``channel_variants`` maps another stored channel count to
    the channels read from it (a list of indices, one per band) or ``"grey"`` (one band: the
    ITU-R 601 weighted grey of channels 0-2, as OpenCV's grayscale read; alpha is dropped)."""

    channel_variants: dict[int, tuple[int, ...] | str] = field(default_factory=dict)


def _channel_variants(raw: Any, bands: tuple[str, ...], where: str) -> dict[int, Any]:
    out: dict[int, tuple[int, ...] | str] = {}
    for key, value in _mapping(raw, where).items():
        if not key.isdigit() or int(key) < 1 or int(key) == len(bands):
            raise ValueError(
                f"{where}: key {key!r} must be a stored channel count other than the card's "
                f"{len(bands)}"
            )
        count = int(key)
        if value == GREY:
            if len(bands) != 1 or count < 3:
                raise ValueError(
                    f"{where}.{key}: 'grey' reads one band from a 3- or 4-channel file"
                )
            out[count] = GREY
            continue
        if not (
            isinstance(value, list)
            and len(value) == len(bands)
            and all(isinstance(i, int) and 0 <= i < count for i in value)
        ):
            raise ValueError(
                f"{where}.{key}: expected 'grey' or {len(bands)} channel indices in 0..{count - 1}"
                f", got {value!r}"
            )
        out[count] = tuple(value)
    return out


def _keys(mapping: Any, valid: Iterable[str], where: str) -> dict[str, Any]:
    """``mapping`` as a dict, refusing keys not in ``valid`` (with a suggestion)."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    valid = list(valid)
    for key in mapping:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {valid}"
            raise ValueError(f"{where}: unknown key '{key}'; {hint}")
    return mapping


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """``value`` as a dict with string keys (an empty YAML section is an empty mapping)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _classes(raw: Any) -> tuple[ClassInfo, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("classes: expected a non-empty list of {name, colour}")
    out = []
    for i, c in enumerate(raw):
        c = _keys(c, ("name", "colour"), f"classes[{i}]")
        colour = c.get("colour")
        if not (
            isinstance(c.get("name"), str)
            and isinstance(colour, list)
            and len(colour) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
        ):
            raise ValueError(f"classes[{i}]: expected {{name: str, colour: [r, g, b]}}, got {c}")
        out.append(ClassInfo(c["name"], tuple(colour)))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(
            f"classes: duplicate names {sorted({n for n in names if names.count(n) > 1})}"
        )
    return tuple(out)


def _str_list(value: Any, where: str, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of strings, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{where}: must not be empty")
    return tuple(value)


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return value


def _patterns(value: Any, where: str, fields: set[str]) -> tuple[str, ...]:
    patterns = _str_list(value, where)
    for p in patterns:
        used = {f for _, f, _, _ in string.Formatter().parse(p) if f}
        if "id" not in used:
            raise ValueError(f"{where}: pattern '{p}' must contain {{id}}")
        if used - fields:
            raise ValueError(
                f"{where}: pattern '{p}' uses {sorted(used - fields)}; fields: {sorted(fields)}"
            )
    return patterns


def _modality(name: str, raw: Any, fields: set[str]) -> Modality:
    where = f"modalities.{name}"
    m = _keys(raw, MODALITY_KEYS, where)
    for key in ("patterns", "bands"):
        if key not in m:
            raise ValueError(f"{where}: missing '{key}'")
    bands = _str_list(m["bands"], f"{where}.bands")
    encodings = {}
    for ename, spec in _mapping(m.get("encodings"), f"{where}.encodings").items():
        ewhere = f"{where}.encodings.{ename}"
        spec = _mapping(spec, ewhere)
        ops = {k: v for k, v in spec.items() if k not in RESERVED}
        try:
            derived = check_ops(ops, bands)
        except ValueError as err:
            raise ValueError(f"{ewhere}: {err}") from err
        out_bands = _str_list(spec["bands"], f"{ewhere}.bands") if "bands" in spec else derived
        if len(out_bands) != len(derived):
            raise ValueError(
                f"{ewhere}.bands: names {len(out_bands)} channels, the ops make {len(derived)}"
            )
        encodings[ename] = Encoding(ename, ops, out_bands, str(spec.get("description", "")))
    default = m.get("default_encoding")
    if default is not None and default not in encodings and default != "raw":
        raise ValueError(
            f"{where}.default_encoding: '{default}' is not one of {sorted(encodings)} or 'raw'"
        )
    return NaturalModality(
        name=name,
        patterns=_patterns(m["patterns"], f"{where}.patterns", fields),
        bands=bands,
        dtype=str(m.get("dtype", "uint8")),
        description=str(m.get("description", "")),
        unit=m.get("unit"),
        encodings=encodings,
        default_encoding=default,
        key=m.get("key"),
        channels_first=bool(m.get("channels_first", False)),
        channel_variants=_channel_variants(
            m.get("channel_variants"), bands, f"{where}.channel_variants"
        ),
    )


def _labels(raw: Any, fields: set[str], num_classes: int, ignore: int) -> LabelSpec:
    lab = _keys(raw, LABEL_KEYS, "labels")
    if "patterns" not in lab:
        raise ValueError("labels: missing 'patterns'")
    encoding = lab.get("encoding", "index")
    if encoding not in ("index", "rgb"):
        raise ValueError(f"labels.encoding: expected 'index' or 'rgb', got {encoding!r}")
    void = tuple(_int(v, "labels.void") for v in lab.get("void") or [])
    value_map = {}
    for k, v in (lab.get("value_map") or {}).items():
        k, v = _int(k, "labels.value_map"), _int(v, f"labels.value_map[{k}]")
        if not (0 <= v < num_classes or v == ignore):
            raise ValueError(
                f"labels.value_map[{k}]: {v} is neither a class index (0..{num_classes - 1}) "
                f"nor the ignore index {ignore}"
            )
        value_map[k] = v
    channel = lab.get("channel")
    return LabelSpec(
        patterns=_patterns(lab["patterns"], "labels.patterns", fields),
        encoding=encoding,
        void=void,
        offset=_int(lab.get("offset", 0), "labels.offset"),
        value_map=value_map,
        key=lab.get("key"),
        channel=None if channel is None else _int(channel, "labels.channel"),
    )


def _source(raw: Any, where: str) -> SplitSource:
    if isinstance(raw, list):
        return SplitSource("ids", tuple(str(v) for v in raw))
    src = _keys(raw, SOURCE_KINDS + SOURCE_OPTIONS, where)
    kinds = [k for k in SOURCE_KINDS if k in src]
    if len(kinds) != 1:
        raise ValueError(f"{where}: give exactly one of {list(SOURCE_KINDS)}, got {kinds}")
    kind, value = kinds[0], src[kinds[0]]
    if kind == "range":
        if not (isinstance(value, list) and len(value) == 2):
            raise ValueError(f"{where}.range: expected [first, last], got {value!r}")
        first, last = (_int(v, f"{where}.range") for v in value)
        if first > last:
            raise ValueError(f"{where}.range: first {first} > last {last}")
        value = (first, last)
    elif kind == "ids":
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}.ids: expected a non-empty list")
        value = tuple(str(v) for v in value)
    elif not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{kind}: expected a path relative to the root")
    id_from = src.get("id_from", "stem")
    if id_from not in ("stem", "path"):
        raise ValueError(f"{where}.id_from: expected 'stem' or 'path', got {id_from!r}")
    count = src.get("count")
    return SplitSource(
        kind,
        value,
        id_from=id_from,
        zfill=_int(src.get("zfill", 0), f"{where}.zfill"),
        count=None if count is None else _int(count, f"{where}.count"),
    )


def _conditions(raw: Any) -> dict[str, Condition]:
    out = {}
    for name, spec in _mapping(raw, "conditions").items():
        spec = _keys(_mapping(spec, f"conditions.{name}"), ("match", "value"), f"conditions.{name}")
        match = spec.get("match")
        if match is not None:
            try:
                re.compile(match)
            except re.error as err:
                raise ValueError(f"conditions.{name}.match: bad regex {match!r} ({err})") from err
        value = spec.get("value")
        out[str(name)] = Condition(str(name), match, None if value is None else str(value))
    return out


def parse_natural_card(raw: dict[str, Any], path: Path) -> DatasetCard:
    """Build a :class:`DatasetCard` from a ``kind: natural`` card's YAML data."""
    raw = _keys(raw, TOP_KEYS, "card")
    for key in ("name", "modalities", "labels", "classes", "splits"):
        if key not in raw:
            raise ValueError(f"card: missing '{key}'")
    conditions = _conditions(raw.get("conditions"))
    fields = {"id", "split"} | ({"condition"} if conditions else set())
    classes = _classes(raw["classes"])
    ignore = _int(raw.get("ignore_index", 255), "ignore_index")
    if 0 <= ignore < len(classes):
        raise ValueError(f"ignore_index {ignore} is a class index (0..{len(classes) - 1})")
    modalities = {
        n: _modality(n, m, fields) for n, m in _mapping(raw["modalities"], "modalities").items()
    }
    splits: dict[str, dict[str, SplitSource]] = {}
    for preset, parts in _mapping(raw["splits"], "splits").items():
        parts = _keys(_mapping(parts, f"splits.{preset}"), SPLIT_PARTS, f"splits.{preset}")
        if "train" not in parts:
            raise ValueError(f"splits.{preset}: needs a 'train' part")
        splits[str(preset)] = {p: _source(s, f"splits.{preset}.{p}") for p, s in parts.items()}
    default_split = raw.get("default_split", next(iter(splits)))
    if default_split not in splits:
        raise ValueError(f"default_split '{default_split}' is not one of {sorted(splits)}")
    size = raw.get("image_size", "varying")
    if size != "varying":
        if not (
            isinstance(size, list)
            and len(size) == 2
            and all(_int(v, "image_size") > 0 for v in size)
        ):
            raise ValueError(f"image_size: expected [height, width] or 'varying', got {size!r}")
        size = (size[0], size[1])
    labels = _labels(raw["labels"], fields, len(classes), ignore)
    texts = [p for m in modalities.values() for p in m.patterns] + list(labels.patterns)
    texts += [str(src.value) for parts in splits.values() for src in parts.values()]
    if not any("{condition}" in t for t in texts):
        for c in conditions.values():
            if c.match is None:
                raise ValueError(
                    f"conditions.{c.name}: needs 'match' (a regex on the sample id), since no "
                    "pattern, split file or glob uses {condition}"
                )
    exclude = tuple(raw.get("metric_exclude") or [])
    unknown = set(exclude) - {c.name for c in classes}
    if unknown:
        raise ValueError(f"metric_exclude names unknown classes {sorted(unknown)}")
    return DatasetCard(
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        kind="natural",
        gsd_m=None,
        tile_fields=("id",),
        modalities=modalities,
        label_patterns={},
        label_encoding="index",
        ignore_index=ignore,
        classes=classes,
        metric_exclude=exclude,
        splits={},
        default_split=default_split,
        source_url=raw.get("source_url", ""),
        licence=raw.get("licence", ""),
        files=tuple(raw.get("files") or []),
        path=path,
        release=raw.get("release", ""),
        image_size=None if size == "varying" else size,
        labels=labels,
        sample_splits=splits,
        conditions=conditions,
    )
