"""Tests for rsfusion.data.windows."""

import math
import random

import numpy as np
import pytest

from rsfusion.data.windows import batched, plan_windows, window_padding


def _expected_count(size: int, window: int, stride: int) -> int:
    return 1 if size <= window else math.ceil((size - window) / stride) + 1


def _check_plan(height: int, width: int, window, stride=None) -> None:
    """Assert every guarantee of plan_windows for one configuration."""
    win_h, win_w = (window, window) if isinstance(window, int) else window
    if stride is None:
        stride_h, stride_w = win_h, win_w
    else:
        stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride
    wins = plan_windows(height, width, window, stride)

    assert len(wins) == _expected_count(height, win_h, stride_h) * _expected_count(
        width, win_w, stride_w
    )
    offsets = [(int(w.row_off), int(w.col_off)) for w in wins]
    assert offsets == sorted(set(offsets)), "not sorted row-major or has duplicates"

    count = np.zeros((height, width), dtype=np.int32)
    for w in wins:
        assert (int(w.height), int(w.width)) == (win_h, win_w)
        assert 0 <= w.row_off < height and 0 <= w.col_off < width
        # A window passes the edge only on an axis where the raster is smaller than the window.
        assert w.row_off + w.height <= height or (height < win_h and w.row_off == 0)
        assert w.col_off + w.width <= width or (width < win_w and w.col_off == 0)
        count[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
        pad_bottom, pad_right = window_padding(w, height, width)
        assert pad_bottom == max(0, win_h - height) and pad_right == max(0, win_w - width)
    assert (count >= 1).all(), "some pixels are not covered"

    # The last window on each axis ends flush with the edge (or starts at 0 on a small axis).
    last_row = max(int(w.row_off) for w in wins)
    last_col = max(int(w.col_off) for w in wins)
    assert last_row + win_h == height if height >= win_h else last_row == 0
    assert last_col + win_w == width if width >= win_w else last_col == 0
    # Interior windows step by exactly the stride.
    rows = sorted({int(w.row_off) for w in wins})
    assert all(b - a == stride_h for a, b in zip(rows[:-2], rows[1:-1], strict=True))


@pytest.mark.parametrize(
    ("height", "width", "window", "stride"),
    [
        (1, 1, 256, None),
        (255, 257, 256, None),
        (1000, 37, 64, 48),
        (256, 256, 256, None),
        (512, 768, 256, None),
        (512, 768, 256, 128),
        (300, 200, (64, 32), (60, 16)),
        (7, 1000, 8, 3),
        (65, 65, 64, 1),
    ],
)
def test_plan_windows_guarantees(height: int, width: int, window, stride) -> None:
    _check_plan(height, width, window, stride)


def test_plan_windows_exact_values() -> None:
    wins = plan_windows(255, 257, 256)
    assert [(w.row_off, w.col_off, w.height, w.width) for w in wins] == [
        (0, 0, 256, 256),
        (0, 1, 256, 256),
    ]
    assert window_padding(wins[0], 255, 257) == (1, 0)
    cols = sorted({w.col_off for w in plan_windows(1000, 37, 64, 48)})
    assert cols == [0]
    rows = sorted({w.row_off for w in plan_windows(1000, 37, 64, 48)})
    assert rows[:3] == [0, 48, 96] and rows[-1] == 1000 - 64
    assert len(plan_windows(512, 768, 256)) == 6  # exact multiples: no extra window


def test_plan_windows_property_random_sizes() -> None:
    """Property test over random sizes (hypothesis is not installed, so a seeded grid)."""
    rng = random.Random(1234)
    for _ in range(150):
        win = (rng.randint(1, 40), rng.randint(1, 40))
        stride = (rng.randint(1, win[0]), rng.randint(1, win[1]))
        _check_plan(rng.randint(1, 120), rng.randint(1, 120), win, stride)


@pytest.mark.parametrize(
    ("window", "stride", "match"),
    [
        (0, None, "window must be > 0"),
        (-4, None, "window must be > 0"),
        (64, 0, "stride must be > 0"),
        (64, 65, r"stride \(65, 65\) is larger than window \(64, 64\).*stride <= the window"),
        ((64, 32), (32, 48), "larger than window"),
        ((64, 32, 1), None, "pair"),
    ],
)
def test_plan_windows_rejects_bad_arguments(window, stride, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_windows(100, 100, window, stride)


def test_plan_windows_rejects_empty_raster() -> None:
    with pytest.raises(ValueError, match="raster size"):
        plan_windows(0, 10, 4)


def test_batched() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 2)) == []
    wins = plan_windows(100, 100, 32)
    assert [w for batch in batched(wins, 5) for w in batch] == wins
    with pytest.raises(ValueError, match="batch_size"):
        batched(wins, 0)


@pytest.mark.parametrize(
    ("height", "width", "window", "stride"),
    [(5, 7, 4, 3), (100, 37, 16, 12), (3, 3, 8, None), (64, 64, (16, 8), (16, 4))],
)
def test_window_grid_is_the_plan_lazily(height, width, window, stride):
    from rsfusion.data.windows import window_grid

    grid = window_grid(height, width, window, stride)
    plan = plan_windows(height, width, window, stride)
    assert len(grid) == len(plan) and list(grid) == plan
    assert [grid[i] for i in range(len(plan))] == plan and grid[-1] == plan[-1]
    assert grid[1:3] == plan[1:3]
    with pytest.raises(IndexError):
        grid[len(plan)]


def test_a_declared_huge_raster_is_planned_in_rows_and_columns_only():
    import tracemalloc

    from rsfusion.data.windows import window_grid

    tracemalloc.start()
    grid = window_grid(10**6, 10**6, 512, 384)  # what a 276-byte VRT may declare
    first = next(iter(grid))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(grid) == 2604**2 and (first.row_off, first.col_off) == (0, 0)
    assert peak < 1_000_000  # bytes: two lists of 2604 offsets, not 6.8 million windows
    with pytest.raises(ValueError, match="stride"):
        window_grid(10, 10, 4, 5)


@pytest.mark.parametrize(
    ("height", "width", "block", "budget"),
    [(70, 90, (70, 90), 500), (70, 90, (1, 90), 500), (70, 90, (32, 32), 500),
     (70, 90, (32, 32), 5000), (5, 4000, (5, 4000), 1000), (64, 64, (16, 16), 10**6),
     (9, 9, (9, 9), 1)],
)  # fmt: skip
def test_bounded_windows_tile_the_raster_within_the_budget(height, width, block, budget):
    from rsfusion.data.windows import bounded_windows

    wins = list(bounded_windows(height, width, block, budget))
    count = np.zeros((height, width), np.int32)
    for w in wins:
        assert 0 < w.width * w.height <= budget
        count[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert (count == 1).all()
    if block[0] * width <= budget:  # whole block rows across the width
        assert all(w.row_off % block[0] == 0 and w.width == width for w in wins)
