"""Lightning datamodule for natural-image RGB+X cards, driven by the config's ``data`` section.

Whole images (or, for releases of varying size, per-sample CPU crops: ``data.resize``,
``data.scale_range``, ``data.crop``) are batched with :func:`pad_collate`; Kornia augmentation
and normalisation run on the device in ``on_after_batch_transfer`` exactly as for ISPRS
(:class:`PairedAugment` then :class:`Normalise`). ``describe()`` holds the keys of
:meth:`ISPRSDataModule.describe`, so checkpoints, prediction and evaluation work alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torchgeo.datamodules import NonGeoDataModule

from rsfusion.catalog import DatasetCard, load_card
from rsfusion.config import ConfigError, DataConfig
from rsfusion.data.augment import BatchTransform, PairedAugment
from rsfusion.data.datamodule import rgb_normalise
from rsfusion.data.natural.base import NaturalRGBXDataset, dataset_class_for
from rsfusion.data.natural.transforms import SampleResizeCrop, pad_collate
from rsfusion.data.normalise import XNorm
from rsfusion.data.raster_facts import inputs_record
from rsfusion.errors import MissingFileError


class EpochShuffle(Sampler[int]):
    """A permutation of ``range(n)`` drawn from (seed, epoch) only, so a run resumed at an
    epoch boundary sees the order of an uninterrupted one (cf. SeededRandomGeoSampler)."""

    def __init__(self, n: int, seed: int, epoch_fn: Callable[[], int]) -> None:
        self.n, self.seed, self.epoch_fn = n, seed, epoch_fn

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch_fn())
        yield from torch.randperm(self.n, generator=g).tolist()

    def __len__(self) -> int:
        return self.n


class NaturalDataModule(NonGeoDataModule):
    """Train / val / test splits of a natural card from one :class:`DataConfig`.

    One training epoch is one pass over the training samples (``samples_per_epoch`` and
    ``window`` are ISPRS settings). Validation uses the card's 'val' part, else 'test'.
    """

    def __init__(self, cfg: DataConfig, seed: int = 42) -> None:
        if cfg.root is None:
            raise ValueError("data.root is not set: pass --set data.root=/path/to/dataset")
        source = load_card(cfg.card)
        if source.kind != "natural":
            raise ValueError(f"dataset card '{source.name}' is not a natural-image card")
        super().__init__(
            dataset_class_for(source.name), batch_size=cfg.batch_size, num_workers=cfg.num_workers
        )
        self.cfg, self.seed = cfg, seed
        self.source_card = source
        choices = {cfg.rgb: None, **({cfg.x: cfg.x_encoding} if cfg.x else {})}
        self.card: DatasetCard = source.encoded(choices)
        self.encodings = choices
        if source.image_size is None and cfg.crop is None and cfg.resize is None:
            self.size_note = "varying image sizes, padded per batch (set data.crop to crop)"
        else:
            self.size_note = ""
        ignore = source.ignore_index
        try:
            self.train_transform = (
                SampleResizeCrop(cfg.resize, cfg.scale_range, cfg.crop, ignore, cfg.crop_cat_max)
                if cfg.resize or cfg.scale_range or cfg.crop
                else None
            )
            self.eval_transform = (
                SampleResizeCrop(cfg.resize, None, None, ignore) if cfg.resize else None
            )
        except ValueError as err:
            raise ConfigError(f"data.resize / data.scale_range / data.crop: {err}") from err
        self.x_norm: XNorm | None = None
        self.val_batch_size = self.test_batch_size = cfg.eval_batch_size or cfg.batch_size
        self.collate_fn = functools.partial(
            pad_collate, multiple=cfg.pad_multiple, ignore_index=source.ignore_index
        )
        aug = cfg.augment
        normalise = rgb_normalise(cfg.rgb_norm)
        augment = PairedAugment(
            hflip=aug.hflip,
            vflip=aug.vflip,
            rot90=aug.rot90,
            scale=tuple(aug.scale) if aug.scale else None,
            color_jitter=aug.color_jitter,
            gaussian_blur=aug.gaussian_blur,
            ignore_index=source.ignore_index,
        )
        self.train_aug = BatchTransform(augment, normalise)
        self.aug = BatchTransform(None, normalise)

    def make_dataset(self, split: str, x_norm: XNorm | None = None) -> NaturalRGBXDataset:
        """The dataset of 'train', 'val' or 'test' (CPU crops for training only)."""
        cfg = self.cfg
        transform = self.train_transform if split == "train" else self.eval_transform
        return self.dataset_class(  # type: ignore[call-arg]
            cfg.root,
            split,
            card=self.source_card,
            rgb=cfg.rgb,
            x=cfg.x,
            encodings=self.encodings,
            preset=cfg.split,
            condition=cfg.condition,
            x_norm=x_norm,
            transform=transform,
        )

    def fit_x_norm(self) -> XNorm:
        """X normalisation; 'dataset' reads the training samples' X once (known values)."""
        if self.x_norm is None:
            mode, scale = self.cfg.x_norm, self.cfg.x_scale
            if mode == "dataset" and self.cfg.x is not None:
                ds = self.make_dataset("train")
                count, total, total_sq = 0, 0.0, 0.0
                for ref in ds.samples:
                    x = ds.read_modality(self.cfg.x, ref).astype(np.float64)
                    known = x[np.isfinite(x)]
                    count += known.size
                    total += float(known.sum())
                    total_sq += float(np.square(known).sum())
                mean = total / max(count, 1)
                std = float(np.sqrt(max(total_sq / max(count, 1) - mean**2, 0.0)))
                self.x_norm = XNorm(mode, scale, mean, std)
            else:
                self.x_norm = XNorm(mode, scale)
        return self.x_norm

    def setup(self, stage: str) -> None:
        norm = self.fit_x_norm()
        if stage == "fit":
            self.train_dataset = self.make_dataset("train", norm)
            if len(self.train_dataset) < self.cfg.batch_size:
                raise ValueError(
                    f"data.batch_size {self.cfg.batch_size} exceeds the "
                    f"{len(self.train_dataset)} training samples under {self.cfg.root}"
                )
        if stage in ("fit", "validate"):
            self.val_dataset = self.make_dataset("val", norm)
        if stage == "test":
            self.test_dataset = self.make_dataset("test", norm)

    def _current_epoch(self) -> int:
        trainer = self.trainer
        return trainer.current_epoch if trainer is not None else 0

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        dataset = self._valid_attribute("train_dataset")
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=EpochShuffle(len(dataset), self.seed, self._current_epoch),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )

    def sample_report(self) -> list[str]:
        """One line per split for ``--dry-run``: samples listed, files present, release size.

        Raises:
            FileNotFoundError: when the train or val split has no complete sample.
        """
        lines = []
        for split in ("train", "val", "test"):
            ds = self.make_dataset(split)
            missing = ds.missing_files()
            source = self.source_card.sample_split(self.cfg.split, ds.part)
            full = f" (the release has {source.count})" if source.count else ""
            note = f", {len(missing)} file(s) missing, e.g. {missing[0]}" if missing else ""
            lines.append(
                f"data {split}: {len(ds)} samples ('{ds.part}' of preset "
                f"'{self.cfg.split or self.source_card.default_split}'){full} under "
                f"{self.cfg.root}{note}"
            )
            if split != "test" and (not len(ds) or len(missing) >= len(ds)):
                raise MissingFileError(f"no complete {split} sample under {self.cfg.root}")
        if self.size_note:
            lines.append(f"data: {self.size_note}")
        return lines

    def describe(self) -> dict[str, Any]:
        """What prediction and evaluation need to preprocess inputs exactly as in training."""
        cfg = self.cfg
        rgb = self.card.modality(cfg.rgb)
        x = self.card.modality(cfg.x) if cfg.x else None
        return {
            "card": self.card.name,
            "kind": "natural",
            "rgb_modality": cfg.rgb,
            "rgb_bands": list(rgb.bands),
            "rgb_encoding": self.source_card.modality(cfg.rgb).encoding().name,
            "x_modality": cfg.x,
            "x_bands": list(x.bands) if x else [],
            "x_encoding": (
                self.source_card.modality(cfg.x).encoding(cfg.x_encoding).name if cfg.x else None
            ),
            "rgb_norm": rgb_normalise(cfg.rgb_norm).describe(),
            "x_norm": self.fit_x_norm().to_dict(),
            "classes": self.card.class_names,
            "palette": [list(c) for c in self.card.palette],
            "ignore_index": self.card.ignore_index,
            "window": cfg.window,
            "resize": cfg.resize,
            "crop": cfg.crop,
            "pad_multiple": cfg.pad_multiple,
            # dtypes as the card states them (natural images carry no GSD)
            "inputs": inputs_record(
                None,
                [],
                self.source_card.modality(cfg.rgb).dtype,
                None if x is None else [],
                None if x is None else self.source_card.modality(cfg.x).dtype,
            ),  # fmt: skip
        }
