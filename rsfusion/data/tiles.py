"""Find a dataset's tiles under a root folder and give every raster a usable georeference.

The ISPRS releases are awkward for GIS tools: Vaihingen orthophotos may carry only a world file
or no georeference at all, its colour-coded labels usually carry none, and Potsdam's nDSM is a
plain JPEG. torchgeo's RasterDataset refuses such files, so each raster is given a GDAL
``vrt://`` connection string that adds what is missing, without writing anything to disk:

* CRS and transform present: the file is used as it is;
* transform (e.g. from a ``.tfw`` world file) but no CRS: the card's ``assumed_crs``;
* neither: the orthophoto's grid when the raster is a companion (DSM, labels) of the same pixel
  size, or, for an orthophoto, a distinct synthetic extent per tile far from any real data.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import rasterio
import rasterio.windows
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from rsfusion.catalog import DatasetCard
from rsfusion.errors import TileError

#: Synthetic extents start here (in the card's CRS units), far west of any projected data, and
#: are spaced so that no two tiles can touch.
SYNTHETIC_ORIGIN = (-9_000_000.0, 9_000_000.0)
SYNTHETIC_SPACING = 100_000.0


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
            f"{self.width}x{self.height} px, CRS {self.crs.to_string() if self.crs else None}, "
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
) -> GeoRaster:
    """Open ``path`` and decide how it is georeferenced (see the module docstring).

    Args:
        path: the raster file.
        card: the dataset card (its ``assumed_crs`` and ``gsd_m``).
        synthetic_slot: position of the tile in the card's tile list; picks the synthetic extent.
        reference: the orthophoto's grid, for companions (DSM, labels) of the same tile.
        role: what the file is, for error messages.
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


def check_same_grid(ortho: GeoRaster, other: GeoRaster, role: str) -> None:
    """Refuse a companion raster whose grid differs from its orthophoto's."""
    a, b = ortho.grid, other.grid
    same_crs = a.crs == b.crs
    same = (
        same_crs
        and (a.width, a.height) == (b.width, b.height)
        and a.transform.almost_equals(b.transform, precision=1e-6 * max(abs(a.transform.a), 1e-9))
    )
    if not same:
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
    root: Path, card: DatasetCard, patterns: tuple[str, ...], tile_id: str
) -> Path | None:
    """First existing file among a card's patterns for one tile, anchored at ``root``."""
    for pattern in patterns:
        candidate = root / card.format_pattern(pattern, tile_id)
        if candidate.is_file():
            return candidate
    return None


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

    Returns:
        The tiles found, and the ids of those whose orthophoto is absent.

    Raises:
        TileError: a tile's orthophoto exists but its X raster or labels do not, or they do not
            share its grid.
    """
    root = Path(root)
    if not root.is_dir():
        raise TileError(f"data root {root} is not a folder; set data.root to the dataset folder")
    slots = {tid: i for i, tid in enumerate(card.all_tile_ids())}
    rgb_mod = card.modality(rgb)
    x_mod = card.modality(x) if x else None
    tiles: list[Tile] = []
    missing: list[str] = []
    for tid in tile_ids:
        rgb_path = find_file(root, card, rgb_mod.patterns, tid)
        if rgb_path is None:
            missing.append(tid)
            continue
        slot = slots.get(tid, len(slots) + len(tiles))
        ortho = georeference(rgb_path, card, slot)
        check_bands(ortho, rgb_mod.bands, f"orthophoto ({rgb})")
        x_raster = None
        if x_mod is not None:
            x_path = find_file(root, card, x_mod.patterns, tid)
            if x_path is None:
                expected = [str(root / card.format_pattern(p, tid)) for p in x_mod.patterns]
                raise TileError(
                    f"tile {tid}: orthophoto {rgb_path} exists but its {x} raster does not "
                    f"(looked for {', '.join(expected)}). Extract the {x} files into {root} "
                    f"or leave tile {tid} out of the split (data.train_tiles / data.val_tiles)."
                )
            x_raster = georeference(x_path, card, slot, ortho.grid, role=x)
            check_bands(x_raster, x_mod.bands, x)
            if not align_x:
                check_same_grid(ortho, x_raster, x)
        found = {}
        for kind in ("full", "eroded"):
            label_path = find_file(root, card, card.label_patterns.get(kind, ()), tid)
            if label_path is not None:
                found[kind] = georeference(label_path, card, slot, ortho.grid, role="labels")
                check_same_grid(ortho, found[kind], "labels")
        if labels and not found:
            expected = [
                str(root / card.format_pattern(p, tid)) for p in card.label_patterns["full"]
            ]
            raise TileError(
                f"tile {tid}: orthophoto {rgb_path} exists but no labels do (looked for "
                f"{', '.join(expected)}). Extract the ground-truth archive into {root}."
            )
        tiles.append(Tile(tid, ortho, x_raster, found.get("full"), found.get("eroded")))
    return tiles, missing
