"""Windows of real rasters for int8 calibration and for the agreement check that follows it.

Static quantisation fixes each activation's int8 range from the values it takes on sample
inputs, so the samples must look like what the model will predict on. They come from:

* the checkpoint's own training tiles (:func:`config_pairs`): its resolved config names the
  dataset card, the data root and the tiles; the check windows come from its validation tiles
  when they are other tiles (with their labels, for the mIoU change), else from windows of the
  training tiles not used for calibration;
* a folder of rasters the user names (:func:`folder_pairs`), paired as prediction pairs them.

Windows are read and normalised exactly as prediction reads them (same reader, same RGB and X
normalisation, X nodata as 0), on a grid of non-overlapping windows per raster visited in a
seeded random order (:func:`sample_windows`), so the calibration and check windows never share
a pixel.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from rsfusion.errors import ConfigError, MissingFileError, PredictionError
from rsfusion.models.checkpoint import CheckpointMeta

__all__ = [
    "CalibPair",
    "Windows",
    "config_pairs",
    "folder_pairs",
    "grid_positions",
    "sample_windows",
]


@dataclass(frozen=True)
class CalibPair:
    """One raster pair to draw windows from; ``label`` is a label raster or None."""

    name: str
    rgb: str
    x: str | None = None
    label: str | None = None


@dataclass
class Windows:
    """Normalised model inputs of ``n`` windows, their labels where known, and their origin.

    Attributes:
        rgb: (N, C, S, S) float32; x: (N, Cx, S, S) float32 or None.
        labels: (N, S, S) int64 with the ignore index where unknown, or None (no labels).
        origin: ``name@row,col`` per window.
    """

    rgb: np.ndarray
    x: np.ndarray | None
    labels: np.ndarray | None = None
    origin: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rgb)


def _data_config(meta: CheckpointMeta, source: str) -> dict[str, Any]:
    data = (meta.config or {}).get("data") or {}
    if meta.get("kind") == "natural" or data.get("joint") or not data.get("train_tiles"):
        raise ConfigError(
            f"{source}: its config names no tiles of a raster dataset to calibrate on "
            "(natural-image and joint checkpoints have none); give rasters like those to "
            "predict on with --calib-rgb DIR (and --calib-x DIR)"
        )
    return data


def _resolve_root(root: str | Path, source: str, given: bool) -> Path:
    path = Path(root).expanduser()
    if path.is_dir():
        return path
    if given:
        raise MissingFileError(f"--data-root {root}: no such folder")
    raise MissingFileError(
        f"{source}: its training data root {root} is not a folder here; give it with "
        "--data-root PATH, or calibrate on rasters like those to predict on with --calib-rgb DIR "
        "(and --calib-x DIR)"
    )


def config_pairs(
    meta: CheckpointMeta, root: str | Path | None = None, source: str = "checkpoint"
) -> tuple[list[CalibPair], list[CalibPair], dict[str, Any]]:
    """The checkpoint's training tiles (calibration), its other validation tiles (check) and
    the facts to store: card, root, tile ids.

    ``root`` replaces the config's data root (the data moved). Labels are the config's
    evaluation labels (eroded or full), else the other kind.

    Raises:
        ConfigError: the config names no raster tiles (natural-image or joint checkpoints).
        MissingFileError: the data root or every training tile is missing.
        TileError: a tile's files do not fit together (as in training).
    """
    from rsfusion.catalog import load_card
    from rsfusion.data.tiles import find_tiles

    data = _data_config(meta, source)
    given = root is not None
    folder = _resolve_root(root if given else data.get("root", ""), source, given)
    card = load_card(data.get("card") or meta.card)
    train = [str(t) for t in data["train_tiles"]]
    val = [str(t) for t in data.get("val_tiles") or () if str(t) not in train]
    kind = str(data.get("eval_labels") or "full")
    kind = "eroded" if kind.startswith("eroded") else "full"

    def pairs(ids: list[str]) -> tuple[list[CalibPair], list[str]]:
        if not ids:
            return [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # grid notes are training's to give
            tiles, missing = find_tiles(
                card, folder, ids, data.get("rgb") or "rgb", data.get("x") or None,
                labels=False, align_x=bool(data.get("align_x")),
            )  # fmt: skip
        out = []
        for tile in tiles:
            label = tile.label_for(kind)
            out.append(
                CalibPair(
                    f"tile {tile.tile_id}", tile.rgb.source,
                    tile.x.source if tile.x is not None and meta.x_bands else None,
                    label.source if label is not None else None,
                )
            )  # fmt: skip
        return out, missing

    calib, missing = pairs(train)
    if not calib:
        raise MissingFileError(
            f"{source}: none of its training tiles {train} is under {folder}; give the data "
            "root with --data-root PATH, or rasters to calibrate on with --calib-rgb DIR"
        )
    check, _ = pairs(val)
    facts = {
        "source": "training tiles",
        "card": card.name,
        "root": str(folder.absolute()),
        "tiles": [p.name.removeprefix("tile ") for p in calib],
        "missing_tiles": missing,
        "check_tiles": [p.name.removeprefix("tile ") for p in check],
        "labels": kind,
    }
    return calib, check, facts


def folder_pairs(
    meta: CheckpointMeta, rgb: str | Path, x: str | Path | None = None
) -> tuple[list[CalibPair], dict[str, Any]]:
    """Rasters the user names: a file or a folder of RGB rasters, and their X rasters (a file
    or a folder, paired by the card's file patterns, else by name, as prediction pairs them).

    Raises:
        MissingFileError: a path that does not exist.
        PredictionError: X missing for a model that reads it.
        PairingError: RGB files without an X partner.
    """
    from rsfusion.inference.folder import pair_folders

    rgb, x = Path(rgb), None if x is None else Path(x)
    for flag, path in (("--calib-rgb", rgb), ("--calib-x", x)):
        if path is not None and not path.exists():
            raise MissingFileError(f"{flag} {path}: no such file or folder")
    if meta.x_bands and x is None:
        raise PredictionError(
            f"the model reads X {meta.x_bands}: give its rasters with --calib-x (a file or a "
            "folder)"
        )
    if not meta.x_bands:
        x = None
    if rgb.is_dir():
        if x is not None and not x.is_dir():
            raise PredictionError(f"--calib-rgb {rgb} is a folder: give a folder with --calib-x")
        found = pair_folders(rgb, x, meta.card, meta.rgb_modality, meta.x_modality)
        pairs = [
            CalibPair(p.rgb.name, str(p.rgb), None if p.x is None else str(p.x)) for p in found
        ]
    else:
        pairs = [CalibPair(rgb.name, str(rgb), None if x is None else str(x))]
    facts = {
        "source": "rasters given",
        "rgb": str(rgb.absolute()),
        "x": None if x is None else str(x.absolute()),
        "files": [p.name for p in pairs],
    }
    return pairs, facts


def grid_positions(
    height: int, width: int, window: int, stride: int | None = None
) -> list[tuple[int, int]]:
    """Top-left corners of a grid of windows over a raster, ``stride`` apart (default: the
    window, so they do not overlap); one padded window where the raster is smaller.

    Example:
        >>> grid_positions(300, 200, 128)
        [(0, 0), (128, 0)]
        >>> grid_positions(256, 128, 128, stride=64)
        [(0, 0), (64, 0), (128, 0)]
        >>> grid_positions(40, 48, 64)
        [(0, 0)]
    """
    step = max(1, stride or window)
    rows = range(0, max(height - window, 0) + 1, step)
    cols = range(0, max(width - window, 0) + 1, step)
    return [(r, c) for r in rows for c in cols]


def _sizes(pairs: Sequence[CalibPair]) -> list[tuple[int, int]]:
    from rsfusion.inference.reader import open_raster

    sizes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # only pixels matter here
        for pair in pairs:
            with open_raster(pair.rgb, "orthophoto") as src:
                sizes.append((src.height, src.width))
    return sizes


def plan_windows(
    pairs: Sequence[CalibPair], window: int, seed: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """Every grid window of ``pairs`` as (pair index, row, col), in a seeded random order."""
    plan = [
        (i, r, c)
        for i, (h, w) in enumerate(_sizes(pairs))
        for r, c in grid_positions(h, w, window, stride)
    ]
    order = np.random.default_rng(seed).permutation(len(plan))
    return [plan[k] for k in order]


def _labels(path: str, win: Window, size: int, meta: CheckpointMeta) -> np.ndarray:
    from rsfusion.data.labels import PaletteDecoder
    from rsfusion.inference.reader import open_raster, read_window

    ignore = int(meta.ignore_index)
    with open_raster(path, "labels") as src:
        data = read_window(src, win, size, fill=0, masked=False, dtype="uint8" if src.count == 3
                           else "int64")  # fmt: skip
        if src.count == 1:
            inside = np.zeros((size, size), bool)
            h, w = min(size, src.height - int(win.row_off)), min(size, src.width - int(win.col_off))
            inside[:h, :w] = True
            return np.where(inside, data[0], ignore).astype(np.int64)
    decoded = PaletteDecoder(meta.palette, ignore)(torch.from_numpy(data), path)
    return decoded.numpy().astype(np.int64)  # black padding decodes to the ignore index


def read_windows_of(
    meta: CheckpointMeta,
    pairs: Sequence[CalibPair],
    chosen: Sequence[tuple[int, int, int]],
    window: int,
    labels: bool = True,
) -> Windows:
    """The ``chosen`` windows (pair index, row, col) read and normalised as prediction does.

    Raises:
        PredictionError: a raster that cannot be read, or does not fit the checkpoint.
    """
    with_labels = labels and all(pairs[i].label for i in {i for i, _, _ in chosen}) and chosen
    by_pair: dict[int, list[tuple[int, int]]] = {}
    for i, r, c in chosen:
        by_pair.setdefault(i, []).append((r, c))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # only pixels matter here
        return _read(meta, pairs, by_pair, window, bool(with_labels))


def _read(
    meta: CheckpointMeta,
    pairs: Sequence[CalibPair],
    by_pair: dict[int, list[tuple[int, int]]],
    window: int,
    with_labels: bool,
) -> Windows:
    from rsfusion.inference.predict import open_inputs, pair_spec
    from rsfusion.inference.reader import open_pair, read_batch

    rgb_parts: list[np.ndarray] = []
    x_parts: list[np.ndarray] = []
    label_parts: list[np.ndarray] = []
    origin: list[str] = []
    for i, spots in by_pair.items():
        pair = pairs[i]
        with open_inputs(pair.rgb, pair.x, meta, align=True) as (_, x_grid):
            spec = pair_spec(meta, pair.rgb, pair.x, x_grid)
        wins = [Window(c, r, window, window) for r, c in spots]
        with open_pair(spec, None) as handles:
            raw_rgb, raw_x = read_batch(handles, wins, window, (pair.rgb, pair.x))
        rgb, x = spec.norm(torch.from_numpy(raw_rgb), None if raw_x is None else
                           torch.from_numpy(raw_x))  # fmt: skip
        rgb_parts.append(rgb.numpy())
        if x is not None:
            x_parts.append(x.numpy())
        if with_labels:
            assert pair.label is not None
            label_parts.extend(_labels(pair.label, w, window, meta)[None] for w in wins)
        origin.extend(f"{pair.name}@{r},{c}" for r, c in spots)
    if not rgb_parts:
        raise PredictionError("no window to read: the rasters are empty")
    return Windows(
        rgb=np.concatenate(rgb_parts),
        x=np.concatenate(x_parts) if x_parts else None,
        labels=np.concatenate(label_parts) if with_labels else None,
        origin=origin,
    )


def sample_windows(
    meta: CheckpointMeta,
    calib: Sequence[CalibPair],
    check: Sequence[CalibPair],
    window: int,
    calib_windows: int,
    check_windows: int,
    seed: int = 0,
) -> tuple[Windows, Windows, dict[str, Any]]:
    """Calibration windows of ``calib`` and check windows of ``check`` (else the next windows
    of ``calib`` in the same seeded order: never a pixel of a calibration window).

    Returns the two sets and the facts to store (counts, where the check windows come from).

    Raises:
        PredictionError: fewer than 2 windows left for the check.
    """
    half = max(1, window // 2)
    if check:  # windows half a window apart: more of them on small tiles
        first = plan_windows(calib, window, seed, half)[:calib_windows]
        check_plan = plan_windows(check, window, seed + 1, half)[:check_windows]
        check_from, check_pairs = "other tiles (validation)", check
        grid = "windows half a window apart, seeded random order"
    else:  # one grid of windows that do not overlap, split between calibration and check
        plan = plan_windows(calib, window, seed)
        # at least a quarter of the windows for the check where there are few
        keep = max(2, min(check_windows, len(plan) // 4))
        take = min(calib_windows, max(1, len(plan) - keep))
        first = plan[:take]
        check_plan = plan[take : take + check_windows]
        check_from, check_pairs = "other windows of the calibration rasters", calib
        grid = "windows that do not overlap, seeded random order"
    if len(check_plan) < 2:
        raise PredictionError(
            f"the rasters hold too few windows of {window} px to calibrate and check on "
            f"({len(first)} + {len(check_plan)}); give more or larger rasters"
        )
    cal = read_windows_of(meta, calib, first, window, labels=False)
    held = read_windows_of(meta, check_pairs, check_plan, window)
    facts = {
        "window": window,
        "calibration_windows": len(cal),
        "check_windows": len(held),
        "check_from": check_from,
        "grid": grid,
        "seed": seed,
    }
    return cal, held, facts
