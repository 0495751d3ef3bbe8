"""Lightning datamodule for the ISPRS datasets, driven by the config's ``data`` section.

Random windows for training (torchgeo RandomGeoSampler), full-coverage windows for validation
and test (:class:`TileGridSampler`), Kornia augmentation and per-modality normalisation on the
device in ``on_after_batch_transfer`` (torchgeo's GeoDataModule does the wiring).

The data path (none of it changes a sample or a training result):

* ``data.in_memory`` (default ``auto``): each split's rasters are read once into memory and the
  windows cut from there (:mod:`rsfusion.data.tilestore`) when they fit in a quarter of the
  memory available (per training process on the machine); ``true`` insists (refused when they
  need more than half of it), ``false`` reads every window through torchgeo.
* 8-bit orthophotos travel as uint8 (a quarter of the float32 bytes through collation, pinned
  memory and the copy to the device) and are cast to float32 on the device, first thing in the
  batch transform: the same values, bit for bit.
* ``data.num_workers: auto``: the CPUs this process may use, less one, shared by the training
  processes of the machine, at most 8 (0 on one CPU). Such a loader also keeps the global random
  stream of a loader without workers (:class:`SteadyRNGDataLoader`), so a run gives the results
  of ``num_workers: 0`` on any machine. Pinned memory whenever training runs on a CUDA device;
  workers persist across epochs.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchgeo.datamodules import GeoDataModule
from torchgeo.samplers import BatchGeoSampler

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
from rsfusion.data.tilestore import size_text
from rsfusion.errors import ConfigError, UserError
from rsfusion.hostmem import host_available as available_memory

log = logging.getLogger(__name__)

#: ``data.num_workers: auto`` never starts more workers than this per training process.
MAX_AUTO_WORKERS = 8
#: ``data.in_memory: auto`` holds a split when it needs at most this share of the memory
#: available to each training process; ``true`` refuses above :data:`IN_MEMORY_MAX_SHARE`.
IN_MEMORY_AUTO_SHARE = 0.25
IN_MEMORY_MAX_SHARE = 0.5


def auto_workers(processes: int = 1, cpus: int | None = None) -> int:
    """Data-loading workers per training process for ``data.num_workers: auto``: the CPUs this
    process may run on (its affinity), shared by ``processes`` training processes, less one
    for the process itself; at most :data:`MAX_AUTO_WORKERS`.

    Example:
        >>> auto_workers(cpus=1), auto_workers(cpus=2), auto_workers(cpus=64), auto_workers(8, 16)
        (0, 1, 8, 1)
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        cpus = cpus or os.cpu_count() or 1
    return max(0, min(cpus // max(processes, 1) - 1, MAX_AUTO_WORKERS))


class SteadyRNGDataLoader(DataLoader):
    """A DataLoader that draws from the global random generator at every epoch, with or
    without workers, as a DataLoader without workers does.

    Every new iterator of a DataLoader draws one number (its workers' base seed) from torch's
    global generator, or from ``generator`` if one is given. Persistent workers keep one iterator
    for the loader's lifetime, so a run with workers draws fewer numbers, and the augmentations
    drawn on the device after that (from the same global generator) differ from a run without
    workers. This loader draws the number a new iterator would at every further epoch: training
    gives the same results whatever the number of workers.
    """

    def __iter__(self) -> Any:
        if self.persistent_workers and self.num_workers > 0 and self._iterator is not None:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        return super().__iter__()


class DeviceBatchTransform(BatchTransform):
    """:class:`~rsfusion.data.augment.BatchTransform` for batches whose ``image`` may arrive as
    uint8: cast to float32 first (on the device, exactly), then augment and normalise."""

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        image = batch.get("image")
        if image is not None and not image.is_floating_point():
            batch = {**batch, "image": image.float()}
        return super().forward(batch)


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
        auto = cfg.num_workers == "auto"
        super().__init__(
            ISPRSDataset,
            batch_size=cfg.batch_size,
            patch_size=cfg.window,
            length=cfg.samples_per_epoch,
            num_workers=auto_workers() if auto else int(cfg.num_workers),
        )
        self.workers_auto = auto
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
        self.train_aug = DeviceBatchTransform(augment, normalise)
        self.aug = DeviceBatchTransform(None, normalise)

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
        dataset = ISPRSDataset(
            self.cfg.root,
            card=self.card,
            split=split,
            tiles=self.tiles_of(split),
            rgb=self.cfg.rgb,
            x=self.cfg.x,
            labels=self.cfg.labels if split == "train" else self.cfg.eval_labels,
            x_norm=self.fit_x_norm(),
            align_x=self.cfg.align_x,
            rgb_raw=True,
        )
        self._hold(dataset, split)
        return dataset

    def _processes(self) -> int:
        """Training processes on this machine (DDP: one per device), each with its own data."""
        trainer = self.trainer
        return max(int(getattr(trainer, "num_devices", 1) or 1), 1) if trainer else 1

    def _hold(self, dataset: ISPRSDataset, split: str) -> None:
        """Read the split into memory as ``data.in_memory`` says (see the module docstring)."""
        mode = self.cfg.in_memory
        if mode is False:
            return
        need = dataset.memory_need()
        free = available_memory()
        share = None if free is None else free // self._processes()
        n = len(dataset.tiles)
        what = f"the {split} tiles ({n}) need {size_text(need)} in memory"
        if mode is True:
            if share is not None and need > IN_MEMORY_MAX_SHARE * share:
                raise ConfigError(
                    f"data.in_memory=true: {what}, more than half of the {size_text(share)} "
                    "available to this training process; set data.in_memory=auto (reads them "
                    "through torchgeo when they do not fit) or false, or use fewer tiles"
                )
        elif share is None or need > IN_MEMORY_AUTO_SHARE * share:
            why = "memory available unknown" if share is None else (
                f"more than a quarter of the {size_text(share)} available"
            )  # fmt: skip
            log.info(
                "note: data.in_memory=auto: %s, %s; they are read window by window (slower; "
                "set data.in_memory=false to say so and silence this)", what, why
            )  # fmt: skip
            return
        store = dataset.hold_in_memory()
        log.info("data %s: %d tile%s held in memory (%s)", split, n, "s" * (n != 1),
                  size_text(store.nbytes))  # fmt: skip

    def _pin_memory(self) -> bool:
        """Pinned host memory when the batches go to a CUDA device."""
        trainer = self.trainer
        if trainer is not None:
            try:
                return trainer.strategy.root_device.type == "cuda"
            except (AttributeError, RuntimeError):
                pass
        return torch.cuda.is_available()

    def _dataloader_factory(self, split: str) -> DataLoader[dict[str, Tensor]]:
        """torchgeo's loaders (same samplers, batch sizes, collation, drop_last), with pinned
        memory for CUDA and, for ``num_workers: auto``, :class:`SteadyRNGDataLoader`."""
        dataset = self._valid_attribute(f"{split}_dataset", "dataset")
        sampler = self._valid_attribute(
            f"{split}_batch_sampler", f"{split}_sampler", "batch_sampler", "sampler"
        )
        batch_size = self._valid_attribute(f"{split}_batch_size", "batch_size")
        batch_sampler = None
        if isinstance(sampler, BatchGeoSampler):
            batch_size, batch_sampler, sampler = 1, sampler, None
        loader = SteadyRNGDataLoader if self.workers_auto else DataLoader
        return loader(
            dataset=dataset,
            batch_size=batch_size,
            sampler=sampler,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            drop_last=split == "train" and batch_sampler is None,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._pin_memory(),
        )

    def _grid_sampler(self, dataset: ISPRSDataset) -> TileGridSampler:
        return TileGridSampler(dataset.tiles, dataset.res, self.cfg.window, self.cfg.eval_stride)

    def _current_epoch(self) -> int:
        trainer = self.trainer
        return trainer.current_epoch if trainer is not None else 0

    def setup(self, stage: str) -> None:
        if self.workers_auto:  # the training processes of this machine share its CPUs
            self.num_workers = auto_workers(self._processes())
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
