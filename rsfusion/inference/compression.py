"""Lossless GeoTIFF compression of the prediction outputs: names, levels and GDAL threads as
rasterio creation options (:func:`compression_options`), with the measured reason for the
defaults."""

from __future__ import annotations

from typing import Any

from rsfusion.errors import PredictionError, UnknownNameError

#: lossless GeoTIFF compressions of the outputs (see :func:`compression_options`)
COMPRESSIONS = ("deflate", "zstd", "lzw", "none")
#: the level a compression gets when none is given, and the levels it takes (GDAL's ZLEVEL,
#: ZSTD_LEVEL); LZW and none have no level
LEVELS: dict[str, tuple[int, range]] = {"deflate": (1, range(1, 10)), "zstd": (1, range(1, 23))}
#: GDAL compression threads (``NUM_THREADS``): a count, or ``"ALL_CPUS"``
DEFAULT_THREADS: int | str = "ALL_CPUS"


def compression_options(
    compress: str = "deflate", level: int | None = None, threads: int | str = DEFAULT_THREADS
) -> dict[str, Any]:
    """Creation options (rasterio profile keys) for a lossless GeoTIFF compression.

    The defaults (deflate at level 1, every CPU) are the fastest measured settings whose files
    every GIS tool reads. Writing a prediction's outputs (6-class map, 6 probability bands,
    confidence; 8192^2 px, 512 px tiles) on two cores: deflate level 6 (GDAL's default) on one
    thread 14.8 MPix/s, level 1 30.1 (files 2.8 % larger), level 1 on both cores 54.7. The
    threads gain only where cores are idle (a GPU host's): with both cores busy with other jobs
    (load ~5) they gained nothing (0.88x one thread for these defaults, 0.6-1.4x for others,
    best of 3). zstd level 1 is faster again (62.6 on one core, files as small as deflate 6's)
    but older GDALs and many GIS tools cannot read ZSTD; LZW is slower and larger than deflate 1.

    Args:
        compress: one of :data:`COMPRESSIONS` (any case).
        level: ``ZLEVEL`` (deflate, 1-9) or ``ZSTD_LEVEL`` (zstd, 1-22); None: the
            compression's default in :data:`LEVELS`. LZW and none take no level.
        threads: GDAL worker threads compressing tiles (``NUM_THREADS``), a count >= 1 or
            ``"ALL_CPUS"``; 1 compresses in the writing thread itself.

    Raises:
        UnknownNameError: a compression not in :data:`COMPRESSIONS` (lossy ones change pixels).
        PredictionError: a level the compression does not take, or a bad thread count.

    >>> compression_options("deflate", 1, "all_cpus")
    {'compress': 'deflate', 'zlevel': 1, 'num_threads': 'ALL_CPUS'}
    >>> compression_options("LZW", threads=1)
    {'compress': 'lzw'}
    """
    name = str(compress).lower()
    if name not in COMPRESSIONS:
        raise UnknownNameError(
            f"compression {compress!r} is not one of {', '.join(COMPRESSIONS)} (lossless GeoTIFF "
            "compressions: the outputs keep their exact values); deflate is read by every GIS tool"
        )
    opts: dict[str, Any] = {"compress": name}
    if name in LEVELS:
        default, allowed = LEVELS[name]
        level = default if level is None else level
        if isinstance(level, bool) or not isinstance(level, int) or level not in allowed:
            raise PredictionError(
                f"compression level {level!r} for {name}: give {allowed.start}-{allowed.stop - 1}"
            )
        opts["zlevel" if name == "deflate" else "zstd_level"] = level
    elif level is not None:
        raise PredictionError(f"compression level {level!r}: {name} takes none; leave it out")
    if isinstance(threads, str) and threads.upper() == "ALL_CPUS":
        opts["num_threads"] = "ALL_CPUS"
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise PredictionError(f"compression threads {threads!r}: give a count >= 1 or ALL_CPUS")
    elif threads > 1:
        opts["num_threads"] = threads
    return opts
