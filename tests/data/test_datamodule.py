"""The ISPRS datamodule from a config: splits, samplers, batches, normalisation metadata."""

import re
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from rsfusion.config import load_config
from rsfusion.data.datamodule import ISPRSDataModule
from rsfusion.errors import UserError


@pytest.fixture
def datamodule(vaihingen_root):
    return _module(vaihingen_root, augment=False)


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


def _module(vaihingen_root, *extra, stage="fit", augment=True):
    """The demo_baseline datamodule on the fake Vaihingen tiles, 16 px windows, set up for
    ``stage``; ``augment``: with rot90 and colour jitter."""
    augmentation = ["data.augment.rot90=true", "data.augment.color_jitter=0.2"] if augment else []
    cfg = load_config(
        "demo_baseline",
        [
            f"data.root={vaihingen_root}",
            "data.window=16",
            "data.batch_size=3",
            "data.train_tiles=[1,3,5]",
            "data.val_tiles=[2,4]",
            "data.samples_per_epoch=6",
            *augmentation,
            *extra,
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm = ISPRSDataModule(cfg.data, seed=7)
        dm.setup(stage)
    return dm


def test_held_and_torchgeo_batches_are_equal_and_so_are_their_augmented_forms(vaihingen_root):
    held = _module(vaihingen_root, "data.in_memory=true")
    plain = _module(vaihingen_root, "data.in_memory=false")
    assert held.train_dataset.store is not None and plain.train_dataset.store is None
    assert held.val_dataset.store is not None
    for split in ("train", "val"):
        loaders = [getattr(dm, f"{split}_dataloader")() for dm in (held, plain)]
        for a, b in zip(*loaders, strict=True):
            assert a["image"].dtype == b["image"].dtype == torch.uint8  # 8-bit RGB travels raw
            for key in ("image", "image_x", "mask"):
                assert torch.equal(a[key], b[key]), (split, key)
    assert held.train_dataset.store.passed_on == 0


def test_uint8_batches_augment_and_normalise_exactly_as_float_batches(vaihingen_root):
    from rsfusion.data.augment import BatchTransform

    dm = _module(vaihingen_root)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8
    as_float = {**batch, "image": batch["image"].float()}
    for new, old in (
        (dm.train_aug, BatchTransform(dm.train_aug.augment, dm.train_aug.normalise)),
        (dm.aug, BatchTransform(None, dm.aug.normalise)),
    ):
        torch.manual_seed(3)
        out = new(batch)
        torch.manual_seed(3)
        ref = old(as_float)
        assert out["image"].dtype == torch.float32
        for key in ("image", "image_x", "mask"):
            assert torch.equal(out[key], ref[key]), key


def test_in_memory_auto_reads_through_torchgeo_with_a_note_when_too_big(
    vaihingen_root, monkeypatch, caplog
):
    import rsfusion.data.datamodule as module

    monkeypatch.setattr(module, "available_memory", lambda: 60_000)  # bytes; 3 tiles: 46,080
    with caplog.at_level("INFO", logger="rsfusion.data.datamodule"):
        dm = _module(vaihingen_root)
    assert dm.train_dataset.store is None and dm.val_dataset.store is None
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("note:")]
    assert len(notes) == 2 and "train tiles (3) need 45 KiB" in notes[0]
    assert "more than a quarter of the 59 KiB available" in notes[0]
    with pytest.raises(UserError, match=r"in_memory=true: the train tiles \(3\) need 45 KiB"):
        _module(vaihingen_root, "data.in_memory=true")
    monkeypatch.setattr(module, "available_memory", lambda: 10**9)
    assert _module(vaihingen_root).train_dataset.store is not None


def test_auto_workers_pinned_memory_and_persistent_workers(vaihingen_root, monkeypatch):
    from rsfusion.data.datamodule import SteadyRNGDataLoader, auto_workers

    dm = _module(vaihingen_root, "data.num_workers=auto")
    assert dm.num_workers == auto_workers()
    loader = dm.train_dataloader()
    assert isinstance(loader, SteadyRNGDataLoader)
    assert loader.persistent_workers == (dm.num_workers > 0)
    assert loader.pin_memory == torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plain = _module(vaihingen_root, "data.num_workers=0")
    assert plain.val_dataloader().pin_memory and type(plain.val_dataloader()) is DataLoader


class _Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        return i


def _global_draw_after_epochs(loader, epochs: int = 3) -> torch.Tensor:
    torch.manual_seed(11)
    for _ in range(epochs):
        assert [int(b) for batch in loader for b in batch] == [0, 1, 2, 3]
    return torch.rand(4)


def test_steady_loader_draws_as_a_loader_without_workers():
    from rsfusion.data.datamodule import SteadyRNGDataLoader

    alone = _global_draw_after_epochs(DataLoader(_Numbers(), batch_size=2))
    kwargs = {"batch_size": 2, "num_workers": 1, "persistent_workers": True}
    steady = _global_draw_after_epochs(SteadyRNGDataLoader(_Numbers(), **kwargs))
    persistent = _global_draw_after_epochs(DataLoader(_Numbers(), **kwargs))
    assert torch.equal(steady, alone)
    assert not torch.equal(persistent, alone)  # what the steady loader fixes


def test_training_gives_the_same_weights_held_or_not_with_or_without_workers(
    tmp_path, vaihingen_root, monkeypatch, capsys
):
    import rsfusion.data.datamodule as module
    from rsfusion.cli.train import main

    monkeypatch.setattr(module, "auto_workers", lambda processes=1: 1)  # even on one CPU
    tiny = [
        f"data.root={vaihingen_root}", "data.window=32", "data.batch_size=2",
        "data.samples_per_epoch=4", "data.train_tiles=[1,3]", "data.val_tiles=[2]",
        "data.eval_batch_size=4", "optim.total_steps=4", "optim.warmup_steps=1",
        "trainer.max_steps=4", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
        "data.augment.rot90=true", "data.augment.color_jitter=0.2",
    ]  # fmt: skip
    runs = {
        "torchgeo, no workers": ["data.in_memory=false", "data.num_workers=0"],
        "held, auto workers": ["data.in_memory=true", "data.num_workers=auto"],
    }
    for name, extra in runs.items():
        args = ["--cfg", "demo_baseline", "--out", str(tmp_path / name), "--no-memory-check",
                "--set", *tiny, *extra]  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(args) == 0, name
    digests = re.findall(r"weights sha256=(\w+)", capsys.readouterr().out)
    assert len(digests) == 2 and digests[0] == digests[1]
