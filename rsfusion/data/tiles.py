"""Find a dataset's tiles under a root folder and give every raster a usable georeference.

The ISPRS releases are awkward for GIS tools: Vaihingen orthophotos may carry only a world file
or no georeference at all, its colour-coded labels usually carry none, and Potsdam's nDSM is a
plain JPEG. torchgeo's RasterDataset refuses such files, so each raster is given a GDAL
``vrt://`` connection string that adds what is missing, without writing anything to disk:

* CRS and transform present: the file is used as it is;
* transform (e.g. from a ``.tfw`` world file) but no CRS: the card's ``assumed_crs``;
* neither: the orthophoto's grid when the raster is a companion (DSM, labels) of the same pixel
  size, or, for an orthophoto, a distinct synthetic extent per tile far from any real data.

An X raster (DSM, nDSM) a few pixels narrower or shorter than its orthophoto (Potsdam's nDSM of
tile 3_13 is 5999 px wide for a 6000 px orthophoto) is read on the orthophoto's grid from the
top-left corner, with a warning: the pixels it lacks read as unknown (0 after normalisation).

Files are looked for in the root and, for a card whose ``files`` say which archive holds them,
in a folder named after that archive (:mod:`rsfusion.data.archives`); release archives lying in
the root are unpacked there on first use, and errors about missing files name the archive.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import rasterio
import rasterio.windows
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from rsfusion.catalog import DatasetCard
from rsfusion.data.archives import search_roots, unpack_needed, where_from
from rsfusion.data.raster_facts import crs_name
from rsfusion.errors import TileError

#: Synthetic extents start here (in the card's CRS units), far west of any projected data, and
#: are spaced so that no two tiles can touch.
SYNTHETIC_ORIGIN = (-9_000_000.0, 9_000_000.0)
SYNTHETIC_SPACING = 100_000.0
#: An X raster at most this many pixels smaller or larger than its orthophoto (on each axis),
#: and otherwise on its grid, is read on the orthophoto's grid with a warning.
NEAR_GRID_PX = 2


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform.c, self.transform.f
        right = left + self.transform.a * self.width
        bottom = top + self.transform.e * self.height
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    def describe(self) -> str:
        t = self.transform
        return (
            f"{self.width}x{self.height} px, CRS {crs_name(self.crs) if self.crs else None}, "
            f"origin ({t.c:.3f}, {t.f:.3f}), pixel ({t.a:.4f}, {t.e:.4f})"
        )


@dataclass(frozen=True)
class GeoRaster:
    """One raster file and the path rasterio/torchgeo should open (maybe a ``vrt://`` URL)."""

    path: Path
    source: str
    grid: Grid
    how: str  # "native", "assumed_crs", "companion", "synthetic"
    count: int = 1
    note: str = ""  # set when the raster is read on its orthophoto's grid despite its size


@dataclass(frozen=True)
class Tile:
    """The rasters of one tile: orthophoto, X (DSM/nDSM), full and eroded labels."""

    tile_id: str
    rgb: GeoRaster
    x: GeoRaster | None
    label: GeoRaster | None
    eroded: GeoRaster | None

    def label_for(self, kind: str) -> GeoRaster | None:
        """Labels of the requested kind ('full' or 'eroded'), falling back to the other."""
        first, second = (self.eroded, self.label) if kind == "eroded" else (self.label, self.eroded)
        return first or second


def _read_grid(path: Path) -> tuple[CRS | None, Affine | None, int, int, int]:
    """CRS, transform (None if absent), width, height, band count; reads the last block too.

    Reading the last block catches the common truncated download, whose header still opens.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                has_transform = src.transform != Affine.identity() or bool(src.gcps[0])
                h, w = src.block_shapes[0]
                last = rasterio.windows.Window(
                    ((src.width - 1) // w) * w, ((src.height - 1) // h) * h, w, h
                ).intersection(rasterio.windows.Window(0, 0, src.width, src.height))
                src.read(src.count, window=last)
                transform = src.transform if has_transform else None
                return src.crs, transform, src.width, src.height, src.count
    except rasterio.errors.RasterioError as err:
        raise TileError(
            f"cannot read raster {path}: {err}. The file is corrupt or truncated; "
            "re-extract it from the release archive."
        ) from err


def _vrt(path: Path, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"vrt://{path}?{query}"


def _ullr(grid: Grid) -> str:
    left, bottom, right, top = grid.bounds
    return f"{left!r},{top!r},{right!r},{bottom!r}"


def georeference(
    path: Path,
    card: DatasetCard,
    synthetic_slot: int,
    reference: Grid | None = None,
    role: str = "orthophoto",
    near_ok: bool = False,
) -> GeoRaster:
    """Open ``path`` and decide how it is georeferenced (see the module docstring).

    Args:
        path: the raster file.
        card: the dataset card (its ``assumed_crs`` and ``gsd_m``).
        synthetic_slot: position of the tile in the card's tile list; picks the synthetic extent.
        reference: the orthophoto's grid, for companions (DSM, labels) of the same tile.
        role: what the file is, for error messages.
        near_ok: a companion without georeference whose size differs from the orthophoto's by
            at most :data:`NEAR_GRID_PX` is placed on its grid from the top-left corner (the
            returned raster's ``note`` says so) instead of refused.
    """
    crs, transform, width, height, count = _read_grid(path)
    fallback_crs = CRS.from_user_input(card.assumed_crs or "EPSG:3857")
    if crs is not None and transform is not None:
        return GeoRaster(path, str(path), Grid(crs, transform, width, height), "native", count)
    if transform is not None:
        grid = Grid(fallback_crs, transform, width, height)
        source = _vrt(path, a_srs=fallback_crs.to_string())
        return GeoRaster(path, source, grid, "assumed_crs", count)
    if reference is not None:
        near = _near((width, height), (reference.width, reference.height))
        if near and near_ok:
            grid = Grid(reference.crs, reference.transform, width, height)
            source = _vrt(path, a_srs=grid.crs.to_string(), a_ullr=_ullr(grid))
            note = _size_note(role, path, (width, height), reference)
            return GeoRaster(path, source, grid, "companion", count, note)
        if (width, height) != (reference.width, reference.height):
            raise TileError(
                f"{role} {path} has no georeference and is {width}x{height} px, but its "
                f"orthophoto is {reference.width}x{reference.height} px, so it cannot be placed "
                "on the orthophoto's grid. Georeference it (e.g. a world file) or resample it "
                "to the orthophoto's size."
            )
        grid = reference
        source = _vrt(path, a_srs=grid.crs.to_string(), a_ullr=_ullr(grid))
        return GeoRaster(path, source, grid, "companion", count)
    res = card.gsd_m or 1.0
    x0 = SYNTHETIC_ORIGIN[0] + synthetic_slot * SYNTHETIC_SPACING
    y0 = SYNTHETIC_ORIGIN[1]
    grid = Grid(fallback_crs, Affine(res, 0.0, x0, 0.0, -res, y0), width, height)
    source = _vrt(path, a_srs=fallback_crs.to_string(), a_ullr=_ullr(grid))
    return GeoRaster(path, source, grid, "synthetic", count)


def _near(size: tuple[int, int], ref: tuple[int, int]) -> bool:
    """Sizes that differ, by at most :data:`NEAR_GRID_PX` on each axis."""
    return size != ref and all(abs(s - r) <= NEAR_GRID_PX for s, r in zip(size, ref))


def _size_note(role: str, path: Path, size: tuple[int, int], ref: Grid) -> str:
    return (
        f"{role} {path} is {size[0]}x{size[1]} px, its orthophoto {ref.width}x{ref.height} px: "
        "read on the orthophoto's grid from the top-left corner; pixels it lacks are unknown "
        "(0 after normalisation)"
    )


def check_same_grid(
    ortho: GeoRaster, other: GeoRaster, role: str, near_ok: bool = False
) -> GeoRaster:
    """Refuse a companion raster whose grid differs from its orthophoto's.

    With ``near_ok``, a raster on the same CRS, origin and pixel size whose size differs by at
    most :data:`NEAR_GRID_PX` is accepted; the returned raster's ``note`` says so.
    """
    a, b = ortho.grid, other.grid
    same_crs = a.crs == b.crs
    same_transform = a.transform.almost_equals(
        b.transform, precision=1e-6 * max(abs(a.transform.a), 1e-9)
    )
    size, ref = (b.width, b.height), (a.width, a.height)
    if same_crs and same_transform and size == ref:
        return other
    if near_ok and same_crs and same_transform and _near(size, ref):
        return other if other.note else replace(other, note=_size_note(role, other.path, size, a))
    raise TileError(
        f"{role} {other.path} is not on its orthophoto's grid:\n"
        f"  orthophoto {ortho.path}: {a.describe()}\n"
        f"  {role} {other.path}: {b.describe()}\n"
        "Resample it onto the orthophoto's grid (e.g. gdalwarp -tr/-te matching it), or "
        "set data.align_x=true to resample it on the fly."
    )


def check_bands(raster: GeoRaster, bands: tuple[str, ...], role: str) -> None:
    """Refuse a raster whose band count differs from the card's band list."""
    if raster.count != len(bands):
        raise TileError(
            f"{role} {raster.path} has {raster.count} band(s) but the dataset card expects "
            f"{len(bands)} {list(bands)}. Pick the card modality that matches the file "
            "(e.g. data.rgb=rgbir for 4-band Potsdam tiles) or fix the file."
        )


def find_file(
    root: Path,
    card: DatasetCard,
    patterns: tuple[str, ...],
    tile_id: str,
    roots: list[Path] | None = None,
) -> Path | None:
    """First existing file among a card's patterns for one tile, anchored at ``root`` (then at
    each of ``roots``, e.g. folders named after the archive holding the files)."""
    for base in roots or [root]:
        for pattern in patterns:
            candidate = base / card.format_pattern(pattern, tile_id)
            if candidate.is_file():
                return candidate
    return None


def _looked_for(root: Path, card: DatasetCard, patterns: tuple[str, ...], tid: str) -> str:
    return ", ".join(str(root / card.format_pattern(p, tid)) for p in patterns)


def _variant_note(card: DatasetCard, patterns: tuple[str, ...], path: Path, tid: str) -> str:
    """Name a file found through a later pattern that names another product (not just another
    folder), e.g. Potsdam's ``_normalized_ownapproach.jpg`` nDSM where lastools' is absent."""
    first = Path(card.format_pattern(patterns[0], tid)).name
    return "" if path.name == first else f"{path.name} (no {first})"


def find_tiles(
    card: DatasetCard,
    root: str | Path,
    tile_ids: list[str] | tuple[str, ...],
    rgb: str = "rgb",
    x: str | None = "dsm",
    labels: bool = True,
    align_x: bool = False,
) -> tuple[list[Tile], list[str]]:
    """Resolve the rasters of the requested tiles that are present under ``root``.

    Release archives of the card lying in ``root`` whose files are not there yet are unpacked
    first (:func:`rsfusion.data.archives.unpack_needed`). Warns once about X rasters read on
    their orthophoto's grid despite their size, and about files of another product than the
    card's first choice (Potsdam's ``ownapproach`` nDSM).

    Returns:
        The tiles found, and the ids of those whose orthophoto is absent.

    Raises:
        TileError: a tile's orthophoto exists but its X raster or labels do not, or they do not
            share its grid; an archive that is damaged or cannot be unpacked.
    """
    root = Path(root)
    if not root.is_dir():
        raise TileError(f"data root {root} is not a folder; set data.root to the dataset folder")
    needs = [rgb, *([x] if x else []), *(["labels"] if labels else [])]
    unpack_needed(card, root, needs, TileError)
    slots = {tid: i for i, tid in enumerate(card.all_tile_ids())}
    rgb_mod = card.modality(rgb)
    x_mod = card.modality(x) if x else None
    rgb_roots = search_roots(card, root, rgb)
    tiles: list[Tile] = []
    missing: list[str] = []
    notes: list[str] = []
    variants: list[str] = []
    for tid in tile_ids:
        rgb_path = find_file(root, card, rgb_mod.patterns, tid, rgb_roots)
        if rgb_path is None:
            missing.append(tid)
            continue
        slot = slots.get(tid, len(slots) + len(tiles))
        ortho = georeference(rgb_path, card, slot)
        check_bands(ortho, rgb_mod.bands, f"orthophoto ({rgb})")
        x_raster = None
        if x_mod is not None:
            assert x is not None
            x_path = find_file(root, card, x_mod.patterns, tid, search_roots(card, root, x))
            if x_path is None:
                looked = _looked_for(root, card, x_mod.patterns, tid)
                raise TileError(
                    f"tile {tid}: orthophoto {rgb_path} exists but its {x} raster does not "
                    f"(looked for {looked}).{_hint(card, root, x)} Or leave tile {tid} out of "
                    "the split (data.train_tiles / data.val_tiles)."
                )
            x_raster = georeference(x_path, card, slot, ortho.grid, role=x, near_ok=True)
            check_bands(x_raster, x_mod.bands, x)
            if not align_x:
                x_raster = check_same_grid(ortho, x_raster, x, near_ok=True)
            if x_raster.note:
                notes.append(f"tile {tid}: {x_raster.note}")
            variant = _variant_note(card, x_mod.patterns, x_path, tid)
            if variant:
                variants.append(f"{tid}: {variant}")
        found = {}
        for kind in ("full", "eroded"):
            patterns = card.label_patterns.get(kind, ())
            label_roots = search_roots(card, root, f"labels.{kind}")
            label_path = find_file(root, card, patterns, tid, label_roots)
            if label_path is not None:
                found[kind] = georeference(label_path, card, slot, ortho.grid, role="labels")
                check_same_grid(ortho, found[kind], "labels")
        if labels and not found:
            patterns = card.label_patterns["full"] + card.label_patterns.get("eroded", ())
            raise TileError(
                f"tile {tid}: orthophoto {rgb_path} exists but no labels do (looked for "
                f"{_looked_for(root, card, patterns, tid)}).{_hint(card, root, 'labels')}"
            )
        tiles.append(Tile(tid, ortho, x_raster, found.get("full"), found.get("eroded")))
    for note in notes:
        warnings.warn(f"{card.name} {note}", UserWarning, stacklevel=2)
    if variants:
        warnings.warn(
            f"{card.name}: {x} read from another product for tiles {variants}", UserWarning,
            stacklevel=2,
        )  # fmt: skip
    return tiles, missing


def _hint(card: DatasetCard, root: Path, what: str) -> str:
    """Where the files of ``what`` come from, or the generic advice."""
    hint = where_from(card, root, what)
    return hint or f" Extract the release's {what} files into {root}."
