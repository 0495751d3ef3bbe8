"""Atomic raster writers: GeoTIFF (tiled, compressed), world files, colour-coded labels."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    crs: Any,
    transform: Affine | None,
    nodata: float | None = None,
    **profile: Any,
) -> Path:
    """Write a (bands, H, W) or (H, W) array atomically as a tiled, deflate-compressed GeoTIFF.

    ``crs`` and ``transform`` may be None to write no georeference at all. Extra ``profile``
    keys override the defaults (e.g. ``driver="JPEG"``; GTiff options are then left out).
    The file is written under a hidden temporary name in the same folder and renamed when done.
    """
    path = Path(path)
    arr = np.asarray(array)
    arr = arr[None] if arr.ndim == 2 else arr
    count, height, width = arr.shape
    meta: dict[str, Any] = {"driver": "GTiff", "count": count, "height": height, "width": width}
    meta["dtype"] = arr.dtype.name
    if crs is not None:
        meta["crs"] = CRS.from_user_input(crs)
    if transform is not None:
        meta["transform"] = transform
    if nodata is not None:
        meta["nodata"] = nodata
    if profile.get("driver", "GTiff") == "GTiff":
        meta.update(compress="deflate", predictor=3 if arr.dtype.kind == "f" else 2)
        block = next((b for b in (512, 256, 128, 64, 32, 16) if b <= min(height, width)), None)
        if block is not None:
            meta.update(tiled=True, blockxsize=block, blockysize=block)
    meta.update(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **meta) as dst:
                dst.write(arr)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".aux.xml").unlink(missing_ok=True)
    return path


def write_world_file(raster_path: str | Path, transform: Affine) -> Path:
    """Write the ESRI world file beside a raster (``x.tif`` -> ``x.tfw``), atomically."""
    raster_path = Path(raster_path)
    ext = raster_path.suffix.lower()
    path = raster_path.with_suffix(f".{ext[1]}{ext[-1]}w")
    t = transform  # a world file holds the centre of the upper-left pixel
    values = (t.a, t.d, t.b, t.e, t.c + (t.a + t.b) / 2, t.f + (t.d + t.e) / 2)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text("".join(f"{v:.10f}\n" for v in values))
    os.replace(tmp, path)
    return path


def encode_labels(
    class_ids: np.ndarray,
    palette: Sequence[Sequence[int]],
    fill: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Colour-code class ids through a palette: (H, W) ids -> (3, H, W) uint8.

    Ids outside the palette (e.g. 255, ignore) get the ``fill`` colour (ISPRS boundary black).
    """
    ids = np.asarray(class_ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"class ids must lie in 0..255, got {ids.min()}..{ids.max()}")
    lut = np.empty((256, 3), np.uint8)
    lut[:] = fill
    lut[: len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
    return np.ascontiguousarray(lut[ids.astype(np.uint8)].transpose(2, 0, 1))


def erode_labels(class_ids: np.ndarray, radius: int = 2, ignore: int = 255) -> np.ndarray:
    """Set pixels within ``radius`` px (a disc) of a class boundary to ``ignore``."""
    h, w = class_ids.shape
    padded = np.pad(class_ids, radius, mode="edge")
    near = np.zeros((h, w), bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                near |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w] != (
                    class_ids
                )
    return np.where(near, np.uint8(ignore), class_ids).astype(class_ids.dtype)
