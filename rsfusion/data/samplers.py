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

import torch
from torch.utils.data import Sampler
from torchgeo.datasets.utils import GeoSlice
from torchgeo.samplers import RandomGeoSampler
from torchgeo.samplers.utils import get_random_bounding_box

from rsfusion.data.tiles import Tile
from rsfusion.data.windows import plan_windows


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


class SeededRandomGeoSampler(RandomGeoSampler):
    """torchgeo's RandomGeoSampler with every draw from its own generator.

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
        *args: Any,
        seed: int | None = None,
        epoch_fn: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.epoch = 0
        self.epoch_fn = epoch_fn

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
