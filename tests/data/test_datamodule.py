"""The ISPRS datamodule from a config: splits, samplers, batches, normalisation metadata."""

import warnings

import pytest
import torch

from rsfusion.config import load_config
from rsfusion.data.datamodule import ISPRSDataModule


@pytest.fixture
def datamodule(vaihingen_root):
    cfg = load_config(
        "demo_baseline",
        [
            f"data.root={vaihingen_root}",
            "data.window=16",
            "data.batch_size=3",
            "data.train_tiles=[1,3,5]",
            "data.val_tiles=[2,4]",
            "data.samples_per_epoch=6",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = ISPRSDataModule(cfg.data, seed=7)
        dm.setup("fit")
    return dm


def test_train_batches_are_random_windows_with_separate_modalities(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["image_x"].shape == (3, 1, 16, 16)
    assert batch["mask"].shape == (3, 16, 16) and batch["mask"].dtype == torch.long
    assert float(batch["image_x"].min()) >= 0.0 and float(batch["image_x"].max()) <= 1.0
    out = datamodule.train_aug(batch)
    assert abs(float(out["image"].mean())) < 3  # ImageNet-normalised, no longer 0-255


def test_val_windows_cover_the_test_tiles(datamodule):
    tiles = datamodule.val_dataset.tiles
    assert [t.tile_id for t in tiles] == ["2", "4"]
    expected = 0
    for t in tiles:
        h, w = t.rgb.grid.height, t.rgb.grid.width
        expected += -(-h // 16) * -(-w // 16)
    assert len(datamodule.val_sampler) == expected
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape[1:] == (3, 16, 16)


def test_same_seed_same_training_windows(datamodule, vaihingen_root):
    first = list(datamodule.train_sampler)
    cfg = datamodule.cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        again = ISPRSDataModule(cfg, seed=7)
        again.setup("fit")
    assert list(again.train_sampler) == first


def test_describe_holds_what_prediction_needs(datamodule):
    meta = datamodule.describe()
    assert meta["rgb_bands"] == ["nir", "red", "green"] and meta["x_bands"] == ["elevation"]
    assert meta["classes"][0] == "impervious_surfaces" and meta["palette"][1] == [0, 0, 255]
    assert meta["x_norm"]["mode"] == "raster_minmax" and meta["window"] == 16
    assert meta["rgb_norm"]["mean"][0] == pytest.approx(123.675)
