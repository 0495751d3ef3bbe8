"""Checks of a raster pair before any work: against each other and against the checkpoint.

:func:`check_pair` opens an orthophoto (and its X raster) and decides how to read them, or
refuses them with one message naming the file, what it is, what the model expects and the fix:

* bands: as many as the checkpoint's bands;
* overlap: an X raster that does not overlap the orthophoto at all is refused (both extents
  named); one that covers part of it is read where it has data, and the pixels without X are
  nodata in the outputs (see ``x_missing`` in :class:`~rsfusion.inference.predict.PredictOptions`);
* grid: an X raster on another grid is refused unless ``align`` (then warped onto the RGB grid);
* dtype and value range: the checkpoint records its training rasters' dtype and values
  (:mod:`rsfusion.data.raster_facts`); an orthophoto on another scale (a uint16 or a float 0..1
  one for a uint8-trained model) is refused, or rescaled while read with ``rgb_scale``
  (a factor such as ``255/65535``, or ``auto``), and the note says which factor;
* GSD: more than a factor of 2 from the training GSD is a warning; ``resample_to_gsd`` reads the
  pair at the training GSD (outputs are still written on the orthophoto's grid).

Checkpoints written before this record keep working: nothing is checked against them (a note
says so). A CRS is named by its authority code only when it has one
(:func:`~rsfusion.data.raster_facts.crs_name`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.warp import transform_bounds

from rsfusion.data.raster_facts import crs_name, gsd_metres, nominal_range, sample_range
from rsfusion.errors import PredictionError
from rsfusion.inference.reader import open_raster, read_error
from rsfusion.models.checkpoint import CheckpointMeta

log = logging.getLogger(__name__)

#: (crs, transform, width, height)
Grid = tuple[Any, Any, int, int]
#: past this factor between the input and the training GSD, prediction warns
GSD_FACTOR = 2.0
#: the checkpoint key holding the record of the training rasters
RECORD_KEY = "inputs"
OLD_CHECKPOINT_NOTE = (
    "note: the checkpoint records no dtype, value range or GSD of its training rasters (it was "
    "written by an earlier version): the inputs are not checked against them"
)
_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}  # fmt: skip


@dataclass(frozen=True)
class PairPlan:
    """How a checked pair is read.

    Attributes:
        grid: the orthophoto's grid; outputs are written on it.
        model_grid: the grid the model reads the pair on (the orthophoto's, or the training
            GSD's over the same area with ``resample_to_gsd``).
        x_grid: warp X onto this grid (None: X already shares ``model_grid``, or no X).
        rgb_factor: RGB values are multiplied by it before normalisation (``rgb_scale``).
        notes: ``"warning: ..."`` and ``"note: ..."`` lines for the user.
    """

    rgb: str | Path
    x: str | Path | None
    grid: Grid
    model_grid: Grid
    x_grid: Grid | None = None
    rgb_factor: float = 1.0
    notes: tuple[str, ...] = ()

    @property
    def resampled(self) -> bool:
        """Whether the model reads the pair on another grid than the orthophoto's."""
        return self.model_grid[1:] != self.grid[1:]


def parse_rgb_scale(text: str | None) -> float | str | None:
    """``--rgb-scale``: None, ``"auto"``, or a positive factor written as a number or a
    fraction (``255/65535``).

    Example:
        >>> parse_rgb_scale("255/65535") == 255 / 65535, parse_rgb_scale("auto")
        (True, 'auto')
    """
    if text is None:
        return None
    value = str(text).strip()
    if value == "auto":
        return value
    try:
        num, _, den = value.partition("/")
        factor = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        factor = math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise PredictionError(
            f"--rgb-scale {text}: give a positive factor the orthophoto's values are multiplied "
            "by, as a number or a fraction (255/65535: uint16 onto 0..255; 255: 0..1 onto "
            "0..255), or auto (from the file's dtype and values and the checkpoint's record)"
        )
    return factor


def check_pair(
    meta: CheckpointMeta,
    rgb: str | Path,
    x: str | Path | None,
    align: bool = False,
    rgb_scale: str | None = None,
    resample_to_gsd: bool = False,
) -> PairPlan:
    """Check a pair against each other and the checkpoint (see the module's text).

    Raises:
        PredictionError: the pair cannot be predicted as given; the message names the file,
            what it is, what the model expects and the fix. A file GDAL cannot read raises
            :func:`~rsfusion.inference.reader.read_error`'s error (``unreadable`` is True).
        MissingFileError: no such file.
    """
    record = meta.get(RECORD_KEY)
    notes: list[str] = [] if record else [OLD_CHECKPOINT_NOTE]
    scale = parse_rgb_scale(rgb_scale)
    with open_raster(rgb, "orthophoto") as src:
        if src.count != len(meta.rgb_bands):
            raise PredictionError(
                f"orthophoto {rgb} has {src.count} bands, the checkpoint was trained on "
                f"{len(meta.rgb_bands)} {meta.rgb_bands}: give the matching orthophoto"
            )
        if meta.x_bands and x is None:
            raise PredictionError(f"the checkpoint needs an X raster {meta.x_bands}: add --x")
        grid: Grid = (src.crs, src.transform, src.width, src.height)
        same = True
        if x is not None:
            with open_raster(x, "X raster") as xsrc:
                if xsrc.count != len(meta.x_bands):
                    raise PredictionError(
                        f"X raster {x} has {xsrc.count} bands, the checkpoint expects "
                        f"{meta.x_bands}"
                    )
                same = (xsrc.crs, xsrc.transform, xsrc.shape) == (src.crs, src.transform,
                                                                  src.shape)  # fmt: skip
                if not same:
                    notes += _check_overlap(src, xsrc, rgb, x, align)
                notes += _check_x_values(xsrc, x, meta, record)
        factor, note = _rgb_factor(src, rgb, record, scale, rgb_scale)
        notes += [note] if note else []
        model_grid, note = _gsd_plan(grid, rgb, record, resample_to_gsd)
        notes += [note] if note else []
    resampled = model_grid[1:] != grid[1:]
    x_grid = None if x is None or (same and not resampled) else model_grid
    return PairPlan(rgb, x, grid, model_grid, x_grid, factor, tuple(notes))


def check_pairs(
    meta: CheckpointMeta, pairs: Iterable[Any], **options: Any
) -> tuple[dict[Any, PairPlan], list[tuple[Any, PredictionError]]]:
    """:func:`check_pair` for every pair (``.rgb``, ``.x``): the plans of those that pass and
    the problems of those that do not. A file GDAL cannot open is left out of both (a folder
    run reports it in its turn and goes on with the others)."""
    plans: dict[Any, PairPlan] = {}
    problems: list[tuple[Any, PredictionError]] = []
    for pair in pairs:
        try:
            plans[pair] = check_pair(meta, pair.rgb, pair.x, **options)
        except (PredictionError, FileNotFoundError) as err:
            if getattr(err, "unreadable", False) or isinstance(err, FileNotFoundError):
                continue
            problems.append((pair, err))
    return plans, problems


_SAID_ONCE: set[str] = set()


def report(notes: Iterable[str], said: set[str] | None = None) -> None:
    """Log notes (``warning:`` lines as warnings, others as info) on the ``rsfusion.inference``
    logger, each once when ``said`` (the lines said so far) is given; the note on a checkpoint
    without a record is said once per process in any case."""
    for note in notes:
        seen = said if said is not None else _SAID_ONCE if note == OLD_CHECKPOINT_NOTE else None
        if seen is not None:
            if note in seen:
                continue
            seen.add(note)
        if note.startswith("warning:"):
            log.warning(note)
        else:
            log.info(note)


def _sample(src: Any, role: str, path: Any) -> tuple[float, float] | None:
    """:func:`~rsfusion.data.raster_facts.sample_range`; a raster whose pixels cannot be read
    is :func:`~rsfusion.inference.reader.read_error`'s error."""
    try:
        return sample_range(src)
    except RasterioError as err:
        raise read_error(role, path, err) from err


# ---------------------------------------------------------------- overlap
def _extent(bounds: Iterable[float]) -> tuple[float, float, float, float]:
    left, bottom, right, top = bounds
    return min(left, right), min(bottom, top), max(left, right), max(bottom, top)


def _fmt(extent: tuple[float, float, float, float]) -> str:
    left, bottom, right, top = extent
    return f"x {left:.10g}..{right:.10g}, y {bottom:.10g}..{top:.10g}"


def _check_overlap(src: Any, xsrc: Any, rgb: Any, x: Any, align: bool) -> list[str]:
    """Refuse an X raster that does not overlap the orthophoto (or, without ``align``, is on
    another grid); a note when it covers part of it."""
    rgb_extent = _extent(src.bounds)
    x_extent = _extent(xsrc.bounds)
    where = f"in {crs_name(src.crs)}"
    if src.crs is not None and xsrc.crs is not None and src.crs != xsrc.crs:
        try:
            x_extent = _extent(transform_bounds(xsrc.crs, src.crs, *xsrc.bounds, densify_pts=21))
            where = f"in {crs_name(src.crs)}, the X raster's extent transformed from " + crs_name(
                xsrc.crs
            )
        except (RasterioError, ValueError):
            x_extent = None  # type: ignore[assignment]
    covered = None
    if x_extent is not None:
        width = min(rgb_extent[2], x_extent[2]) - max(rgb_extent[0], x_extent[0])
        height = min(rgb_extent[3], x_extent[3]) - max(rgb_extent[1], x_extent[1])
        area = (rgb_extent[2] - rgb_extent[0]) * (rgb_extent[3] - rgb_extent[1])
        covered = max(width, 0.0) * max(height, 0.0) / area if area > 0 else None
        if width <= 0 or height <= 0:
            raise PredictionError(
                f"X raster {x} does not overlap orthophoto {rgb}: the X raster covers "
                f"{_fmt(x_extent)}, the orthophoto {_fmt(rgb_extent)} ({where}). Give the X "
                "raster of the orthophoto's area, or set the right CRS on the one that is wrong "
                "(gdalinfo shows each file's CRS and corners)"
            )
    if not align:
        t_x, t_rgb = tuple(xsrc.transform)[:6], tuple(src.transform)[:6]
        raise PredictionError(
            f"X raster {x} is not on the grid of orthophoto {rgb}: CRS {crs_name(xsrc.crs)} vs "
            f"{crs_name(src.crs)}, size {xsrc.width}x{xsrc.height} vs {src.width}x{src.height}, "
            f"transform {t_x} vs {t_rgb}. Pass --align to resample X onto the RGB grid."
        )
    if covered is not None and covered < 0.999:
        return [
            f"note: X raster {x} covers {covered:.0%} of orthophoto {rgb}: the pixels without X "
            "are nodata in the outputs"
        ]
    return []


# ---------------------------------------------------------------- dtype and value range
def _dtype(src: Any) -> str:
    dtypes = set(src.dtypes)
    return dtypes.pop() if len(dtypes) == 1 else "/".join(src.dtypes)


def _top(dtype: str, high: float) -> float:
    """The top of the scale values up to ``high`` are on: 2^n - 1 for integers, 1 for floats
    in 0..1, else ``high`` itself."""
    if "/" not in dtype and np.dtype(dtype).kind in "ui":
        return float(2 ** max(1, math.ceil(math.log2(max(high, 1.0) + 1))) - 1)
    return 1.0 if high <= 1.0 else float(high)


def _training_range(rec: dict[str, Any]) -> tuple[float, float] | None:
    value_range = rec.get("range") or nominal_range(rec["dtype"])
    return (float(value_range[0]), float(value_range[1])) if value_range else None


def _fits(found: tuple[float, float], rec: dict[str, Any]) -> bool:
    """Whether sampled values lie on the training rasters' scale: within their dtype's range
    (their own range, widened, for floats) and not 8 times below their top."""
    trained = _training_range(rec)
    if trained is None:
        return True  # nothing to compare with
    lo_t, hi_t = trained
    nominal = nominal_range(rec["dtype"])
    if nominal is not None:
        floor, ceiling = nominal
    else:
        span = max(hi_t - lo_t, 1e-12)
        floor, ceiling = lo_t - span, hi_t + span
    lo, hi = found
    return floor <= lo and hi <= ceiling and hi > hi_t / 8


def _suggest(dtype: str, found: tuple[float, float], rec: dict[str, Any]) -> tuple[str, float]:
    """The ``--rgb-scale`` that maps the file's scale onto the training rasters': its text
    and value."""
    trained = _training_range(rec)
    assert trained is not None
    target = _top(rec["dtype"], trained[1])
    source = _top(dtype, found[1])
    text = f"{target:g}" if source == 1 else f"{target:g}/{source:g}"
    return text, target / source


def _rgb_factor(
    src: Any,
    path: Any,
    record: dict[str, Any] | None,
    scale: float | str | None,
    flag: str | None,
) -> tuple[float, str | None]:
    """The factor RGB values are multiplied by, and the note saying so; refuses an orthophoto
    on another scale than the training rasters' unless ``scale`` is given."""
    rec = (record or {}).get("rgb") or {}
    trained_dtype = rec.get("dtype")
    dtype = _dtype(src)
    if scale is None:
        if not trained_dtype:
            return 1.0, None
        if dtype == trained_dtype and np.dtype(dtype).kind in "ui":
            return 1.0, None  # the same integer scale
        found = _sample(src, "orthophoto", path)
        if found is None or _fits(found, rec):
            if found is None or dtype == trained_dtype:
                return 1.0, None
            lo_t, hi_t = _training_range(rec) or found
            return 1.0, (
                f"note: orthophoto {path} is {dtype} but its values ({found[0]:g}..{found[1]:g}, "
                f"sampled) lie on the scale of the training rasters ({trained_dtype} "
                f"{lo_t:g}..{hi_t:g}): read as they are"
            )
        lo_t, hi_t = _training_range(rec)  # type: ignore[misc]
        text, factor = _suggest(dtype, found, rec)
        source_top = _top(dtype, found[1])
        gdal = _GDAL_TYPES.get(trained_dtype, "Float32")
        raise PredictionError(
            f"orthophoto {path} is {dtype} with values {found[0]:g}..{found[1]:g} (sampled), the "
            f"model was trained on {trained_dtype} orthophotos with values {lo_t:g}..{hi_t:g}: "
            "read as they are, its pixels would be normalised on the wrong scale. Rescale it "
            f"while reading with --rgb-scale {text} (its values 0..{source_top:g} onto "
            f"0..{_top(trained_dtype, hi_t):g}; --rgb-scale auto picks the same), or convert the "
            f"file (gdal_translate -ot {gdal} -scale 0 {source_top:g} 0 "
            f"{_top(trained_dtype, hi_t):g})"
        )
    found = _sample(src, "orthophoto", path)
    if scale == "auto":
        if not trained_dtype or _training_range(rec) is None:
            raise PredictionError(
                "--rgb-scale auto: the checkpoint records no value range of its training "
                "rasters (written by an earlier version): give the factor, e.g. --rgb-scale "
                "255/65535 for a uint16 orthophoto of a model trained on uint8 ones"
            )
        if found is None:
            raise PredictionError(
                f"--rgb-scale auto: orthophoto {path} has no valid pixel in the windows sampled "
                "to find its values: give the factor, e.g. --rgb-scale 255/65535"
            )
        text, factor = _suggest(dtype, found, rec)
    else:
        factor, text = float(scale), str(flag)
    values = f", values {found[0]:g}..{found[1]:g} sampled" if found else ""
    onto = ""
    if trained_dtype and _training_range(rec):
        lo_t, hi_t = _training_range(rec)  # type: ignore[misc]
        onto = f" for the training rasters' {trained_dtype} {lo_t:g}..{hi_t:g}"
    return factor, (
        f"note: orthophoto {path} ({dtype}{values}) is rescaled while read: values x {text} "
        f"(--rgb-scale {flag}){onto}"
    )


# ---------------------------------------------------------------- X values
def _check_x_values(xsrc: Any, path: Any, meta: CheckpointMeta, record: Any) -> list[str]:
    """A warning when X's values lie far from the training X's and X is normalised with fixed
    statistics (``x_norm`` dataset or scale: ``raster_minmax`` scales every raster by its own
    minimum and maximum, whatever its units)."""
    rec = (record or {}).get("x") or {}
    mode = meta.x_norm.get("mode", "raster_minmax")
    trained = _training_range(rec) if rec.get("dtype") else None
    if mode == "raster_minmax" or trained is None:
        return []
    found = _sample(xsrc, "X raster", path)
    if found is None:
        return []
    lo_t, hi_t = trained
    span = max(hi_t - lo_t, 1e-12)
    if lo_t - span <= found[0] and found[1] <= hi_t + span:
        return []
    return [
        f"warning: X raster {path} holds values {found[0]:g}..{found[1]:g} ({_dtype(xsrc)}, "
        f"sampled), the model was trained on X values {lo_t:g}..{hi_t:g} ({rec['dtype']}) "
        f"normalised with fixed statistics (x_norm {mode}): they reach the model far outside "
        "the training range; check the raster's units and product (DSM / nDSM)"
    ]


# ---------------------------------------------------------------- GSD
def _gsd_plan(
    grid: Grid, path: Any, record: dict[str, Any] | None, resample: bool
) -> tuple[Grid, str | None]:
    """The grid the model reads (the training GSD's with ``resample``) and a warning when the
    orthophoto's GSD is more than GSD_FACTOR from the training GSD."""
    trained = (record or {}).get("gsd_m")
    found = gsd_metres(*grid)
    if trained is None or found is None:
        if resample:
            why = (
                "the checkpoint records no training GSD (written by an earlier version, or its "
                "dataset has none)"
                if trained is None
                else f"orthophoto {path} has no CRS with metres, feet or degrees "
                f"({crs_name(grid[0])}), so its pixel size in metres is unknown"
            )
            raise PredictionError(
                f"--resample-to-gsd: {why}; resample the orthophoto and X yourself (gdalwarp "
                "-tr) or leave the option out"
            )
        if trained is not None and record is not None:
            return grid, (
                f"note: orthophoto {path} has no CRS telling its pixel size in metres "
                f"({crs_name(grid[0])}): its GSD is not compared with the training GSD "
                f"{trained:g} m"
            )
        return grid, None
    ratio = found / trained
    if resample:
        crs, transform, width, height = grid
        new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
        new_t = transform * Affine.scale(width / new_w, height / new_h)
        return (crs, new_t, new_w, new_h), (
            f"note: orthophoto {path} (GSD {found:.3g} m) is read at the training GSD "
            f"{trained:.3g} m ({new_w}x{new_h} px instead of {width}x{height}, "
            "--resample-to-gsd); the outputs are written on its own grid"
        )
    if 1 / GSD_FACTOR <= ratio <= GSD_FACTOR:
        return grid, None
    how = f"{ratio:.3g}x coarser" if ratio > 1 else f"{1 / ratio:.3g}x finer"
    return grid, (
        f"warning: orthophoto {path} has a GSD of {found:.3g} m, the model was trained at "
        f"{trained:.3g} m ({how}): objects appear at another size than in training and "
        "predictions are unreliable; pass --resample-to-gsd to read it at the training GSD "
        "(the outputs stay on its grid), or use a model trained at this GSD"
    )
