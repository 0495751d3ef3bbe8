"""Lightning datamodule for the ISPRS datasets, driven by the config's ``data`` section.

Random windows for training (torchgeo RandomGeoSampler), full-coverage windows for validation
and test (:class:`TileGridSampler`), Kornia augmentation and per-modality normalisation on the
device in ``on_after_batch_transfer`` (torchgeo's GeoDataModule does the wiring).
"""

from __future__ import annotations

from typing import Any

from torchgeo.datamodules import GeoDataModule

from rsfusion.catalog import DatasetCard, load_card
from rsfusion.config import DataConfig
from rsfusion.data.augment import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    BatchTransform,
    Normalise,
    PairedAugment,
)
from rsfusion.data.isprs import ISPRSDataset
from rsfusion.data.normalise import XNorm
from rsfusion.data.raster_facts import inputs_record
from rsfusion.data.samplers import SeededRandomGeoSampler, TileGridSampler
from rsfusion.data.tiles import find_tiles
from rsfusion.errors import UserError


def rgb_normalise(mode: str) -> Normalise:
    """RGB normalisation by name: 'imagenet' (most pre-trained backbones), 'tf' ((v - 127) /
    128, TensorFlow-converted weights such as EfficientNet-Lite0) or 'unit' (0-255 -> 0-1)."""
    if mode == "imagenet":
        return Normalise(IMAGENET_MEAN_255, IMAGENET_STD_255)
    if mode == "tf":
        return Normalise([127.0], [128.0])
    return Normalise([0.0], [255.0])


class ISPRSDataModule(GeoDataModule):
    """Train / val / test splits of an ISPRS card from one :class:`DataConfig`.

    Validation uses the split's test tiles unless ``data.val_tiles`` names others.
    """

    def __init__(self, cfg: DataConfig, seed: int = 42) -> None:
        super().__init__(
            ISPRSDataset,
            batch_size=cfg.batch_size,
            patch_size=cfg.window,
            length=cfg.samples_per_epoch,
            num_workers=cfg.num_workers,
        )
        if cfg.root is None:
            raise ValueError("data.root is not set: pass --set data.root=/path/to/dataset")
        self.cfg = cfg
        self.seed = seed
        self.card: DatasetCard = load_card(cfg.card)
        self.x_norm: XNorm | None = None
        self._inputs: dict[str, Any] | None = None
        self.val_batch_size = self.test_batch_size = cfg.eval_batch_size or cfg.batch_size
        normalise = rgb_normalise(cfg.rgb_norm)
        aug = cfg.augment
        augment = PairedAugment(
            hflip=aug.hflip,
            vflip=aug.vflip,
            rot90=aug.rot90,
            scale=tuple(aug.scale) if aug.scale else None,
            color_jitter=aug.color_jitter,
            gaussian_blur=aug.gaussian_blur,
            ignore_index=self.card.ignore_index,
        )
        self.train_aug = BatchTransform(augment, normalise)
        self.aug = BatchTransform(None, normalise)

    def tiles_of(self, split: str) -> list[str]:
        """Tile ids of 'train', 'val' or 'test' (config lists override the card's preset)."""
        explicit = {
            "train": self.cfg.train_tiles,
            "val": self.cfg.val_tiles,
            "test": self.cfg.test_tiles,
        }[split]
        if explicit is not None:
            return [str(t) for t in explicit]
        preset = self.card.split(self.cfg.split)
        return list(preset["train" if split == "train" else "test"])

    def fit_x_norm(self) -> XNorm:
        """X normalisation; the 'dataset' mode streams the training rasters once."""
        if self.x_norm is None:
            sources: list[str] = []
            if self.cfg.x_norm == "dataset" and self.cfg.x is not None:
                tiles, _ = find_tiles(
                    self.card,
                    self.cfg.root,
                    self.tiles_of("train"),
                    self.cfg.rgb,
                    self.cfg.x,
                    align_x=self.cfg.align_x,
                )
                sources = [t.x.source for t in tiles if t.x is not None]
            self.x_norm = XNorm.fit(self.cfg.x_norm, sources, self.cfg.x_scale)
        return self.x_norm

    def _dataset(self, split: str) -> ISPRSDataset:
        return ISPRSDataset(
            self.cfg.root,
            card=self.card,
            split=split,
            tiles=self.tiles_of(split),
            rgb=self.cfg.rgb,
            x=self.cfg.x,
            labels=self.cfg.labels if split == "train" else self.cfg.eval_labels,
            x_norm=self.fit_x_norm(),
            align_x=self.cfg.align_x,
        )

    def _grid_sampler(self, dataset: ISPRSDataset) -> TileGridSampler:
        return TileGridSampler(dataset.tiles, dataset.res, self.cfg.window, self.cfg.eval_stride)

    def _current_epoch(self) -> int:
        trainer = self.trainer
        return trainer.current_epoch if trainer is not None else 0

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_dataset = self._dataset("train")
            self.train_sampler = SeededRandomGeoSampler(
                self.train_dataset,
                self.cfg.window,
                self.cfg.samples_per_epoch,
                seed=self.seed,
                epoch_fn=self._current_epoch,
            )
        if stage in ("fit", "validate"):
            self.val_dataset = self._dataset("val")
            self.val_sampler = self._grid_sampler(self.val_dataset)
        if stage == "test":
            self.test_dataset = self._dataset("test")
            self.test_sampler = self._grid_sampler(self.test_dataset)

    def describe(self) -> dict[str, Any]:
        """What prediction needs to preprocess inputs exactly as in training."""
        rgb = self.card.modality(self.cfg.rgb)
        x = self.card.modality(self.cfg.x) if self.cfg.x else None
        return {
            "card": self.card.name,
            "rgb_modality": self.cfg.rgb,
            "rgb_bands": list(rgb.bands),
            "x_modality": self.cfg.x,
            "x_bands": list(x.bands) if x else [],
            "rgb_norm": rgb_normalise(self.cfg.rgb_norm).describe(),
            "x_norm": self.fit_x_norm().to_dict(),
            "classes": self.card.class_names,
            "palette": [list(c) for c in self.card.palette],
            "ignore_index": self.card.ignore_index,
            "window": self.cfg.window,
            "inputs": self.inputs_record(),
        }

    def inputs_record(self) -> dict[str, Any]:
        """The dtype and value range of the training rasters per modality and the training GSD
        (the card's ``gsd_m``, else the rasters' pixel size), read from the first training
        tiles (a few bounded reads); the card's dtypes when the rasters cannot be found.
        Prediction compares its inputs with it (:mod:`rsfusion.data.raster_facts`)."""
        if self._inputs is None:
            rgb = self.card.modality(self.cfg.rgb)
            x = self.card.modality(self.cfg.x) if self.cfg.x else None
            try:
                tiles, _ = find_tiles(
                    self.card, self.cfg.root, self.tiles_of("train")[:3], self.cfg.rgb,
                    self.cfg.x, labels=False, align_x=self.cfg.align_x,
                )  # fmt: skip
            except (UserError, OSError):
                tiles = []  # no training rasters to read here: the card's dtypes
            self._inputs = inputs_record(
                self.card.gsd_m,
                [t.rgb.source for t in tiles],
                rgb.dtype,
                None if x is None else [t.x.source for t in tiles if t.x is not None],
                None if x is None else x.dtype,
                grids=[
                    (t.rgb.grid.crs, t.rgb.grid.transform, t.rgb.grid.width, t.rgb.grid.height)
                    for t in tiles
                    if t.rgb.how != "synthetic"
                ],
            )
        return self._inputs
