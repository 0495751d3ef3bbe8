"""Full-coverage window plans over a raster, shared by validation and sliding-window prediction.

Unlike torchgeo's ``GridGeoSampler`` (anchored bottom-left, runs past the top/right edge, yields
nothing for a tile smaller than the window), :func:`plan_windows` pulls the last window on each
axis back inside so it ends flush with the raster edge, and still gives one window for a raster
smaller than the window.

:func:`window_grid` gives the same plan as a lazy sequence whose memory is that of its row and
column offsets, so a raster that merely *declares* a huge size (a tiny VRT of 10^6 x 10^6 pixels)
does not become a list of 10^8 windows; :func:`bounded_windows` splits a raster into reads of at
most a given number of pixels whatever its block layout (a single-strip file is one block).

Example:
    >>> [(w.row_off, w.col_off) for w in plan_windows(5, 7, window=4, stride=3)]
    [(0, 0), (0, 3), (1, 0), (1, 3)]
    >>> grid = window_grid(10**6, 10**6, window=512, stride=384)
    >>> len(grid), grid[-1].row_off, grid[-1].col_off
    (6780816, 999488, 999488)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar, overload

from rasterio.windows import Window

T = TypeVar("T")


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """Return ``value`` as a ``(rows, cols)`` pair of positive ints, or raise ValueError."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a (rows, cols) pair of ints, got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be > 0 on both axes, got {value!r}")
    return pair[0], pair[1]


def axis_offsets(size: int, window: int, stride: int) -> list[int]:
    """Window start offsets along one axis covering ``[0, size)``.

    Args:
        size: Raster length on this axis (> 0).
        window: Window length (> 0).
        stride: Step between starts, ``0 < stride <= window``.

    Returns:
        Sorted unique offsets; the last one is ``size - window`` (flush with the edge), or a
        single ``0`` when ``size <= window``. There are ``ceil((size - window) / stride) + 1``
        offsets when ``size > window``.
    """
    if size <= window:
        return [0]
    last = size - window
    offsets = list(range(0, last, stride))
    offsets.append(last)
    return offsets


class WindowGrid(Sequence[Window]):
    """The windows of :func:`plan_windows` as a lazy, indexable sequence (row-major).

    Holds only the row and column offsets; ``grid[i]`` and iteration build windows on demand.
    """

    def __init__(self, rows: list[int], cols: list[int], win_h: int, win_w: int) -> None:
        self.rows, self.cols, self.win_h, self.win_w = rows, cols, win_h, win_w

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @overload
    def __getitem__(self, index: int) -> Window: ...

    @overload
    def __getitem__(self, index: slice) -> list[Window]: ...

    def __getitem__(self, index: int | slice) -> Window | list[Window]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"window {index} outside a plan of {n}")
        row, col = divmod(i, len(self.cols))
        return Window(self.cols[col], self.rows[row], self.win_w, self.win_h)

    def __iter__(self) -> Iterator[Window]:
        for row in self.rows:
            for col in self.cols:
                yield Window(col, row, self.win_w, self.win_h)


def window_grid(
    height: int,
    width: int,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
) -> WindowGrid:
    """:func:`plan_windows` as a lazy :class:`WindowGrid` (same windows, same order, same
    checks); its memory grows with the number of window rows and columns, not their product."""
    if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
        raise ValueError(
            f"raster size must be positive ints, got height={height!r}, width={width!r}"
        )
    win_h, win_w = _pair(window, "window")
    stride_h, stride_w = (win_h, win_w) if stride is None else _pair(stride, "stride")
    if stride_h > win_h or stride_w > win_w:
        raise ValueError(
            f"stride {(stride_h, stride_w)} is larger than window {(win_h, win_w)} on at least one "
            "axis, so pixels between windows would be skipped; use a stride <= the window "
            f"(e.g. stride={(min(stride_h, win_h), min(stride_w, win_w))})"
        )
    rows = axis_offsets(height, win_h, stride_h)
    cols = axis_offsets(width, win_w, stride_w)
    return WindowGrid(rows, cols, win_h, win_w)


def plan_windows(
    height: int,
    width: int,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
) -> list[Window]:
    """Plan windows of a fixed size that together cover every pixel of a raster.

    Every window has exactly the window size and starts inside the raster. On each axis the last
    window is pulled back so that it ends exactly at the raster edge, so the right and bottom
    edges are covered without padding. The only case where a window extends past the edge is an
    axis on which the raster is smaller than the window: that axis gets a single window starting
    at 0, and the caller pads (see :func:`window_padding`).

    Args:
        height: Raster height in pixels (> 0).
        width: Raster width in pixels (> 0).
        window: Window size, an int or ``(rows, cols)``.
        stride: Step between window starts, an int or ``(rows, cols)``; defaults to ``window``
            (no overlap). Must not exceed the window, or pixels would be skipped.

    Returns:
        ``rasterio.windows.Window`` objects sorted row-major (by ``row_off``, then ``col_off``),
        without duplicates.

    Raises:
        ValueError: On a non-positive size, window or stride, or a stride larger than the window.
    """
    return list(window_grid(height, width, window, stride))


def bounded_windows(
    height: int, width: int, block: tuple[int, int], max_pixels: int
) -> Iterator[Window]:
    """Windows tiling a raster row-major, each of at most ``max_pixels`` pixels.

    Reads follow the file's block layout where they can (whole block rows across the width,
    whole blocks across a too-wide raster), and are cut smaller where one block alone is over
    the budget (a single-strip file declares the whole raster as one block).

    Args:
        height: Raster height in pixels.
        width: Raster width in pixels.
        block: The file's ``(rows, cols)`` block shape (rasterio's ``block_shapes[0]``).
        max_pixels: Pixels per window at most (> 0).

    Example:
        >>> [tuple(map(int, w.flatten())) for w in bounded_windows(5, 4, (5, 4), 8)]
        [(0, 0, 4, 2), (0, 2, 4, 2), (0, 4, 4, 1)]
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be > 0, got {max_pixels}")
    block_h, block_w = max(1, int(block[0])), max(1, int(block[1]))
    if width <= max_pixels:
        cols = width
    else:  # whole blocks across when one fits, else any width within the budget
        cols = block_w * (max_pixels // block_w) if block_w <= max_pixels else max_pixels
    rows = max(1, max_pixels // cols)
    if rows >= block_h:
        rows -= rows % block_h
    for row in range(0, height, rows):
        for col in range(0, width, cols):
            yield Window(col, row, min(cols, width - col), min(rows, height - row))


def window_padding(win: Window, height: int, width: int) -> tuple[int, int]:
    """Padding needed so that a window read from a ``height`` x ``width`` raster has full size.

    Non-zero only for a raster smaller than the window on an axis (see :func:`plan_windows`).

    Args:
        win: A window, as returned by :func:`plan_windows`.
        height: Raster height in pixels.
        width: Raster width in pixels.

    Returns:
        ``(pad_bottom, pad_right)`` in pixels, each ``>= 0``.
    """
    pad_bottom = max(0, int(win.row_off) + int(win.height) - height)
    pad_right = max(0, int(win.col_off) + int(win.width) - width)
    return pad_bottom, pad_right


def batched(windows: Iterable[T], batch_size: int) -> Iterator[list[T]]:
    """Yield consecutive lists of at most ``batch_size`` items (the last one may be shorter).

    Args:
        windows: Windows (or any items) in order.
        batch_size: Items per batch (> 0).

    Returns:
        An iterator over lists of items, in order.

    Raises:
        ValueError: If ``batch_size`` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return _batches(windows, batch_size)


def _batches(windows: Iterable[T], batch_size: int) -> Iterator[list[T]]:
    """Generator behind :func:`batched` (kept apart so argument errors raise at call time)."""
    batch: list[T] = []
    for item in windows:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
