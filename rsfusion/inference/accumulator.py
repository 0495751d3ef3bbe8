"""Bounded-memory blending of per-window predictions into a raster streamed top to bottom.

Instead of whole-scene float arrays (whose memory grows with the raster), a
:class:`RowBandAccumulator` holds only a band of rows that can still receive windows. A
predictor walking windows row-major (as :func:`~rsfusion.data.windows.plan_windows` orders
them) adds each batch, then flushes every row above the next window's ``row_off``, and writes the
blended rows out::

    acc = RowBandAccumulator(height, width, channels=6, window_rows=512)
    for batch in batched(windows, 16):
        for win, logits in zip(batch, predict(batch)):
            acc.add(win, logits, edge_aware(weights, win, height, width))
        for row, block, wsum in acc.flush(next_row_off):  # ``height`` after the last batch
            write(row, block)
    for row, block, wsum in acc.finish():
        write(row, block)

Memory is ``2 * band_rows * width * channels`` elements at most (values plus weights), with
``band_rows == window_rows`` when every flush happens before a batch reaches a new window row;
a batch spanning ``k`` window rows needs ``window_rows + (k - 1) * stride`` rows, and the band
grows to that on demand. Neither depends on the raster height.
"""

from collections.abc import Iterator

import numpy as np
from numpy.typing import DTypeLike
from rasterio.windows import Window

Block = tuple[int, np.ndarray, np.ndarray]


class RowBandAccumulator:
    """Weighted average of overlapping windows, kept in a sliding band of rows.

    Args:
        height: Raster height in pixels (> 0).
        width: Raster width in pixels (> 0).
        channels: Channels per pixel (e.g. classes for logits) (> 0).
        window_rows: Window height in pixels; the initial band height (clipped to ``height``).
        dtype: Floating dtype of the buffers and of the yielded blocks.

    Raises:
        ValueError: On non-positive sizes or a non-floating dtype.
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels: int,
        window_rows: int,
        dtype: DTypeLike = np.float32,
    ) -> None:
        if min(height, width, channels, window_rows) <= 0:
            raise ValueError(
                f"height, width, channels and window_rows must be > 0, got "
                f"{(height, width, channels, window_rows)}"
            )
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise ValueError(f"dtype must be a floating type, got {self.dtype}")
        self.height, self.width, self.channels = height, width, channels
        self._start = 0  # first raster row not yet flushed; buffer row i is raster row start + i
        self._alloc(min(window_rows, height))

    def _alloc(self, rows: int) -> None:
        """(Re)allocate zeroed buffers of ``rows`` rows."""
        self._values = np.zeros((self.channels, rows, self.width), dtype=self.dtype)
        self._weights = np.zeros((rows, self.width), dtype=self.dtype)

    @property
    def band_rows(self) -> int:
        """Rows currently held in the band."""
        return self._weights.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes currently held by the value and weight buffers."""
        return self._values.nbytes + self._weights.nbytes

    @property
    def next_row(self) -> int:
        """First raster row that has not been flushed yet."""
        return self._start

    def _grow(self, rows: int) -> None:
        """Enlarge the band to ``rows`` rows, keeping its contents."""
        old_values, old_weights = self._values, self._weights
        self._alloc(rows)
        self._values[:, : old_weights.shape[0]] = old_values
        self._weights[: old_weights.shape[0]] = old_weights

    def add(self, win: Window, values: np.ndarray, weights: np.ndarray) -> None:
        """Accumulate ``values * weights`` and ``weights`` over a window.

        Parts of the window past the bottom or right raster edge (a raster smaller than the
        window) are dropped.

        Args:
            win: The window, in raster pixel coordinates, starting inside the raster.
            values: ``(channels, win.height, win.width)`` predictions for the window.
            weights: ``(win.height, win.width)`` blending weights (e.g. from
                :func:`~rsfusion.inference.blending.weight_map`).

        Raises:
            ValueError: On shape mismatches, a window starting outside the raster, or a window
                touching rows that were already flushed.
        """
        row_end, col_end = check_window(
            win, values.shape, weights.shape, self.channels, self.height, self.width, self._start
        )
        row_off, col_off = int(win.row_off), int(win.col_off)
        if row_end - self._start > self.band_rows:
            self._grow(row_end - self._start)
        h, w = row_end - row_off, col_end - col_off
        rows = slice(row_off - self._start, row_end - self._start)
        cols = slice(col_off, col_end)
        wts = np.asarray(weights[:h, :w], dtype=self.dtype)
        self._values[:, rows, cols] += values[:, :h, :w] * wts
        self._weights[rows, cols] += wts

    def flush(self, up_to_row: int) -> Iterator[Block]:
        """Release the completed rows above ``up_to_row``.

        The band advances immediately (even if the result is not iterated): call this only once
        every window touching those rows has been added, e.g. with the ``row_off`` of the next
        window to be added, or ``height`` at the end.

        Args:
            up_to_row: First row to keep; rows ``[next_row, up_to_row)`` are released. Values
                beyond ``height`` are clipped; values at or before ``next_row`` release nothing.

        Returns:
            An iterator of ``(row_start, block, weight_sum)`` in row order, covering each
            released row exactly once: ``block`` is ``(channels, n_rows, width)`` weighted means,
            ``weight_sum`` is ``(n_rows, width)``. Pixels no window covered have weight 0 and
            value 0.
        """
        stop = min(up_to_row, self.height)
        if stop <= self._start:
            return iter(())
        start, band = self._start, self.band_rows
        n_buf = min(stop - start, band)
        wsum = self._weights[:n_buf].copy()
        block = np.zeros((self.channels, n_buf, self.width), dtype=self.dtype)
        np.divide(self._values[:, :n_buf], wsum, out=block, where=wsum > 0)
        # Shift the rows still in progress to the top of the band and clear the rest.
        keep = band - n_buf
        self._values[:, :keep] = self._values[:, n_buf:].copy()
        self._weights[:keep] = self._weights[n_buf:].copy()
        self._values[:, keep:] = 0
        self._weights[keep:] = 0
        self._start = stop
        return self._blocks((start, block, wsum), start + n_buf, stop, band)

    def _blocks(self, first: Block, empty_from: int, stop: int, chunk: int) -> Iterator[Block]:
        """Yield the computed block, then zero blocks for rows never reached by the band."""
        yield first
        for row in range(empty_from, stop, chunk):
            n = min(chunk, stop - row)
            yield (
                row,
                np.zeros((self.channels, n, self.width), dtype=self.dtype),
                np.zeros((n, self.width), dtype=self.dtype),
            )

    def finish(self) -> Iterator[Block]:
        """Release all remaining rows (``flush(height)``); call after the last window."""
        return self.flush(self.height)


def check_window(
    win: Window,
    values_shape: tuple[int, ...],
    weights_shape: tuple[int, ...],
    channels: int,
    height: int,
    width: int,
    start: int,
) -> tuple[int, int]:
    """The window's last row and column (exclusive) clipped to the raster, after checking the
    shapes of its values and weights and that it starts inside the raster, below row ``start``
    (the first row not flushed yet).

    Raises:
        ValueError: On shape mismatches, a window starting outside the raster, or a window
            touching rows that were already flushed.
    """
    row_off, col_off = int(win.row_off), int(win.col_off)
    win_h, win_w = int(win.height), int(win.width)
    if tuple(values_shape) != (channels, win_h, win_w):
        raise ValueError(
            f"values have shape {tuple(values_shape)}, expected {(channels, win_h, win_w)}"
        )
    if tuple(weights_shape) != (win_h, win_w):
        raise ValueError(f"weights have shape {tuple(weights_shape)}, expected {(win_h, win_w)}")
    if not (0 <= row_off < height and 0 <= col_off < width):
        raise ValueError(
            f"window starts at (row {row_off}, col {col_off}), outside the {height}x{width} raster"
        )
    row_end, col_end = min(row_off + win_h, height), min(col_off + win_w, width)
    if row_off < start:
        raise ValueError(
            f"window at rows {row_off}..{row_end - 1} touches rows "
            f"{row_off}..{min(row_end, start) - 1}, which were already flushed "
            f"(flushed up to row {start - 1}); add windows row-major and flush only "
            "up to the next window's row_off"
        )
    return row_end, col_end
