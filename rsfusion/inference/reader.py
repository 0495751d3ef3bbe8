"""Background window reading for prediction: rasterio windowed reads in worker threads.

GDAL releases the GIL while it reads and decompresses, so a few threads, each with its own
dataset handles (GDAL handles must not be shared between threads), keep batches of windows ready
while the model runs on the previous ones. Batches come back in plan order and at most
``prefetch`` are in flight, so memory stays bounded whatever the raster size.

Windows come back as read: RGB in the file's dtype (uint8 for orthophotos, a quarter of the
float32 bytes to copy and move to a GPU), X as float32 with NaN where it has no data.
:class:`InputNorm` normalises them on the model's device, as training normalises its batches
after the transfer (mmsegmentation's data pre-processor does the same). A raster that cannot be
read (corrupt, truncated) raises :class:`~rsfusion.errors.PredictionError` naming it.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from rsfusion.errors import MissingFileError, PredictionError

#: dtypes the reader keeps as they are in the file (torch takes them without a copy)
NATIVE_DTYPES = frozenset({"uint8", "int8", "int16", "int32", "float32", "float64"})


@dataclass(frozen=True)
class InputNorm:
    """Training's normalisation of a pair, applied to raw windows on the model's device.

    RGB: ``(v - mean) / std`` per band; X: ``(v - offset) / scale`` with NaN (no data, outside
    the raster) set to 0 afterwards, as :class:`rsfusion.data.normalise.XNorm` does in training.
    +-inf is unknown like NaN (0 after normalisation), in X and in a floating-point RGB.
    """

    rgb_mean: np.ndarray
    rgb_std: np.ndarray
    x_offset: float = 0.0
    x_scale: float = 1.0

    def __call__(
        self, rgb: torch.Tensor, x: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised float32 (B, C, H, W) tensors of raw ones, on their device."""

        def band(v: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(v, np.float32).reshape(-1, 1, 1), device=rgb.device)

        # the first op out of place: a float32 input may share memory with the reader's array
        floating = rgb.is_floating_point()
        rgb = (rgb.float() - band(self.rgb_mean)).div_(band(self.rgb_std))
        if floating:  # integer pixels are always finite
            rgb = rgb.nan_to_num_(0.0, posinf=0.0, neginf=0.0)
        if x is not None:
            x = (x.float() - self.x_offset).div_(self.x_scale)
            x = x.nan_to_num_(0.0, posinf=0.0, neginf=0.0)
        return rgb, x


@dataclass(frozen=True)
class PairSpec:
    """How to open an RGB (+ X) pair and normalise its windows.

    ``x_grid`` (crs, transform, width, height) warps X onto the RGB grid (``--align``);
    ``None`` reads X as it is (it must already share the RGB grid). ``rgb_grid`` reads the RGB
    warped onto another grid (the training GSD's, ``--resample-to-gsd``); X then needs
    ``x_grid`` set to the same grid.
    """

    rgb: str | Path
    x: str | Path | None
    norm: InputNorm
    x_grid: tuple[Any, Any, int, int] | None = None
    rgb_grid: tuple[Any, Any, int, int] | None = None


def open_raster(path: str | Path, role: str) -> Any:
    """``rasterio.open(path)``; a file GDAL cannot open raises an error naming it and its role."""
    try:
        return rasterio.open(path)
    except RasterioError as err:
        text = str(path)
        if "://" not in text and not text.startswith("/vsi") and not Path(text).exists():
            raise MissingFileError(f"{role} {path}: no such file") from err
        raise read_error(role, path, err) from err


@contextlib.contextmanager
def open_pair(spec: PairSpec, gdal_threads: str | None = None) -> Iterator[tuple[Any, Any]]:
    """Open the pair's datasets (X warped onto the RGB grid when ``spec.x_grid`` is set).

    ``gdal_threads`` sets GDAL_NUM_THREADS for these handles: GeoTIFF reads spanning several
    compressed blocks (the row strips of :func:`read_windows`) then decode them in parallel.
    """
    with contextlib.ExitStack() as stack:
        if gdal_threads:
            stack.enter_context(rasterio.Env(GDAL_NUM_THREADS=gdal_threads))
        src = stack.enter_context(open_raster(spec.rgb, "orthophoto"))
        if spec.rgb_grid is not None:
            src = stack.enter_context(warped(src, spec.rgb_grid))
        xsrc = None
        if spec.x is not None:
            xsrc = stack.enter_context(open_raster(spec.x, "X raster"))
            if spec.x_grid is not None:
                # float32 with NaN where X has no source pixel (outside it, or its nodata):
                # unknown, never a filler value that looks like data
                xsrc = stack.enter_context(warped(xsrc, spec.x_grid, nodata=np.nan))
        yield src, xsrc


def warped(src: Any, grid: tuple[Any, Any, int, int], nodata: float | None = None) -> Any:
    """``src`` read on ``grid`` (crs, transform, width, height) through a WarpedVRT: bilinear
    where the grid is finer than the source, average where it is coarser. ``nodata`` (NaN)
    makes it float32 with that value wherever no source pixel falls."""
    crs, transform, width, height = grid
    coarser = abs(transform.a * transform.e) > abs(src.transform.a * src.transform.e) * 1.0001
    extra: dict[str, Any] = {} if nodata is None else {"nodata": nodata, "dtype": "float32"}
    return WarpedVRT(
        src, crs=crs if crs is not None else src.crs, transform=transform, width=width,
        height=height, resampling=Resampling.average if coarser else Resampling.bilinear,
        **extra,
    )  # fmt: skip


def has_mask(src: Any) -> bool:
    """Whether a dataset has nodata or a mask (else every pixel is valid: no mask to read)."""
    if src.nodata is not None:
        return True
    return any(MaskFlags.all_valid not in flags for flags in src.mask_flag_enums)


def read_window(
    src: Any,
    win: Window,
    size: int,
    fill: float = 0.0,
    masked: bool | None = None,
    dtype: str = "float32",
) -> np.ndarray:
    """A window as (bands, size, size) of ``dtype``; nodata and outside pixels set to ``fill``.

    As in training: RGB pads with pixel value 0 before normalisation; X reads nodata and
    padding as NaN, which becomes 0 after normalisation. ``masked`` (default: looked up with
    :func:`has_mask`) says whether the dataset's mask must be read.
    """
    masked = has_mask(src) if masked is None else masked
    inside = win.intersection(Window(0, 0, src.width, src.height))
    if inside == win and win.height == win.width == size and not masked:
        return src.read(window=win, out_dtype=dtype)  # the common case: one read, no copy
    data = src.read(window=inside, masked=masked, out_dtype=dtype)
    data = data.filled(fill) if np.ma.isMaskedArray(data) else data
    out = np.full((data.shape[0], size, size), fill, dtype=dtype)
    r, c = int(inside.row_off - win.row_off), int(inside.col_off - win.col_off)
    out[:, r : r + data.shape[1], c : c + data.shape[2]] = data
    return out


def read_windows(
    src: Any,
    wins: Sequence[Window],
    size: int,
    fill: float = 0.0,
    masked: bool = False,
    dtype: str = "float32",
) -> np.ndarray:
    """Windows as one (B, bands, size, size) array of ``dtype``: :func:`read_window` each.

    Windows inside the raster that share a row offset (a batch walks along a row of the plan)
    are read as one strip, so the pixels neighbouring windows share are decoded once; the
    others (raster border, smaller rasters, masked data) are read one by one.
    """
    out = np.empty((len(wins), src.count, size, size), dtype)
    full = Window(0, 0, src.width, src.height)
    rows: dict[int, list[int]] = {}
    for i, w in enumerate(wins):
        if not masked and w.height == w.width == size and w.intersection(full) == w:
            rows.setdefault(int(w.row_off), []).append(i)
        else:
            out[i] = read_window(src, w, size, fill, masked, dtype)
    for row, idx in rows.items():
        left = min(int(wins[i].col_off) for i in idx)
        right = max(int(wins[i].col_off) + size for i in idx)
        if len(idx) == 1:
            src.read(window=Window(left, row, size, size), out=out[idx[0]])
            continue
        data = src.read(window=Window(left, row, right - left, size), out_dtype=dtype)
        for i in idx:
            c = int(wins[i].col_off) - left
            out[i] = data[:, :, c : c + size]
    return out


def raw_dtype(src: Any) -> str:
    """The dtype RGB windows keep: the file's when every band shares it and torch takes it."""
    dtypes = set(src.dtypes)
    return dtypes.pop() if len(dtypes) == 1 and dtypes <= NATIVE_DTYPES else "float32"


def read_error(role: str, path: Any, err: BaseException) -> PredictionError:
    """The user error for a raster GDAL cannot open or read (names the file and the fix)."""
    reason = str(err)
    if err.__cause__ is not None and str(err.__cause__) not in reason:
        reason += f" ({err.__cause__})"
    error = PredictionError(
        f"cannot read {role} {path}: {reason}. The file is corrupt, truncated or not a raster "
        f"GDAL can read (gdalinfo -checksum shows where): copy or export it again"
    )
    error.unreadable = True  # type: ignore[attr-defined]
    return error


class ValidPixels:
    """Which pixels of row bands have the data a prediction needs.

    A pixel is missing where the RGB dataset's mask says so (nodata) and, when ``x`` is given,
    where X has no finite value: its nodata, NaN, +-inf, and outside the X raster (warped with
    NaN there: :func:`open_pair`). Prediction writes those pixels as nodata. The handles are
    opened by the caller; only one thread may read through them.

    Args:
        src: the RGB dataset (as the model reads it).
        x: the X dataset on the same grid, or None (X not checked).
        names: the files, for errors.
    """

    def __init__(self, src: Any, x: Any = None, names: tuple[Any, Any] | None = None) -> None:
        self.src, self.x = src, x
        self.names = names or (src.name, None if x is None else x.name)
        self.rgb_masked = has_mask(src)
        self.x_checked = x is not None and (
            has_mask(x) or np.dtype(x.dtypes[0]).kind == "f"
        )  # an unmasked integer X always has data
        self.x_missing = 0  # pixels without X (where the RGB has data), over the rows read

    @property
    def needed(self) -> bool:
        """Whether any pixel can be missing."""
        return self.rgb_masked or self.x_checked

    def rows(self, row: int, n: int) -> np.ndarray | None:
        """A (n, width) bool array, True where rows ``row..row+n`` have data; None: all do."""
        if not self.needed:
            return None
        win = Window(0, row, self.src.width, n)
        valid = None
        if self.rgb_masked:
            try:
                valid = self.src.read_masks(1, window=win) > 0
            except RasterioError as err:
                raise read_error("orthophoto", self.names[0], err) from err
        if self.x_checked:
            try:
                data = self.x.read(1, window=win, masked=True, out_dtype="float32")
            except RasterioError as err:
                raise read_error("X raster", self.names[1], err) from err
            has_x = np.isfinite(data.filled(np.nan))
            rgb_ok = valid if valid is not None else True
            self.x_missing += int(np.count_nonzero(~has_x & rgb_ok))
            valid = has_x if valid is None else valid & has_x
        return valid


def read_batch(
    handles: tuple[Any, Any],
    wins: Sequence[Window],
    size: int,
    names: tuple[Any, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw RGB (B, C, size, size; file dtype, padded with 0) and X (B, Cx, size, size;
    float32, NaN where X has no data) arrays of windows: normalise them with
    :class:`InputNorm`. ``names`` (default: the datasets' own) name the files in errors."""
    src, xsrc = handles
    names = names or (src.name, None if xsrc is None else xsrc.name)
    try:
        rgb = read_windows(src, wins, size, 0.0, has_mask(src), raw_dtype(src))
    except RasterioError as err:
        raise read_error("orthophoto", names[0], err) from err
    if xsrc is None:
        return rgb, None
    try:
        return rgb, read_windows(xsrc, wins, size, np.nan, has_mask(xsrc), "float32")
    except RasterioError as err:
        raise read_error("X raster", names[1], err) from err


class WindowReader:
    """Iterate over batches of raw windows, read ahead by ``threads`` worker threads.

    Each worker opens its own handles and closes them itself (rasterio keeps its GDAL
    environment per thread). Batches are handed out in order and at most ``prefetch`` are read
    ahead of the consumer; an error in a worker is raised in the consumer. ``batches`` is
    consumed as reading goes (a generator over a lazy plan is never held whole).

    Args:
        spec: the pair (its ``norm`` is for the consumer: batches come back raw).
        batches: window batches, in the order they are wanted (any iterable).
        size: window size (windows at the border are padded to it).
        threads: worker threads; 0 reads in the calling thread (no read-ahead).
        prefetch: batches in flight at most (default ``2 * threads``).
        gdal_threads: GDAL_NUM_THREADS of the handles (block decoding in parallel); None
            leaves GDAL's setting.

    Yields:
        ``(windows, rgb, x)`` per batch, in the order of ``batches``.
    """

    def __init__(
        self,
        spec: PairSpec,
        batches: Iterable[Sequence[Window]],
        size: int,
        threads: int = 1,
        prefetch: int | None = None,
        gdal_threads: str | None = "ALL_CPUS",
    ) -> None:
        self.spec, self.batches, self.size = spec, batches, size
        self.names = (spec.rgb, spec.x)
        self.gdal_threads = gdal_threads
        self.threads = max(0, threads)
        self.prefetch = max(1, prefetch or 2 * self.threads)

    def __iter__(self) -> Iterator[tuple[Sequence[Window], np.ndarray, np.ndarray | None]]:
        if self.threads == 0:
            with open_pair(self.spec, self.gdal_threads) as handles:
                for wins in self.batches:
                    yield (wins, *read_batch(handles, wins, self.size, self.names))
            return
        jobs: queue.Queue = queue.Queue()
        results: dict[int, Any] = {}
        ready = threading.Condition()

        def work() -> None:
            try:
                with open_pair(self.spec, self.gdal_threads) as handles:
                    while (job := jobs.get()) is not None:
                        i, wins = job
                        try:
                            out: Any = read_batch(handles, wins, self.size, self.names)
                        except BaseException as err:  # handed to the consumer
                            out = err
                        with ready:
                            results[i] = out
                            ready.notify_all()
            except BaseException as err:  # opening failed
                with ready:
                    results[-1] = err
                    ready.notify_all()

        workers = [
            threading.Thread(target=work, name=f"rsfusion-read-{n}", daemon=True)
            for n in range(self.threads)
        ]
        for t in workers:
            t.start()
        plan = enumerate(self.batches)
        pending: collections.deque[tuple[int, Sequence[Window]]] = collections.deque()
        try:
            while True:
                while len(pending) < self.prefetch and (job := next(plan, None)) is not None:
                    jobs.put(job)
                    pending.append(job)
                if not pending:
                    break
                i, wins = pending.popleft()
                with ready:
                    ready.wait_for(lambda i=i: i in results or -1 in results)
                    out = results.pop(i) if i in results else results[-1]
                if isinstance(out, BaseException):
                    raise out
                yield (wins, *out)
        finally:
            while True:  # drop what nobody will read, then stop the workers
                try:
                    jobs.get_nowait()
                except queue.Empty:
                    break
            for _ in workers:
                jobs.put(None)
            for t in workers:
                t.join()
