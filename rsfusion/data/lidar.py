"""Rasterise a LAS/LAZ point cloud into an orthophoto, DSM, DTM, nDSM and labels on one grid.

Real multimodal data that no one here wrote: laspy's ``tests/data/autzen_trim.laz`` (110k points
with RGB and a ground class, Oregon Lambert in feet) becomes one tile in the layout of
``data_catalog/autzen.yaml``. Conventions, all in the point cloud's native units:

* grid: the LAS CRS (``header.parse_crs()``), north up, origin snapped to a multiple of the cell
  size; default cell = 1 m expressed in the CRS's linear unit (Autzen: international foot,
  0.3048 m, so 3.2808 ft). A point at ``(x, y)`` falls in column ``floor((x - left) / res)`` and
  row ``floor((top - y) / res)``;
* DSM: the highest z in a cell; cells without points are nodata (NaN), never 0;
* RGB: the colour of that highest point (what a camera above sees), scaled to 8 bits; LAS
  colours are 16-bit by the spec (divided by 257), but some files, this one included, store
  8-bit values in the 16-bit fields (maximum <= 255), which are kept as they are. Empty cells
  are 0 (nodata); real colours are clipped to 1..255 so that 0 means "no point";
* DTM: mean z of the ground points (LAS class 2) of a cell, holes filled by growing the known
  cells one ring at a time (mean of known 8-neighbours) and then relaxing the filled cells
  towards a harmonic (Laplace) surface: pure numpy;
* nDSM = DSM - DTM (nodata where the DSM is); z is taken to be in the CRS's linear unit;
* labels, derived from the data only: ``raised`` (nDSM above ``raised_m`` = 2 m: here trees
  and the footbridge; buildings elsewhere); ``ground`` (the cell holds a class-2 point and its
  surface is at most ``ground_m`` = 0.5 m above the DTM); ``other`` (the rest with points:
  low objects or vegetation of 0.5-2 m, and low cells whose points the ground filter left
  unclassified). Cells without points are ignore (255).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.transform import Affine

from rsfusion.catalog import DatasetCard, load_card
from rsfusion.data.writers import encode_labels, write_geotiff

GROUND_CLASS = 2  # ASPRS LAS classification code for ground
IGNORE = 255


@dataclass(frozen=True)
class PointCloud:
    """Points of a LAS file: coordinates, 8-bit colours, classes and the CRS."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    rgb: np.ndarray  # (N, 3) uint8
    classification: np.ndarray  # (N,) uint8 LAS classes
    crs: Any  # pyproj.CRS
    unit_m: float  # metres per CRS linear unit
    colour_bits: int  # 16 (LAS spec) or 8 (8-bit values in 16-bit fields)


@dataclass(frozen=True)
class LidarTile:
    """What :func:`rasterise_point_cloud` wrote: paths, grid and class statistics."""

    paths: dict[str, Path]
    crs: Any
    transform: Affine
    width: int
    height: int
    resolution: float
    unit_m: float
    las_classes: dict[int, int]  # LAS class code -> number of points
    label_pixels: dict[str, int]  # class name (and 'ignore') -> number of cells
    colour_bits: int


def read_point_cloud(las_path: str | Path) -> PointCloud:
    """Read a LAS/LAZ file with laspy (LAZ needs the ``lazrs`` backend)."""
    import laspy

    las = laspy.read(str(las_path))
    crs = las.header.parse_crs()
    if crs is None:
        raise ValueError(f"{las_path} carries no CRS (no WKT or GeoTIFF keys in its header)")
    unit_m = float(crs.axis_info[0].unit_conversion_factor)
    raw = np.stack([np.asarray(las.red), np.asarray(las.green), np.asarray(las.blue)], axis=1)
    colour_bits = 16 if raw.size and raw.max() > 255 else 8
    scaled = np.rint(raw / 257.0) if colour_bits == 16 else raw
    return PointCloud(
        x=np.asarray(las.x, np.float64),
        y=np.asarray(las.y, np.float64),
        z=np.asarray(las.z, np.float64),
        rgb=np.clip(scaled, 0, 255).astype(np.uint8),
        classification=np.asarray(las.classification, np.uint8),
        crs=crs,
        unit_m=unit_m,
        colour_bits=colour_bits,
    )


def point_grid(
    x: np.ndarray, y: np.ndarray, resolution: float
) -> tuple[Affine, int, int, np.ndarray, np.ndarray]:
    """North-up grid covering the points, origin snapped to ``resolution``; and each point's cell.

    Returns:
        transform, width, height, rows and cols of the points.
    """
    left = np.floor(x.min() / resolution) * resolution
    top = np.ceil(y.max() / resolution) * resolution
    cols = np.floor((x - left) / resolution).astype(np.int64)
    rows = np.floor((top - y) / resolution).astype(np.int64)
    width, height = int(cols.max()) + 1, int(rows.max()) + 1
    return Affine(resolution, 0.0, left, 0.0, -resolution, top), width, height, rows, cols


def fill_holes(values: np.ndarray, known: np.ndarray, relax_steps: int = 200) -> np.ndarray:
    """Fill cells where ``known`` is False: ring-by-ring neighbour means, then Laplace relaxation.

    Known cells are never changed. Raises ValueError when no cell is known.
    """
    if not known.any():
        raise ValueError("cannot interpolate a surface without any known cell")
    out = np.where(known, values, 0.0).astype(np.float64)
    have = known.copy()
    h, w = out.shape
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    while not have.all():
        pv, ph = np.pad(out * have, 1), np.pad(have, 1).astype(np.float64)
        total = sum(pv[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in shifts)
        count = sum(ph[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in shifts)
        ring = ~have & (count > 0)
        out[ring] = total[ring] / count[ring]
        have |= ring
    free = ~known
    for _ in range(relax_steps if free.any() else 0):
        p = np.pad(out, 1, mode="edge")
        mean4 = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4.0
        out[free] = mean4[free]
    return out


def rasterise(
    cloud: PointCloud, resolution: float, raised: float, ground_tol: float
) -> tuple[dict[str, np.ndarray], Affine]:
    """Grids of one point cloud: rgb (3, H, W) uint8, dsm/dtm/ndsm float32 and class ids.

    Args:
        cloud: the points.
        resolution: cell size in CRS units.
        raised: nDSM above which a cell is ``raised`` (1), in z units.
        ground_tol: nDSM at or below which a cell with a ground point is ``ground`` (0).
    """
    transform, width, height, rows, cols = point_grid(cloud.x, cloud.y, resolution)
    cell = rows * width + cols
    n = width * height
    order = np.lexsort((cloud.z, cell))  # by cell, then z: the last of each run is the highest
    last = order[np.r_[cell[order][1:] != cell[order][:-1], True]]
    occupied = np.zeros(n, bool)
    occupied[cell[last]] = True
    dsm = np.full(n, np.nan, np.float32)
    dsm[cell[last]] = cloud.z[last]
    rgb = np.zeros((n, 3), np.uint8)
    rgb[cell[last]] = np.clip(cloud.rgb[last], 1, 255)
    is_ground = cloud.classification == GROUND_CLASS
    ground_n = np.bincount(cell[is_ground], minlength=n)
    ground_sum = np.bincount(cell[is_ground], weights=cloud.z[is_ground], minlength=n)
    has_ground = ground_n > 0
    ground_mean = np.divide(ground_sum, ground_n, out=np.zeros(n), where=has_ground)
    shape = (height, width)
    dtm = fill_holes(ground_mean.reshape(shape), has_ground.reshape(shape)).astype(np.float32)
    ndsm = dsm.reshape(shape) - dtm  # NaN stays NaN
    height_above = ndsm.ravel()
    ids = np.full(n, IGNORE, np.uint8)
    ids[occupied] = 2  # other
    ids[occupied & has_ground & (height_above <= ground_tol)] = 0  # ground
    ids[occupied & (height_above > raised)] = 1  # raised
    grids = {
        "rgb": np.ascontiguousarray(rgb.reshape(height, width, 3).transpose(2, 0, 1)),
        "dsm": dsm.reshape(shape),
        "dtm": dtm,
        "ndsm": ndsm.astype(np.float32),
        "ids": ids.reshape(shape),
        "has_ground": has_ground.reshape(shape),
    }
    return grids, transform


def rasterise_point_cloud(
    las_path: str | Path,
    out_root: str | Path,
    resolution: float | None = None,
    tile_id: str = "1",
    card: str | DatasetCard = "autzen",
    resolution_m: float = 1.0,
    raised_m: float = 2.0,
    ground_m: float = 0.5,
) -> LidarTile:
    """Rasterise a LAS/LAZ file into one tile of a card's layout (see the module docstring).

    Args:
        las_path: the .las / .laz file.
        out_root: dataset root; files go where the card's first patterns say.
        resolution: cell size in CRS units; default ``resolution_m`` converted to them.
        tile_id: the tile id the files are named after.
        card: dataset card (name or object) with modalities rgb, dsm, dtm, ndsm, full labels and
            classes ground, raised, other.
        resolution_m: cell size in metres when ``resolution`` is None.
        raised_m: height above the DTM (metres) above which a cell is ``raised``.
        ground_m: a cell holding a ground point is ``ground`` when its surface (DSM) is at most
            this many metres above the DTM.
    """
    card = card if isinstance(card, DatasetCard) else load_card(card)
    cloud = read_point_cloud(las_path)
    res = float(resolution) if resolution is not None else resolution_m / cloud.unit_m
    grids, transform = rasterise(cloud, res, raised_m / cloud.unit_m, ground_m / cloud.unit_m)
    # card class order may differ from the ids used above (ground 0, raised 1, other 2)
    names = ("ground", "raised", "other")
    missing = set(names) - set(card.class_names)
    if missing:
        raise ValueError(f"card {card.name} lacks classes {sorted(missing)}")
    lut = np.full(256, IGNORE, np.uint8)
    for i, name in enumerate(names):
        lut[i] = card.class_names.index(name)
    ids = lut[grids["ids"]]
    root = Path(out_root)
    wkt = cloud.crs.to_wkt()
    paths: dict[str, Path] = {}

    def target(patterns: tuple[str, ...]) -> Path:
        return root / card.format_pattern(patterns[0], tile_id)

    paths["rgb"] = write_geotiff(
        target(card.modality("rgb").patterns), grids["rgb"], wkt, transform, nodata=0
    )
    for name in ("dsm", "dtm", "ndsm"):
        if name in card.modalities:
            paths[name] = write_geotiff(
                target(card.modality(name).patterns), grids[name], wkt, transform, nodata=np.nan
            )
    labels = encode_labels(ids, card.palette)  # ignore -> black, which the decoder ignores
    paths["labels"] = write_geotiff(target(card.label_patterns["full"]), labels, wkt, transform)
    codes, counts = np.unique(cloud.classification, return_counts=True)
    pixels = {n: int((ids == i).sum()) for i, n in enumerate(card.class_names)}
    pixels["ignore"] = int((ids == IGNORE).sum())
    return LidarTile(
        paths=paths,
        crs=cloud.crs,
        transform=transform,
        width=int(ids.shape[1]),
        height=int(ids.shape[0]),
        resolution=res,
        unit_m=cloud.unit_m,
        las_classes={int(c): int(k) for c, k in zip(codes, counts)},
        label_pixels=pixels,
        colour_bits=cloud.colour_bits,
    )
