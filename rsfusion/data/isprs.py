"""ISPRS Vaihingen and Potsdam on torchgeo: orthophoto, DSM or nDSM, and colour-coded labels.

torchgeo's own Vaihingen2D / Potsdam2D load whole tiles and no elevation; these classes are
RasterDatasets over the files a dataset card names, intersected orthophoto first (so the
orthophoto's CRS and resolution rule), with RGB and X kept apart as ``image`` and ``image_x``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.merge
import torch
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from torch import Tensor
from torchgeo.datasets import IntersectionDataset, RasterDataset
from torchgeo.datasets.utils import GeoSlice

from rsfusion.catalog import DatasetCard, load_card
from rsfusion.data.archives import where_from
from rsfusion.data.checks import check_label_colours
from rsfusion.data.labels import PaletteDecoder
from rsfusion.data.normalise import XNorm
from rsfusion.data.tiles import GeoRaster, Tile, TileError, find_tiles
from rsfusion.data.tilestore import TileStore, store_bytes
from rsfusion.errors import UnknownNameError

Sample = dict[str, Any]


class _RasterList(RasterDataset):
    """A RasterDataset over an explicit list of sources (paths or ``vrt://`` URLs).

    Reads use nearest resampling: windows lie on the orthophoto's pixel grid, and a query a
    hair (~1e-11 px) off it would make GDAL's bilinear resampling blend neighbours (and spread
    nodata holes into valid cells). Only X rasters aligned from another grid interpolate.
    """

    filename_glob = "*"

    @property
    def resampling(self) -> Resampling:
        return Resampling.nearest

    def __init__(self, rasters: Sequence[GeoRaster], cache: bool = True) -> None:
        grid = rasters[0].grid
        self.rasters = {r.source: r for r in rasters}
        super().__init__(
            paths=[r.source for r in rasters],
            crs=grid.crs,
            res=(abs(grid.transform.a), abs(grid.transform.e)),
            cache=cache,
        )

    def _bounds(
        self, query: GeoSlice
    ) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
        x, y, _ = self._disambiguate_slice(query)
        return (x.start, y.start, x.stop, y.stop), (x.step, y.step)

    def hits(self, query: GeoSlice) -> list[str]:
        """Sources whose footprint intersects a query."""
        x, y, _ = self._disambiguate_slice(query)
        return list(self.index.cx[x.start : x.stop, y.start : y.stop].filepath)


class OrthophotoRaster(_RasterList):
    """Orthophoto tiles; sample key ``image`` (float32 in the stored units, e.g. 0-255).

    With ``raw`` and every file stored as uint8, ``image`` stays uint8 (a quarter of the bytes
    through collation, pinned memory and the host-to-device copy); cast it to float32 on the
    device before augmenting or normalising: the values are the same, bit for bit.
    """

    is_image = True

    def __init__(self, rasters: Sequence[GeoRaster], cache: bool = True, raw: bool = False):
        self.raw = raw and all(_stored_dtype(r.source) == "uint8" for r in rasters)
        super().__init__(rasters, cache)

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self.raw else torch.float32


class ElevationRaster(_RasterList):
    """DSM / nDSM tiles, each normalised by its own statistics; sample key ``image_x``.

    Nodata, NaN and +-inf pixels become 0 after normalisation (never reach the model as such).
    """

    is_image = True

    def __init__(
        self,
        rasters: Sequence[GeoRaster],
        x_norm: XNorm,
        cache: bool = True,
        interpolate: bool = False,
    ) -> None:
        self.x_norm = x_norm
        self.interpolate = interpolate
        super().__init__(rasters, cache)

    @property
    def resampling(self) -> Resampling:
        return Resampling.bilinear if self.interpolate else Resampling.nearest

    def _merge_files(
        self, filepaths: Sequence[str], query: GeoSlice, band_indexes: Sequence[int] | None = None
    ) -> Tensor:
        bounds, res = self._bounds(query)
        out: np.ndarray | None = None
        for fp in filepaths:
            handle = self._cached_load_warp_file(fp) if self.cache else self._load_warp_file(fp)
            arr, _ = rasterio.merge.merge(
                [handle],
                bounds,
                res,
                nodata=np.nan,
                dtype="float32",
                indexes=band_indexes,
                resampling=self.resampling,
            )
            offset, scale = self.x_norm.affine(fp)
            arr = (arr - offset) / scale
            out = arr if out is None else np.where(np.isfinite(out), out, arr)
        assert out is not None
        return torch.from_numpy(
            np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
        )

    def __getitem__(self, query: GeoSlice) -> Sample:
        sample = super().__getitem__(query)
        sample["image_x"] = sample.pop("image")
        return sample


class LabelRaster(_RasterList):
    """Colour-coded label tiles decoded to class ids; sample key ``mask`` (long)."""

    is_image = False

    def __init__(self, rasters: Sequence[GeoRaster], decoder: PaletteDecoder, cache: bool = True):
        self.decoder = decoder
        super().__init__(rasters, cache)

    def __getitem__(self, query: GeoSlice) -> Sample:
        sample = super().__getitem__(query)
        mask = sample["mask"]
        if mask.ndim == 2:  # single-band labels already hold class ids
            return sample
        (xmin, _, _, ymax), _ = self._bounds(query)
        files = ", ".join(str(self.rasters[s].path) for s in self.hits(query))
        where = f"labels {files} (window with top-left corner x={xmin:.3f}, y={ymax:.3f})"
        sample["mask"] = self.decoder(mask, source=where)
        return sample


def _stored_dtype(source: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(source) as src:
            return str(src.dtypes[0])


def _warn_georef(tiles: Sequence[Tile], card: DatasetCard) -> None:
    notes = {}
    for tile in tiles:
        for raster in (tile.rgb, tile.x, tile.label, tile.eroded):
            if raster is not None and raster.how in ("synthetic", "assumed_crs"):
                notes.setdefault(raster.how, set()).add(tile.tile_id)
    if "synthetic" in notes:
        warnings.warn(
            f"{card.name}: tiles {sorted(notes['synthetic'])} have no CRS or transform; each "
            "was given its own synthetic extent (their outputs will not land on a map).",
            UserWarning,
            stacklevel=3,
        )
    if "assumed_crs" in notes:
        warnings.warn(
            f"{card.name}: tiles {sorted(notes['assumed_crs'])} carry a transform (or world "
            f"file) but no CRS; assuming {card.assumed_crs} from the dataset card.",
            UserWarning,
            stacklevel=3,
        )


class ISPRSDataset(IntersectionDataset):
    """Orthophoto & X & labels of one ISPRS split, as one torchgeo GeoDataset.

    Args:
        root: the dataset folder (official archives extracted into it).
        card: dataset card name or object (``vaihingen``, ``potsdam``).
        split: split name in the preset ('train', 'test'); ignored when ``tiles`` is given.
        tiles: explicit tile ids (override the split).
        split_preset: named split preset of the card (default: the card's default).
        rgb: the card modality used as the RGB stream (Potsdam: 'rgb', 'irrg' or 'rgbir').
        x: the card modality used as X ('dsm', 'ndsm'), or None for RGB only.
        labels: 'full' or 'eroded' (boundary pixels ignored) labels; falls back to the other.
        x_norm: X normalisation (default: per-raster min-max).
        transforms: applied to each sample.
        align_x: resample X rasters on another grid or CRS onto the orthophoto's (else refused).
        check_labels: scan every label raster's colours once before use (streamed).
        rgb_raw: ``image`` in the orthophotos' stored dtype when that is uint8 (cast to float32
            on the device; see :class:`OrthophotoRaster`); float32 otherwise.

    :meth:`hold_in_memory` reads every raster once and serves the samples from memory, the same
    samples bit for bit (:mod:`rsfusion.data.tilestore`).
    """

    def __init__(
        self,
        root: str | Path,
        card: str | DatasetCard = "vaihingen",
        split: str = "train",
        tiles: Sequence[str] | None = None,
        split_preset: str | None = None,
        rgb: str = "rgb",
        x: str | None = "dsm",
        labels: str = "full",
        x_norm: XNorm | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        align_x: bool = False,
        check_labels: bool = True,
        rgb_raw: bool = False,
    ) -> None:
        self.card = card if isinstance(card, DatasetCard) else load_card(card)
        wanted = [str(t) for t in tiles] if tiles is not None else self._split(split, split_preset)
        found, missing = find_tiles(self.card, root, wanted, rgb=rgb, x=x, align_x=align_x)
        if not found:
            first = self.card.format_pattern(self.card.modality(rgb).patterns[0], wanted[0])
            hint = where_from(self.card, Path(root), rgb) or (
                " Point data.root at the folder the official archives were extracted into."
            )
            if _old_demo_scene(self.card, Path(root), wanted):
                hint = (
                    " This is a demo scene written before its validation area was added: run "
                    f"make_demo.py --out {root} again (the other areas come out the same)."
                )
            raise TileError(
                f"no tile of {self.card.name} split '{split}' ({len(wanted)} tiles) under {root}: "
                f"e.g. {Path(root) / first} does not exist.{hint}"
            )
        if missing:
            warnings.warn(
                f"{self.card.name} split '{split}': {len(missing)} of {len(wanted)} tiles are "
                f"not under {root} and are left out: {missing}",
                UserWarning,
                stacklevel=2,
            )
        _warn_georef(found, self.card)
        self.tiles = found
        self.x_modality = x
        self.x_norm = x_norm or XNorm()
        for tile in found:  # statistics once, here, before any DataLoader worker forks
            if tile.x is not None:
                self.x_norm.affine(tile.x.source)
        decoder = PaletteDecoder(self.card.palette, self.card.ignore_index)
        label_rasters = [t.label_for(labels) for t in found]
        if check_labels and self.card.label_encoding == "rgb":
            for raster in label_rasters:
                if raster is not None:
                    check_label_colours(raster, self.card.palette)
        self.orthophoto = OrthophotoRaster([t.rgb for t in found], raw=rgb_raw)
        self.elevation: ElevationRaster | None = None
        dataset: Any = self.orthophoto
        if x is not None:
            x_rasters = [t.x for t in found if t.x is not None]
            self.elevation = ElevationRaster(x_rasters, self.x_norm, interpolate=align_x)
            dataset = IntersectionDataset(dataset, self.elevation)
        self.label_raster = LabelRaster([r for r in label_rasters if r is not None], decoder)
        super().__init__(dataset, self.label_raster, transforms=transforms)
        self.store: TileStore | None = None

    def memory_need(self) -> int:
        """Bytes :meth:`hold_in_memory` would hold (from the files' headers, nothing read)."""
        parts = [("rgb", self.orthophoto), ("x", self.elevation), ("labels", self.label_raster)]
        return store_bytes(
            [(role, str(fp)) for role, ds in parts if ds is not None for fp in ds.index.filepath]
        )

    def hold_in_memory(self) -> TileStore:
        """Read every raster once into memory; samples are then cut from it (the same samples
        bit for bit; queries it cannot serve exactly still go through torchgeo)."""
        if self.store is None:
            self.store = TileStore(self.orthophoto, self.elevation, self.label_raster)
        return self.store

    def __getitem__(self, query: Any) -> Sample:
        """The window's sample, with per-sample metadata ``dataset`` (card) and ``modality``
        (the X modality, "" for none) that recipes such as SegRGB-X read."""
        sample = self.store(query) if self.store is not None else None
        if sample is None:
            sample = super().__getitem__(query)
        elif self.transforms is not None:
            sample = self.transforms(sample)
        sample["dataset"] = self.card.name
        sample["modality"] = self.x_modality or ""
        return sample

    def _split(self, split: str, preset: str | None) -> list[str]:
        parts = self.card.split(preset)
        if split not in parts:
            raise UnknownNameError(
                f"split preset '{preset or self.card.default_split}' of {self.card.name} has no "
                f"split '{split}'; it has {sorted(parts)}"
            )
        return list(parts[split])


class Vaihingen(ISPRSDataset):
    """ISPRS Vaihingen: IRRG orthophoto (9 cm) + DSM; see data_catalog/vaihingen.yaml."""

    def __init__(self, root: str | Path, **kwargs: Any) -> None:
        super().__init__(root, card="vaihingen", **kwargs)


class Potsdam(ISPRSDataset):
    """ISPRS Potsdam: RGB / IRRG / RGBIR orthophoto (5 cm) + DSM or nDSM."""

    def __init__(self, root: str | Path, **kwargs: Any) -> None:
        super().__init__(root, card="potsdam", **kwargs)


def _old_demo_scene(card: DatasetCard, root: Path, wanted: Sequence[str]) -> bool:
    """``root`` holds the demo's training tiles but not its validation area, which is asked for
    (a scene made by make_demo.py before the demo had a validation area of its own)."""
    from rsfusion.data.demo import DEMO_TRAIN_AREAS, DEMO_VAL_AREAS

    if card.name != "vaihingen" or set(wanted) - {str(a) for a in DEMO_VAL_AREAS}:
        return False
    found, _ = find_tiles(card, root, [str(a) for a in DEMO_TRAIN_AREAS], rgb="rgb", x=None)
    return len(found) == len(DEMO_TRAIN_AREAS)
