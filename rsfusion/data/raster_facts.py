"""Facts about rasters that prediction compares with training: dtype, value range, pixel size.

A checkpoint records, per modality, the dtype and the value range of its training rasters and
the training ground sampling distance (GSD, metres per pixel): :func:`inputs_record` builds that
record from the dataset card and a few of the training rasters. Prediction reads the same facts
of the rasters it is given (:func:`sample_range`, :func:`gsd_metres`) and names CRSs in its
messages with :func:`crs_name`: by an authority code only when the CRS has one, never by a
low-confidence guess.

Example:
    >>> from rasterio.crs import CRS
    >>> crs_name(CRS.from_epsg(32632)), crs_name(None)
    ('EPSG:32632', 'no CRS')
    >>> crs_name(CRS.from_wkt(
    ...     'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'))
    '"site grid" (no authority code)'
    >>> nominal_range("uint8"), nominal_range("float32")
    ((0.0, 255.0), None)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

#: side of each of the windows :func:`sample_range` reads (a bounded read, whatever the size)
SAMPLE_SIDE = 256
#: the sample windows lie on a SAMPLE_GRID x SAMPLE_GRID grid over the raster
SAMPLE_GRID = 3
#: metres per degree of latitude (mean), for pixel sizes of geographic CRSs
METRES_PER_DEGREE = 111_320.0

_WKT_NAME = re.compile(r'^\s*[A-Z_0-9]+\[\s*"([^"]*)"')


def crs_name(crs: Any) -> str:
    """A CRS as messages name it: its authority code when the CRS carries one (or is exactly
    equivalent to one), else the name in its WKT; never a low-confidence guess of a code."""
    if crs is None:
        return "no CRS"
    try:
        authority = crs.to_authority(confidence_threshold=100)
    except Exception:  # a CRS PROJ cannot identify at all
        authority = None
    if authority:
        return ":".join(authority)
    wkt = crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)
    found = _WKT_NAME.match(wkt or "")
    name = found[1] if found and found[1] else "unnamed"
    return f'"{name}" (no authority code)'


def nominal_range(dtype: str) -> tuple[float, float] | None:
    """The range an integer dtype can hold; None for floating-point dtypes."""
    kind = np.dtype(dtype)
    if kind.kind not in "ui":
        return None
    info = np.iinfo(kind)
    return float(info.min), float(info.max)


def gsd_metres(crs: Any, transform: Any, width: int, height: int) -> float | None:
    """The pixel size in metres (the mean of both axes); None when it cannot be told (no CRS,
    or a CRS whose units are not metres, feet or degrees).

    Example:
        >>> from rasterio.transform import from_origin
        >>> gsd_metres("EPSG:32632", from_origin(500000, 5400000, 0.09, 0.09), 10, 10)
        0.09
        >>> round(gsd_metres("EPSG:4326", from_origin(0, 1, 0.00025, 0.00025), 10, 10), 1)
        27.8
        >>> gsd_metres(None, from_origin(0, 10, 1, 1), 10, 10) is None
        True
    """
    if crs is None or transform is None:
        return None
    crs = rasterio.crs.CRS.from_user_input(crs)
    res_x = math.hypot(transform.a, transform.d)
    res_y = math.hypot(transform.b, transform.e)
    if crs.is_geographic:
        lat = transform.f + transform.e * height / 2 + transform.d * width / 2
        scale_x = METRES_PER_DEGREE * math.cos(math.radians(max(-89.9, min(89.9, lat))))
        return (res_x * scale_x + res_y * METRES_PER_DEGREE) / 2
    try:
        _, factor = crs.linear_units_factor
    except Exception:  # no linear unit (an engineering CRS without one)
        return None
    if not factor or not math.isfinite(factor):
        return None
    return round((res_x + res_y) / 2 * factor, 12)


def sample_windows(height: int, width: int, side: int = SAMPLE_SIDE) -> list[Window]:
    """Up to SAMPLE_GRID^2 windows of at most ``side`` pixels spread evenly over a raster."""
    n = SAMPLE_GRID
    h, w = min(side, height), min(side, width)
    rows = sorted({round(i * (height - h) / max(n - 1, 1)) for i in range(n)})
    cols = sorted({round(j * (width - w) / max(n - 1, 1)) for j in range(n)})
    return [Window(c, r, w, h) for r in rows for c in cols]


def sample_range(src: Any) -> tuple[float, float] | None:
    """(min, max) of the valid, finite values of a few windows spread over an open raster (all
    bands): a bounded read whatever the raster's size. None when no sampled pixel is valid."""
    lo, hi = math.inf, -math.inf
    for win in sample_windows(src.height, src.width):
        data = src.read(window=win, masked=True)
        values = np.ma.compressed(data).astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    return (lo, hi) if lo <= hi else None


def modality_record(sources: Sequence[str], card_dtype: str | None) -> dict[str, Any]:
    """The dtype and value range of a modality's training rasters: from the first ones that can
    be read (``sources``: a few of them), else the card's dtype and its nominal range."""
    dtypes: set[str] = set()
    lo, hi, read = math.inf, -math.inf, 0
    for source in sources:
        try:
            with rasterio.open(source) as src:
                dtypes.update(src.dtypes)
                found = sample_range(src)
        except (RasterioError, OSError):
            continue
        read += 1
        if found is not None:
            lo, hi = min(lo, found[0]), max(hi, found[1])
    if read and len(dtypes) == 1:
        dtype = dtypes.pop()
        value_range = [lo, hi] if lo <= hi else None
        return {"dtype": dtype, "range": value_range, "from": f"{read} training raster(s)"}
    if card_dtype is None:
        return {"dtype": None, "range": None, "from": "unknown"}
    nominal = nominal_range(card_dtype)
    return {
        "dtype": card_dtype,
        "range": list(nominal) if nominal else None,
        "from": "dataset card",
    }


def inputs_record(
    card_gsd: float | None,
    rgb_sources: Iterable[str],
    rgb_dtype: str | None,
    x_sources: Iterable[str] | None = None,
    x_dtype: str | None = None,
    grids: Iterable[tuple[Any, Any, int, int]] = (),
    limit: int = 3,
) -> dict[str, Any]:
    """What a checkpoint records of its training rasters (its ``inputs`` entry).

    Args:
        card_gsd: the card's GSD in metres (``gsd_m``), preferred to the rasters'.
        rgb_sources, x_sources: training rasters (the first ``limit`` are sampled); x_sources
            None for an RGB-only model.
        rgb_dtype, x_dtype: the card's dtypes, used when no raster can be read.
        grids: (crs, transform, width, height) of georeferenced training rasters, for the GSD
            when the card has none.

    Returns:
        ``{"rgb": {dtype, range, from}, "x": {...} or None, "gsd_m": float or None,
        "gsd_from": "dataset card" | "training rasters" | None}``.
    """
    rgb = modality_record(list(rgb_sources)[:limit], rgb_dtype)
    x = None if x_sources is None else modality_record(list(x_sources)[:limit], x_dtype)
    gsd, gsd_from = (float(card_gsd), "dataset card") if card_gsd else (None, None)
    if gsd is None:
        for grid in grids:
            found = gsd_metres(*grid)
            if found:
                gsd, gsd_from = found, "training rasters"
                break
    return {"rgb": rgb, "x": x, "gsd_m": gsd, "gsd_from": gsd_from}
