"""Full-coverage evaluation windows over the tiles of a dataset.

torchgeo's GridGeoSampler anchors windows bottom-left, runs past the top/right edges and yields
nothing for a tile smaller than the window. This sampler walks each tile's own pixel grid with
:func:`rsfusion.data.windows.plan_windows`: every pixel covered, no window outside a tile
(the last one on each axis is pulled back inside), and a tile smaller than the window still
gets one window (padded by the reader; labels there decode to the ignore index).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Sampler
from torchgeo.datasets.utils import GeoSlice
from torchgeo.samplers import RandomGeoSampler
from torchgeo.samplers.utils import get_random_bounding_box

from rsfusion.data.tiles import Tile
from rsfusion.data.windows import plan_windows
from rsfusion.errors import TileError


class TileGridSampler(Sampler[GeoSlice]):
    """Yield pixel-aligned geo windows covering every tile completely.

    Args:
        tiles: the tiles (their orthophoto grid defines the pixel grid).
        res: the dataset's (x, y) resolution in CRS units.
        window: window size in pixels.
        stride: step between windows in pixels (default: the window, no overlap).
    """

    def __init__(
        self,
        tiles: Sequence[Tile],
        res: tuple[float, float],
        window: int,
        stride: int | None = None,
    ) -> None:
        self.windows: list[tuple[str, GeoSlice]] = []
        rx, ry = res
        for tile in tiles:
            left, bottom, right, top = tile.rgb.grid.bounds
            height = round((top - bottom) / ry)
            width = round((right - left) / rx)
            for win in plan_windows(height, width, window, stride):
                xmin = left + win.col_off * rx
                ymax = top - win.row_off * ry
                query = (
                    slice(xmin, xmin + win.width * rx, rx),
                    slice(ymax - win.height * ry, ymax, ry),
                    slice(None, None, None),
                )
                self.windows.append((tile.tile_id, query))

    def __iter__(self) -> Iterator[GeoSlice]:
        for _, query in self.windows:
            yield query

    def __len__(self) -> int:
        return len(self.windows)


def _too_small(dataset: Any, size: int | tuple[int, int], res: Any, index: Any) -> str:
    """The error for training tiles smaller than the window (torchgeo's RandomGeoSampler
    drops them silently, and fails in ``torch.multinomial`` when none is left)."""
    win_h, win_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    small = [
        f"{t.tile_id} ({t.rgb.grid.width}x{t.rgb.grid.height} px)"
        for t in getattr(dataset, "tiles", [])
        if t.rgb.grid.width < win_w or t.rgb.grid.height < win_h
    ]
    if not small:  # a footprint shrunk by the X raster's or labels' extent
        rx, ry = res
        for geom in index.geometry:
            xmin, ymin, xmax, ymax = geom.bounds
            w, h = round((xmax - xmin) / rx), round((ymax - ymin) / ry)  # px
            if w < win_w or h < win_h:
                small.append(f"an area of {w}x{h} px at x={xmin:.3f}, y={ymax:.3f}")
    smallest = min(
        (min(t.rgb.grid.width, t.rgb.grid.height) for t in getattr(dataset, "tiles", [])),
        default=None,
    )
    fix = f"set data.window to at most {smallest}, or " if smallest else ""
    return (
        f"training tile(s) {', '.join(small)} smaller than the training window of {win_w}x{win_h} "
        f"px (data.window); windows must lie inside a tile: {fix}leave those tiles out "
        "(data.train_tiles)"
    )


class SeededRandomGeoSampler(RandomGeoSampler):
    """torchgeo's RandomGeoSampler with every draw from its own generator.

    A training tile smaller than the window is refused with a :class:`TileError` naming it,
    its size and the window (torchgeo would leave it out silently, or fail deep inside
    ``torch.multinomial`` when no tile is left).

    torchgeo 0.8.1 picks the tile with ``torch.multinomial`` on the global RNG and only the
    window inside it from ``generator``; here both come from ``generator``, so one seed gives
    one sequence of windows whatever else consumed random numbers. With ``seed`` set, each
    epoch's windows depend only on (seed, epoch), so a run resumed at an epoch boundary sees
    exactly the windows of an uninterrupted one. ``epoch_fn`` reads the epoch at iteration time
    (e.g. the trainer's ``current_epoch``): Lightning 2.6 calls ``set_epoch`` one too high on a
    resumed run, so its value is only the fallback.
    """

    def __init__(
        self,
        dataset: Any,
        size: int | tuple[int, int],
        *args: Any,
        seed: int | None = None,
        epoch_fn: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, size, *args, **kwargs)
        if len(self.bounds) < len(self.index):
            self._keep_exact_fits(dataset, size)
        self.seed = seed
        self.epoch = 0
        self.epoch_fn = epoch_fn

    def _keep_exact_fits(self, dataset: Any, size: int | tuple[int, int]) -> None:
        """Refuse footprints smaller than the window; keep those torchgeo dropped only because
        their size equals the window's up to float rounding."""
        win_h, win_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        rx, ry = self.res
        kept = {b for b in self.bounds}
        for hit in range(len(self.index)):
            xmin, ymin, xmax, ymax = self.index.geometry.iloc[hit].bounds
            if round((xmax - xmin) / rx) < win_w or round((ymax - ymin) / ry) < win_h:
                raise TileError(_too_small(dataset, size, self.res, self.index))
            if (xmin, ymin, xmax, ymax) in kept:
                continue
            interval = self.index.index[hit]
            self.bounds.append((xmin, ymin, xmax, ymax))
            self.intervals.append(pd.Interval(interval.left, interval.right))
            self.areas = torch.cat([self.areas, torch.tensor([(xmax - xmin) * (ymax - ymin)])])

    def set_epoch(self, epoch: int) -> None:
        """Select the window stream of ``epoch`` (when a seed was given)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[GeoSlice]:
        if self.seed is not None:
            epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
            self.generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        for _ in range(len(self)):
            idx = int(torch.multinomial(self.areas, 1, generator=self.generator))
            box = get_random_bounding_box(self.bounds[idx], self.size, self.res, self.generator)
            interval = self.intervals[idx]
            yield *box, slice(interval.left, interval.right)
