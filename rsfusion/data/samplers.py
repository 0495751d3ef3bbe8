"""Full-coverage evaluation windows over the tiles of a dataset.

torchgeo's GridGeoSampler anchors windows bottom-left, runs past the top/right edges and yields
nothing for a tile smaller than the window. This sampler walks each tile's own pixel grid with
:func:`rsfusion.inference.windows.plan_windows`: every pixel covered, no window outside a tile
(the last one on each axis is pulled back inside), and a tile smaller than the window still
gets one window (padded by the reader; labels there decode to the ignore index).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler
from torchgeo.datasets.utils import GeoSlice

from rsfusion.data.tiles import Tile
from rsfusion.inference.windows import plan_windows


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
