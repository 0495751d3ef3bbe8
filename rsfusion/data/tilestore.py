"""Tiles read once into memory: ISPRS samples cut from arrays instead of read per sample.

The torchgeo path of :class:`~rsfusion.data.isprs.ISPRSDataset` reads every sample with a
spatial index query per modality, a GDAL windowed read and a ``rasterio.merge`` per file, and
decodes the label colours again each time. :class:`TileStore` reads each raster of a split once,
whole (one rasterio read per file, through the same reader torchgeo uses, warped VRT included),
and keeps the orthophoto in its stored dtype, X already normalised (float32, as
``ElevationRaster`` does it) and the labels already decoded (class ids in the smallest unsigned
dtype that holds them). A query is then served by slicing.

Every sample is bit for bit the torchgeo path's (keys, dtypes, shapes, ``crs``, ``bounds``):
on a window that lies on the raster's pixel grid, torchgeo's merge copies the pixels and fills
the rest (outside the raster, or masked by its nodata or mask band) with a fill value; the store
fills with the same values and applies the same per-pixel operations (X normalisation, palette
decoding) once to the whole raster, which gives the same numbers as applying them per window.
An X raster a few pixels narrower or shorter than its orthophoto (read on the orthophoto's grid
from the top-left corner) is served too: its missing pixels lie outside it and read as 0 after
normalisation, as on the torchgeo path.

A query goes through the torchgeo path instead (same result, slower) where this cannot be
promised: X rasters resampled from another grid (``align_x``, bilinear); a raster whose pixel
size differs from the dataset's resolution, or that is rotated or flipped; a query off the pixel
grid (by more than :data:`GRID_TOLERANCE_PX`) or without explicit bounds; a query overlapping
more than one raster of a modality (overlapping neighbour tiles); labels with colours outside
the palette (torchgeo then raises the error naming the window, as before); a nodata value that
the raster's dtype cannot hold. :attr:`TileStore.served` and :attr:`TileStore.passed_on` count
the two cases (per process).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
import torch
from rasterio.transform import Affine
from torch import Tensor
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import array_to_tensor

Sample = dict[str, Any]

#: A query may be this far (in pixels) off a raster's pixel grid and still be served by slicing
#: (GDAL's nearest-neighbour read picks the same pixels); farther off, torchgeo reads it.
GRID_TOLERANCE_PX = 1e-4
#: Relative difference allowed between a raster's pixel size and the query's resolution.
_RES_TOLERANCE = 1e-9
#: Rows per block when a whole raster is normalised or decoded (bounds the temporary memory).
_BLOCK_ROWS = 512


@dataclass(frozen=True)
class Layer:
    """One raster held in memory, on its reader's grid.

    Attributes:
        array: (C, H, W) pixels as the sample holds them (labels: (H, W) class ids).
        fill: value of the pixels outside the raster.
        left: x of the raster's left edge; ``top``: y of its top edge.
        res: (x, y) pixel size in CRS units.
        bounds: (left, bottom, right, top) as the reader reports them (merge's overlap test).
    """

    array: np.ndarray
    fill: Any
    left: float
    top: float
    res: tuple[float, float]
    bounds: tuple[float, float, float, float]

    def window(self, xmin: float, ymax: float, width: int, height: int) -> np.ndarray | None:
        """A new array of the ``width`` x ``height`` px window with top-left corner (xmin,
        ymax), pixels outside the raster filled; None when the window is off the pixel grid."""
        col = (xmin - self.left) / self.res[0]
        row = (self.top - ymax) / self.res[1]
        c0, r0 = round(col), round(row)
        if abs(col - c0) > GRID_TOLERANCE_PX or abs(row - r0) > GRID_TOLERANCE_PX:
            return None
        h, w = self.array.shape[-2:]
        out = np.full((*self.array.shape[:-2], height, width), self.fill, self.array.dtype)
        sr0, sr1 = max(r0, 0), min(r0 + height, h)
        sc0, sc1 = max(c0, 0), min(c0 + width, w)
        if sr0 < sr1 and sc0 < sc1:
            out[..., sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = self.array[..., sr0:sr1, sc0:sc1]
        return out


class _Modality:
    """The in-memory layers of one torchgeo RasterDataset, in its index's order (None: that
    file is read by torchgeo), with the index's footprints for the hit test."""

    def __init__(self, dataset: RasterDataset, layers: list[Layer | None]) -> None:
        self.dataset = dataset
        self.layers = layers
        self.boxes = dataset.index.geometry.bounds.to_numpy(dtype=np.float64)  # (N, 4)

    def layer_for(self, bounds: tuple[float, float, float, float], res: tuple[float, float],
                  size: tuple[int, int]) -> Layer | None:  # fmt: skip
        """The one layer a query reads, or None when torchgeo must read it."""
        xmin, ymin, xmax, ymax = bounds
        b = self.boxes
        # GeoDataFrame.cx: footprints that intersect the query box (touching counts)
        hits = np.flatnonzero(
            (b[:, 0] <= xmax) & (b[:, 2] >= xmin) & (b[:, 1] <= ymax) & (b[:, 3] >= ymin)
        )
        if len(hits) > 1:  # merge skips sources without a positive overlap; more than one: no
            chunk = _chunk_bounds(xmin, ymax, res, size)
            overlapping = [
                int(i)
                for i in hits
                if self.layers[i] is not None and _overlaps(self.layers[i].bounds, chunk)
            ]
            if len(overlapping) != 1 or any(self.layers[i] is None for i in hits):
                return None
            hits = np.asarray(overlapping)
        if len(hits) != 1:
            return None
        layer = self.layers[int(hits[0])]
        if layer is None:
            return None
        if any(abs(a - b) > _RES_TOLERANCE * abs(b) for a, b in zip(layer.res, res)):
            return None
        return layer

    @property
    def nbytes(self) -> int:
        return sum(layer.array.nbytes for layer in self.layers if layer is not None)


def _chunk_bounds(
    xmin: float, ymax: float, res: tuple[float, float], size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """The output bounds ``rasterio.merge.merge`` computes for a query (its overlap test)."""
    width, height = size
    transform = Affine.translation(xmin, ymax) * Affine.scale(res[0], -res[1])
    return rasterio.windows.bounds(rasterio.windows.Window(0, 0, width, height), transform)


def _overlaps(src: tuple[float, float, float, float], chunk: tuple[float, ...]) -> bool:
    """``rasterio.merge``'s test: a positive-area intersection (north-up rasters)."""
    return max(src[0], chunk[0]) < min(src[2], chunk[2]) and max(src[1], chunk[1]) < min(
        src[3], chunk[3]
    )


def _fill_value(nodata: float | None, dtype: np.dtype) -> Any:
    """merge's fill for a source's own dtype: its nodata, else 0; None when the dtype cannot
    hold the nodata value (merge then behaves otherwise: left to torchgeo)."""
    if nodata is None:
        return 0
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return nodata if np.isfinite(nodata) and info.min <= nodata <= info.max else None
    if not np.isfinite(nodata):
        return nodata
    info = np.finfo(dtype)
    fits = info.min <= nodata <= info.max and np.can_cast(np.min_scalar_type(nodata), dtype)
    return nodata if fits else None


def _open(dataset: RasterDataset, source: str) -> Any:
    """The reader torchgeo reads ``source`` through (the file, or a warped VRT over it)."""
    return dataset._load_warp_file(source)


def _layout(handle: Any) -> tuple[float, float, tuple[float, float]] | None:
    """(left, top, (xres, yres)) of a north-up, unrotated reader; None otherwise."""
    t = handle.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        return None
    return t.c, t.f, (t.a, -t.e)


def _read(dataset: RasterDataset, source: str) -> tuple[np.ndarray, np.ndarray, Any] | None:
    """The whole raster (data, mask, reader facts) as merge sees it; None if not servable."""
    handle = _open(dataset, source)
    try:
        layout = _layout(handle)
        if layout is None:
            return None
        data = handle.read(masked=True)
        facts = (layout, tuple(handle.bounds), handle.nodatavals[0], np.dtype(handle.dtypes[0]))
        return np.ma.getdata(data), np.ma.getmaskarray(data), facts
    finally:
        handle.close()


def _filled(dataset: Any, source: str) -> Layer | None:
    """The whole raster with its masked pixels at the fill value torchgeo's merge leaves there
    (None: torchgeo's path, see :func:`_read` and :func:`_fill_value`); ``Layer.fill`` in the
    raster's dtype."""
    read = _read(dataset, source)
    if read is None:
        return None
    data, mask, ((left, top, res), bounds, nodata, dtype) = read
    fill = _fill_value(nodata, dtype)
    if fill is None:
        return None
    data[mask] = fill
    return Layer(data, np.asarray(fill, dtype)[()], left, top, res, bounds)


def _orthophoto_layer(dataset: RasterDataset, source: str) -> Layer | None:
    return _filled(dataset, source)


def _elevation_layer(dataset: Any, source: str) -> Layer | None:
    """X as ``ElevationRaster._merge_files`` gives it: float32, NaN where masked, normalised by
    the raster's own affine, non-finite values 0."""
    if dataset.interpolate:
        return None  # bilinear resampling: left to torchgeo
    read = _read(dataset, source)
    if read is None:
        return None
    data, mask, ((left, top, res), bounds, _, _) = read
    offset, scale = dataset.x_norm.affine(source)
    out = np.empty(data.shape, np.float32)
    for r in range(0, data.shape[1], _BLOCK_ROWS):
        rows = slice(r, r + _BLOCK_ROWS)
        arr = data[:, rows].astype(np.float32)
        arr[mask[:, rows]] = np.nan
        arr = (arr - offset) / scale
        out[:, rows] = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return Layer(out, np.float32(0.0), left, top, res, bounds)


def _smallest_dtype(values: np.ndarray) -> np.dtype:
    lo, hi = int(values.min()), int(values.max())
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _label_layer(dataset: Any, source: str) -> Layer | None:
    """Class ids as ``LabelRaster`` gives them: single-band rasters as they are, colour-coded
    ones decoded by the card's palette (None if a colour is not in it: torchgeo raises then)."""
    from rsfusion.errors import LabelColourError

    layer = _filled(dataset, source)
    if layer is None:
        return None
    data, fill, dtype = layer.array, layer.fill, layer.array.dtype
    left, top, res, bounds = layer.left, layer.top, layer.res, layer.bounds
    if data.shape[0] == 1:
        return replace(layer, array=data[0])
    if data.shape[0] != 3:
        return None  # the decoder refuses it, naming the window: torchgeo's path

    def decode(block: np.ndarray) -> Tensor:
        return dataset.decoder(array_to_tensor(block).to(torch.long))

    try:
        blocks = [
            decode(data[:, r : r + _BLOCK_ROWS]).numpy()
            for r in range(0, data.shape[1], _BLOCK_ROWS)
        ]
        fill_id = decode(np.full((3, 1, 1), fill, dtype)).numpy()
    except LabelColourError:
        return None
    ids = np.concatenate(blocks)
    small = _smallest_dtype(np.array([ids.min(), ids.max(), fill_id[0, 0]]))
    return Layer(ids.astype(small), small.type(fill_id[0, 0]), left, top, res, bounds)


def _query_box(query: Any, res: tuple[float, float]) -> tuple[Any, ...] | None:
    """(xmin, ymin, xmax, ymax, (xres, yres), (width, height)) of a query with explicit x and y
    bounds, the step defaulting to the dataset's resolution; None for anything else."""
    if not isinstance(query, tuple) or len(query) < 2:
        return None
    x, y = query[0], query[1]
    if not isinstance(x, slice) or not isinstance(y, slice):
        return None
    if None in (x.start, x.stop, y.start, y.stop):
        return None
    step = (x.step if x.step is not None else res[0], y.step if y.step is not None else res[1])
    width = int(round((x.stop - x.start) / step[0]))
    height = int(round((y.stop - y.start) / step[1]))
    if width <= 0 or height <= 0:
        return None
    return x.start, y.start, x.stop, y.stop, step, (width, height)


def _tensor(array: np.ndarray) -> Tensor:
    """A tensor of a fresh window array, as torchgeo's ``array_to_tensor`` converts it (uint16
    and uint32 widened) without its extra copy."""
    if array.dtype in (np.uint16, np.uint32):
        return array_to_tensor(array)
    return torch.from_numpy(array)


class TileStore:
    """The rasters of an ISPRS split in memory; ``store(query)`` gives the sample (or None).

    Args:
        orthophoto: the dataset's ``OrthophotoRaster``.
        elevation: its ``ElevationRaster`` (None: RGB only).
        labels: its ``LabelRaster``.
    """

    def __init__(self, orthophoto: RasterDataset, elevation: Any | None, labels: Any) -> None:
        self.orthophoto = orthophoto
        self.res = tuple(orthophoto.res)
        self.crs = orthophoto.crs
        self.rgb = self._modality(orthophoto, _orthophoto_layer)
        self.x = None if elevation is None else self._modality(elevation, _elevation_layer)
        self.labels = self._modality(labels, _label_layer)
        self.served = 0
        self.passed_on = 0

    @staticmethod
    def _modality(dataset: RasterDataset, load: Any) -> _Modality:
        return _Modality(dataset, [load(dataset, str(fp)) for fp in dataset.index.filepath])

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        parts = [self.rgb, self.labels] + ([self.x] if self.x is not None else [])
        return sum(m.nbytes for m in parts)

    @property
    def complete(self) -> bool:
        """Every raster is held (no query of an aligned window goes to torchgeo)."""
        parts = [self.rgb, self.labels] + ([self.x] if self.x is not None else [])
        return all(layer is not None for m in parts for layer in m.layers)

    def __call__(self, query: Any) -> Sample | None:
        """The sample of ``query`` as the torchgeo path gives it, or None (read it there)."""
        sample = self._sample(query)
        if sample is None:
            self.passed_on += 1
        else:
            self.served += 1
        return sample

    def _sample(self, query: Any) -> Sample | None:
        box = _query_box(query, self.res)
        if box is None:
            return None
        xmin, ymin, xmax, ymax, res, size = box
        bounds = (xmin, ymin, xmax, ymax)
        parts = [("image", self.rgb), ("image_x", self.x), ("mask", self.labels)]
        arrays = {}
        for key, modality in parts:
            if modality is None:
                continue
            layer = modality.layer_for(bounds, res, size)
            if layer is None:
                return None
            window = layer.window(xmin, ymax, *size)
            if window is None:
                return None
            arrays[key] = window
        sample: Sample = {"crs": self.crs, "bounds": query}
        sample["image"] = _tensor(arrays["image"]).to(self.orthophoto.dtype)
        if "image_x" in arrays:
            sample["image_x"] = torch.from_numpy(arrays["image_x"])
        sample["mask"] = _tensor(arrays["mask"]).to(torch.long)
        return sample


# ---------------------------------------------------------------- will it fit?
def store_bytes(rasters: list[tuple[str, str]]) -> int:
    """Bytes a :class:`TileStore` holds for ``(role, source)`` pairs, role 'rgb', 'x' or
    'labels', from the files' headers: the orthophoto in its dtype, X as float32, labels one
    byte per pixel (class ids; two for single-band labels wider than a byte)."""
    total = 0
    for role, source in rasters:
        with rasterio.open(source) as src:
            pixels = src.width * src.height
            if role == "rgb":
                total += pixels * src.count * np.dtype(src.dtypes[0]).itemsize
            elif role == "x":
                total += pixels * src.count * 4
            else:
                total += pixels * (1 if src.count == 3 else np.dtype(src.dtypes[0]).itemsize)
    return total


def size_text(n: int) -> str:
    """Bytes in words: ``1.50 GiB``, ``12 MiB``, ``45 KiB``.

    Example:
        >>> size_text(3 * 2**29), size_text(12 * 2**20), size_text(46080)
        ('1.50 GiB', '12 MiB', '45 KiB')
    """
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
