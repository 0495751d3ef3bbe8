"""Many rasters: pair RGB and X files, shard them across ranks, skip the finished ones.

Pairing (``--rgb DIR --x DIR``) follows the checkpoint's dataset card: the file-name parts of
its RGB and X patterns (``top_mosaic_09cm_area{area}.tif`` <-> ``dsm_09cm_matching_area{area}.tif``)
are matched on the fields they share; files outside the card's naming pair by identical name or
stem. A CSV with ``rgb,x`` columns (relative paths are resolved against the CSV's folder) gives
pairs explicitly. Under ``torchrun`` every rank takes every WORLD_SIZE-th pair of the sorted list
and writes its own files: no communication, no shared output.

Outputs are named after the whole RGB file name (:func:`output_stem`), and a run in which two
inputs would write one output is refused before any work (:func:`check_unique_outputs`).
"""

from __future__ import annotations

import csv
import os
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rsfusion.catalog import load_card
from rsfusion.data.writers import remove_stale_staging
from rsfusion.errors import PairingError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Pair:
    """One prediction job: an RGB raster and its X raster (or None)."""

    rgb: Path
    x: Path | None


def _regex(pattern: str) -> re.Pattern:
    """A file-name pattern with ``{field}`` / ``{field:02d}`` parts as a regex with groups."""
    parts, seen = [], set()
    for literal, name, spec, _ in string.Formatter().parse(Path(pattern).name):
        parts.append(re.escape(literal))
        if name in seen:
            parts.append(f"(?P={name})")
        elif name:
            seen.add(name)
            parts.append(f"(?P<{name}>{r'[0-9]+' if (spec or '').endswith('d') else '[^/]+?'})")
    return re.compile("".join(parts) + "$")


def _fields(match: re.Match) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted((k, str(int(v)) if v.isdigit() else v) for k, v in match.groupdict().items())
    )


def _rasters(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)


def pair_folders(
    rgb_dir: Path,
    x_dir: Path | None,
    card: str | None = None,
    rgb: str = "rgb",
    x: str | None = None,
) -> list[Pair]:
    """Pair the rasters of two folders by the card's file patterns, else by name or stem."""
    rgb_files = _rasters(rgb_dir)
    if not rgb_files:
        raise PairingError(f"folder {rgb_dir}: no raster files ({', '.join(RASTER_SUFFIXES)})")
    if x_dir is None:
        return [Pair(p, None) for p in rgb_files]
    x_files = _rasters(x_dir)
    by_fields: dict[tuple, Path] = {}
    rgb_res: list[re.Pattern] = []
    if card and x:
        c = load_card(card)
        rgb_res = [_regex(p) for p in c.modality(rgb).patterns]
        for pat in (_regex(p) for p in c.modality(x).patterns):
            for f in x_files:
                m = pat.match(f.name)
                if m:
                    by_fields.setdefault(_fields(m), f)
    by_name = {f.name: f for f in x_files}
    by_stem = {f.stem: f for f in x_files}
    pairs, unpaired = [], []
    for f in rgb_files:
        match = next((m for m in (r.match(f.name) for r in rgb_res) if m), None)
        partner = by_fields.get(_fields(match)) if match else None
        partner = partner or by_name.get(f.name) or by_stem.get(f.stem)
        if partner is None:
            unpaired.append(f.name)
        else:
            pairs.append(Pair(f, partner))
    if unpaired:
        raise PairingError(
            f"no X raster in {x_dir} for {len(unpaired)} file(s) of {rgb_dir}: "
            f"{unpaired[:5]}{' ...' if len(unpaired) > 5 else ''}. Name X files like the card's "
            f"pattern or like their RGB file, or give the pairs as a CSV with --pairs (rgb,x)"
        )
    return pairs


def read_pairs_csv(path: Path) -> list[Pair]:
    """Pairs from a CSV with columns ``rgb`` and ``x`` (``x`` may be empty)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PairingError(f"pairs file {path} cannot be read as a CSV text file: {err}") from err
    if not rows or "rgb" not in rows[0]:
        raise PairingError(f"pairs file {path}: needs a header row with columns rgb,x")
    pairs = []
    for i, row in enumerate(rows, start=2):
        rgb = (path.parent / row["rgb"].strip()).resolve()
        x = (row.get("x") or "").strip()
        xp = (path.parent / x).resolve() if x else None
        for p in (rgb, xp):
            if p is not None and not p.is_file():
                raise PairingError(f"pairs file {path} line {i}: no such file {p}")
        pairs.append(Pair(rgb, xp))
    return pairs


def shard(pairs: list[Pair], rank: int | None = None, world: int | None = None) -> list[Pair]:
    """This rank's share (torchrun's RANK / WORLD_SIZE): every world-th pair of the sorted list."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    ordered = sorted(pairs, key=lambda p: str(p.rgb))
    return ordered[rank::world]


def output_stem(source: str | Path) -> str:
    """The stem outputs of a raster are named with: its file name without the last extension.

    The name is taken whole: a ``?``, ``[`` or any other character in the folder or file name
    is kept. Only a GDAL ``vrt://path?options`` string ends its path at the first ``?`` (as
    GDAL reads it).

    Example:
        >>> output_stem("/data/d?q/tile 1?.tif"), output_stem("vrt:///data/a.tif?a_srs=EPSG:2056")
        ('tile 1?', 'a')
    """
    text = str(source)
    if text.startswith("vrt://"):
        text = text.removeprefix("vrt://").split("?")[0]
    return Path(text).stem


def check_unique_outputs(pairs: Iterable[Pair], stem: Callable[[Path], str] = output_stem) -> None:
    """Refuse pairs of which two would write the same outputs (equal stems), naming both."""
    seen: dict[str, Pair] = {}
    for pair in pairs:
        key = stem(pair.rgb)
        if key in seen:
            first = seen[key].rgb
            same = "is listed twice" if first == pair.rgb else f"and {pair.rgb} would both write"
            raise PairingError(
                f"inputs {first} {same} the outputs {key}_classes.tif etc. (outputs are named "
                "after the RGB file's name without its extension): rename one of them, or "
                "predict them in separate runs with different --out folders"
            )
        seen[key] = pair


def outputs_done(out_dir: Path, stem: str, names: list[str]) -> bool:
    """Every output of a pair exists under its final name (written atomically, so complete)."""
    return all((out_dir / n.format(stem=stem)).is_file() for n in names)


def remove_stale_partials(out_dir: Path) -> list[Path]:
    """Remove the temporary files and staging folders that killed runs left in ``out_dir``.

    Only those of processes of this machine that no longer run are removed: a concurrent run's
    (another shard, another rank) and this process's are kept
    (:func:`rsfusion.data.writers.remove_stale_staging`).
    """
    return remove_stale_staging(out_dir)
