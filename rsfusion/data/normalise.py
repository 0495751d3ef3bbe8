"""Normalisation of the X modality (DSM, nDSM), identical in training and prediction.

Every mode is a per-raster affine map ``(v - offset) / scale`` applied when a raster is read, so a
window that straddles two rasters is normalised by each raster's own statistics:

* ``raster_minmax`` (MoBaNet): min and max of the whole raster, computed once by a streamed pass
  over windows of at most :data:`READ_PIXELS` pixels whatever the file's block layout (never a
  full read), nodata, NaN and +-inf excluded;
* ``dataset``: mean and standard deviation over all training rasters, streamed the same way;
* ``scale``: a fixed divisor from the config (e.g. 255 for Potsdam's 8-bit nDSM JPEGs).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from rsfusion.data.windows import bounded_windows
from rsfusion.errors import SampleFormatError

#: Pixels read at once by the statistics pass (as float64: 32 MiB, plus a mask)
READ_PIXELS = 1 << 22


@dataclass(frozen=True)
class RasterStats:
    """Streamed statistics of band 1 of a raster (valid pixels only)."""

    count: int
    minimum: float
    maximum: float
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def std(self) -> float:
        var = self.total_sq / max(self.count, 1) - self.mean**2
        return float(np.sqrt(max(var, 0.0)))


def _file_key(source: str) -> tuple[str, float, int]:
    # a GDAL "vrt://path?options" string ends its path at the first "?"; a plain path is whole
    path = source.removeprefix("vrt://").split("?")[0] if source.startswith("vrt://") else source
    try:
        st = os.stat(path)
        return source, st.st_mtime, st.st_size
    except OSError:
        return source, 0.0, 0


def raster_stats(source: str) -> RasterStats:
    """Statistics of a raster's first band, read by bounded windows (cached per file version).

    Raises:
        SampleFormatError: the raster cannot be read (corrupt, truncated, not a raster) or has
            no valid pixel; the message names it.
    """
    str_source = str(source)
    try:
        return _raster_stats_cached(*_file_key(str_source))
    except RasterioError as err:
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        raise SampleFormatError(
            f"cannot read raster {str_source}: {err}{cause}. The file is corrupt, truncated or "
            "not a raster GDAL can read; copy or export it again"
        ) from err


@functools.lru_cache(maxsize=4096)
def _raster_stats_cached(source: str, mtime: float, size: int) -> RasterStats:
    count, lo, hi, total, total_sq = 0, np.inf, -np.inf, 0.0, 0.0
    with rasterio.open(source) as src:
        nodata = src.nodata
        for window in bounded_windows(src.height, src.width, src.block_shapes[0], READ_PIXELS):
            block = src.read(1, window=window, masked=False).astype(np.float64)
            valid = np.isfinite(block)  # NaN and +-inf are unknown values, like nodata
            if nodata is not None:
                valid &= block != nodata
            values = block[valid]
            if values.size == 0:
                continue
            count += values.size
            lo = min(lo, float(values.min()))
            hi = max(hi, float(values.max()))
            total += float(values.sum())
            total_sq += float(np.square(values).sum())
    if count == 0:
        raise SampleFormatError(
            f"raster {source} has no valid pixel (all nodata, NaN or infinite): give an X raster "
            "with data, or set its nodata value right"
        )
    return RasterStats(count, lo, hi, total, total_sq)


def combine(stats: Iterable[RasterStats]) -> RasterStats:
    """Pool the statistics of several rasters."""
    items = list(stats)
    return RasterStats(
        count=sum(s.count for s in items),
        minimum=min(s.minimum for s in items),
        maximum=max(s.maximum for s in items),
        total=sum(s.total for s in items),
        total_sq=sum(s.total_sq for s in items),
    )


@dataclass(frozen=True)
class XNorm:
    """How X rasters are normalised: a mode and, for the dataset mode, pooled statistics."""

    mode: str = "raster_minmax"
    scale: float = 1.0
    mean: float | None = None
    std: float | None = None

    def affine(self, source: str) -> tuple[float, float]:
        """(offset, scale) so that normalised = (value - offset) / scale for this raster."""
        if self.mode == "raster_minmax":
            st = raster_stats(source)
            return st.minimum, max(st.maximum - st.minimum, 1e-6)
        if self.mode == "dataset":
            if self.mean is None or self.std is None:
                raise ValueError("x_norm 'dataset' needs mean and std: build it with XNorm.fit()")
            return self.mean, max(self.std, 1e-6)
        if self.mode == "scale":
            return 0.0, self.scale
        raise ValueError(f"unknown x_norm '{self.mode}'; use raster_minmax, dataset or scale")

    @classmethod
    def fit(cls, mode: str, sources: Iterable[str], scale: float = 1.0) -> XNorm:
        """Build the normalisation, streaming the training rasters when the mode needs it."""
        if mode == "dataset":
            pooled = combine(raster_stats(s) for s in sources)
            return cls(mode, scale, pooled.mean, pooled.std)
        return cls(mode, scale)

    def to_dict(self) -> dict[str, float | str | None]:
        return {"mode": self.mode, "scale": self.scale, "mean": self.mean, "std": self.std}
