"""Tests for rsfusion.inference.accumulator."""

import numpy as np
import pytest
from rasterio.windows import Window

from rsfusion.data.windows import batched, plan_windows
from rsfusion.inference.accumulator import RowBandAccumulator
from rsfusion.inference.blending import edge_aware, weight_map


def _naive(height, width, channels, wins, values, weights):
    """Whole-array weighted average (the reference the streamed result must match)."""
    acc = np.zeros((channels, height, width))
    wsum = np.zeros((height, width))
    for win, v, w in zip(wins, values, weights):
        r, c = int(win.row_off), int(win.col_off)
        h, wd = min(int(win.height), height - r), min(int(win.width), width - c)
        acc[:, r : r + h, c : c + wd] += v[:, :h, :wd] * w[:h, :wd]
        wsum[r : r + h, c : c + wd] += w[:h, :wd]
    return acc / wsum, wsum


def _stream(height, width, channels, window, overlap, batch_size, seed=0):
    """Stream random predictions through the accumulator; return (rows, blocks, naive, peak)."""
    rng = np.random.default_rng(seed)
    wins = plan_windows(height, width, window, window - overlap)
    base = weight_map(window, overlap, "cosine")
    values = [rng.normal(size=(channels, window, window)).astype(np.float32) for _ in wins]
    weights = [edge_aware(base, w, height, width) for w in wins]
    acc = RowBandAccumulator(height, width, channels, window_rows=window)
    out, peak, i = [], acc.nbytes, 0
    for batch in batched(wins, batch_size):
        for win in batch:
            acc.add(win, values[i], weights[i])
            i += 1
            peak = max(peak, acc.nbytes)
        nxt = int(wins[i].row_off) if i < len(wins) else height
        out.extend(acc.flush(nxt))
    out.extend(acc.finish())
    return out, _naive(height, width, channels, wins, values, weights), peak


@pytest.mark.parametrize("batch_size", [1, 4, 7, 1000])
def test_streamed_equals_naive_weighted_average(batch_size):
    out, (ref, ref_w), _ = _stream(97, 131, 3, window=32, overlap=8, batch_size=batch_size)
    got = np.concatenate([b for _, b, _ in out], axis=1)
    got_w = np.concatenate([w for _, _, w in out], axis=0)
    assert got.shape == (3, 97, 131) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_w, ref_w, rtol=1e-5)


def test_every_row_yielded_once_in_order():
    out, _, _ = _stream(97, 131, 2, window=32, overlap=8, batch_size=3)
    rows = [r for start, block, _ in out for r in range(start, start + block.shape[1])]
    assert rows == list(range(97))
    assert all(block.shape[1] == w.shape[0] > 0 for _, block, w in out)


def test_memory_does_not_grow_with_height():
    # Width 96, window 32, stride 24: 4 windows per window row.
    _, _, peak_small = _stream(64, 96, 4, window=32, overlap=8, batch_size=3)
    peak_big = _stream_peak_only(4096, 96, 4, window=32, overlap=8, batch_size=3)
    assert peak_small == peak_big
    # Batches of 3 span 2 window rows: window + stride rows of values (4 ch) + weights, float32.
    assert peak_big == (4 + 1) * (32 + 24) * 96 * 4
    # Batches that end on a window row keep the band at window_rows rows.
    assert _stream_peak_only(4096, 96, 4, window=32, overlap=8, batch_size=4) == 5 * 32 * 96 * 4


def _stream_peak_only(height, width, channels, window, overlap, batch_size):
    """Like _stream, with constant values and no reference (fast for tall rasters)."""
    wins = plan_windows(height, width, window, window - overlap)
    base = weight_map(window, overlap, "cosine")
    values = np.ones((channels, window, window), dtype=np.float32)
    acc = RowBandAccumulator(height, width, channels, window_rows=window)
    peak, i, rows = acc.nbytes, 0, 0
    for batch in batched(wins, batch_size):
        for win in batch:
            acc.add(win, values, edge_aware(base, win, height, width))
            i += 1
            peak = max(peak, acc.nbytes)
        nxt = int(wins[i].row_off) if i < len(wins) else height
        for _, block, _ in acc.flush(nxt):
            np.testing.assert_allclose(block, 1.0, rtol=1e-6)
            rows += block.shape[1]
    assert rows == height
    return peak


def test_band_grows_for_batches_spanning_window_rows_but_not_with_height():
    # Batch of 100 windows spans several window rows: the band grows, but equally for both.
    small = _stream_peak_only(2000, 64, 2, window=32, overlap=8, batch_size=100)
    big = _stream_peak_only(8000, 64, 2, window=32, overlap=8, batch_size=100)
    assert small == big > (2 + 1) * 32 * 64 * 4


def test_error_when_adding_into_flushed_rows():
    acc = RowBandAccumulator(100, 50, 1, window_rows=32)
    w = np.ones((32, 32), dtype=np.float32)
    v = np.ones((1, 32, 32), dtype=np.float32)
    acc.add(Window(0, 0, 32, 32), v, w)
    list(acc.flush(24))
    with pytest.raises(ValueError, match=r"rows 10\.\.23.*already flushed"):
        acc.add(Window(0, 10, 32, 32), v, w)
    acc.add(Window(0, 24, 32, 32), v, w)  # starting at the first unflushed row is fine


def test_flush_advances_even_if_not_iterated_and_bad_shapes():
    acc = RowBandAccumulator(10, 10, 2, window_rows=4)
    acc.flush(3)
    assert acc.next_row == 3
    with pytest.raises(ValueError, match="values have shape"):
        acc.add(Window(0, 3, 4, 4), np.ones((1, 4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="outside"):
        acc.add(Window(0, 10, 4, 4), np.ones((2, 4, 4)), np.ones((4, 4)))


def test_raster_smaller_than_window_is_clipped():
    height, width = 20, 13
    wins = plan_windows(height, width, 32, 24)
    assert len(wins) == 1
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3, 32, 32)).astype(np.float32)
    w = edge_aware(weight_map(32, 8, "none"), wins[0], height, width)
    acc = RowBandAccumulator(height, width, 3, window_rows=32)
    acc.add(wins[0], v, w)
    assert acc.band_rows == height
    out = list(acc.finish())
    assert [r for r, _, _ in out] == [0]
    np.testing.assert_allclose(out[0][1], v[:, :height, :width], rtol=1e-6)
    np.testing.assert_array_equal(out[0][2], 1.0)


def test_uncovered_rows_have_zero_weight():
    acc = RowBandAccumulator(50, 8, 1, window_rows=4)
    acc.add(Window(0, 0, 8, 4), np.full((1, 4, 8), 2.0), np.ones((4, 8)))
    out = list(acc.finish())
    assert [(r, b.shape[1]) for r, b, _ in out] == [(0, 4)] + [(r, 4) for r in range(4, 50, 4)][
        :-1
    ] + [(48, 2)]
    np.testing.assert_array_equal(out[0][1], 2.0)
    assert all((w == 0).all() and (b == 0).all() for _, b, w in out[1:])
