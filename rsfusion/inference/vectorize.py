"""Stream a class raster into class polygons in a GeoPackage, one band of rows at a time.

Polygons are traced per band of rows with :func:`rasterio.features.shapes` (4-connectivity) in
*pixel* coordinates, where the band edges are exact integers. A polygon touching the bottom edge
of its band stays "open"; in the next band it is dissolved with every polygon of the same class
that shares a stretch of that edge (not just a corner), so the output has no cuts at band edges.
Closed polygons are mapped to the CRS, filtered, simplified and appended to the file in batches,
so memory holds one band of pixels plus the polygons still crossing the current edge. The
GeoPackage (and SQLite's ``-wal``/``-journal`` files) is written in a private staging folder
beside the output and renamed when complete; a failed write raises
:class:`~rsfusion.errors.PredictionError` naming the file.

Example:
    >>> vectorize_classes("pred.tif", "pred.gpkg", ["road", "building"], min_area=2.0)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import rasterio.features
import shapely
from pyogrio.errors import DataSourceError, FeatureError
from rasterio.transform import Affine
from rasterio.windows import Window

from rsfusion.data.writers import staging_dir
from rsfusion.inference.writer import WRITE_ERRORS, write_error

_BATCH = 20_000  # features per append to the GeoPackage


def _merge_open(
    carried: list[tuple[int, shapely.Polygon]],
    incoming: list[tuple[int, shapely.Polygon]],
) -> list[tuple[int, shapely.Polygon]]:
    """Dissolve polygons of the same class that share an edge stretch; return the groups."""
    items = carried + incoming
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if carried and incoming:
        tree = shapely.STRtree([g for _, g in carried])
        new_idx, old_idx = tree.query([g for _, g in incoming], predicate="intersects")
        for n, o in zip(new_idx.tolist(), old_idx.tolist(), strict=True):
            (cls_o, g_o), (cls_n, g_n) = carried[o], incoming[n]
            if cls_o == cls_n and shapely.intersection(g_o, g_n).length > 0:
                parent[find(len(carried) + n)] = find(o)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(find(i), []).append(i)
    merged = []
    for members in groups.values():
        geoms = [items[i][1] for i in members]
        geom = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
        merged.append((items[members[0]][0], geom))
    return merged


def vectorize_classes(
    raster_path: str | Path,
    out_gpkg: str | Path,
    class_names: Sequence[str],
    min_area: float = 0.0,
    simplify: float = 0.0,
    nodata: int | None = None,
    block_rows: int = 1024,
    layer: str = "classes",
    palette: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write the class polygons of band 1 of ``raster_path`` to a GeoPackage, atomically.

    Args:
        raster_path: single-band integer class raster.
        out_gpkg: output GeoPackage (columns ``class_id``, ``class_name``, ``area``; the
            raster's CRS).
        class_names: names indexed by class id (ids beyond the list get ``str(id)``).
        min_area: drop polygons smaller than this, in CRS units squared (before simplifying).
        simplify: Douglas-Peucker tolerance in CRS units (topology-preserving per polygon;
            neighbours are simplified independently, so small gaps/overlaps can appear).
        nodata: class value to leave out; None uses the raster's declared nodata, if any.
        block_rows: rows read per band.
        layer: layer name.
        palette: class colours; given, the file's default QGIS style (categorised by
            ``class_name``) is stored in it (:func:`rsfusion.inference.styles.store_gpkg_style`).

    Returns:
        The path of the GeoPackage. ``area`` is that of the written (simplified) geometry.
    """
    out_gpkg = Path(out_gpkg)
    try:
        staging = staging_dir(out_gpkg.parent, out_gpkg.name)
    except WRITE_ERRORS as err:
        raise write_error(out_gpkg, err) from err
    tmp = staging / out_gpkg.name
    pending: list[tuple[int, shapely.Polygon]] = []
    written = 0

    with rasterio.open(raster_path) as src:
        crs, transform, height, width = src.crs, src.transform, src.height, src.width
        nodata = src.nodata if nodata is None else nodata
        to_crs = np.array([[transform.a, transform.d], [transform.b, transform.e]])
        offset = np.array([transform.c, transform.f])

        def flush(final: bool = False) -> None:
            nonlocal pending, written
            if not pending or (len(pending) < _BATCH and not final):
                return
            ids = np.array([c for c, _ in pending], np.int64)
            geoms = shapely.transform([g for _, g in pending], lambda xy: xy @ to_crs + offset)
            pending = []
            keep = shapely.area(geoms) >= min_area
            ids, geoms = ids[keep], geoms[keep]
            if simplify > 0:
                geoms = shapely.simplify(geoms, simplify, preserve_topology=True)
            if not len(geoms):
                return
            names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in ids]
            frame = gpd.GeoDataFrame(
                {"class_id": ids, "class_name": names, "area": shapely.area(geoms)},
                geometry=geoms,
                crs=crs,
            )
            _write(frame, tmp, out_gpkg, layer=layer, append=written > 0, promote_to_multi=False)
            written += len(frame)

        try:
            carried: list[tuple[int, shapely.Polygon]] = []
            for row in range(0, height, block_rows):
                n = min(block_rows, height - row)
                data = src.read(1, window=Window(0, row, width, n))
                mask = None if nodata is None else data != nodata
                shapes = rasterio.features.shapes(
                    data, mask=mask, transform=Affine.translation(0, row)
                )
                touching_top, traced = [], []
                for geojson, value in shapes:
                    poly = shapely.geometry.shape(geojson)
                    cls = int(value)
                    (touching_top if poly.bounds[1] == row else traced).append((cls, poly))
                groups = _merge_open(carried, touching_top) if row else touching_top
                traced += groups
                bottom = row + n
                carried = []
                for cls, poly in traced:
                    if poly.bounds[3] == bottom and bottom < height:
                        carried.append((cls, poly))
                    else:
                        pending.append((cls, poly))
                flush()
            flush(final=True)
            if written == 0:  # an empty but valid layer with the same schema
                empty = gpd.GeoDataFrame(
                    {
                        "class_id": np.array([], np.int64),
                        "class_name": np.array([], object),
                        "area": np.array([], float),
                    },
                    geometry=gpd.GeoSeries([], crs=crs),
                    crs=crs,
                )
                _write(empty, tmp, out_gpkg, layer=layer, geometry_type="Polygon")
            if palette is not None:
                from rsfusion.inference.styles import polygons_qml, store_gpkg_style

                names = list(class_names)[: len(palette)]
                try:
                    store_gpkg_style(tmp, layer, polygons_qml(names, palette))
                except (OSError, sqlite3.Error) as err:
                    raise write_error(out_gpkg, err) from err
            try:
                os.replace(tmp, out_gpkg)
            except OSError as err:
                raise write_error(out_gpkg, err) from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out_gpkg


def _write(frame: gpd.GeoDataFrame, tmp: Path, final: Path, **kwargs: object) -> None:
    """Append ``frame`` to the GeoPackage ``tmp``; a failed write names ``final``."""
    try:
        pyogrio.write_dataframe(frame, tmp, driver="GPKG", **kwargs)
    except (*WRITE_ERRORS, DataSourceError, FeatureError) as err:
        raise write_error(final, err) from err
