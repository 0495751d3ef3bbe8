"""DDD17 (Ev-SegNet release) on the fake data: grey frames as RGB, event tensors, ignore 255."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfusion.catalog import load_card
from rsfusion.config import load_config
from rsfusion.data.factory import make_datamodule, model_card
from rsfusion.data.natural.base import NaturalRGBXDataset
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = ["data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu"]
EVENT_BANDS = ["count_pos", "count_neg", "mean_t_pos", "mean_t_neg", "std_t_pos", "std_t_neg"]


@pytest.fixture(scope="module")
def ddd17_root() -> Path:
    """tests/data/ddd17: 3 train and 2 test samples of 24x40, Ev-SegNet layout."""
    return Path(__file__).parents[1] / "ddd17"


def dataset(root: Path, split: str = "train", enc: str | None = None) -> NaturalRGBXDataset:
    return NaturalRGBXDataset(
        root, split, card="ddd17", rgb="grey", x="events", encodings={"events": enc}
    )


def test_card_and_config_choices():
    card = load_card("ddd17")
    assert card.class_names == ["flat", "construction_sky", "object", "nature", "human", "vehicle"]
    assert card.image_size == (200, 346) and card.labels.void == (255,)
    assert list(card.modality("events").bands) == EVENT_BANDS
    assert (card.sample_split(None, "train").count, card.sample_split(None, "test").count) == (
        15950,
        3890,
    )
    cfg = load_config("ddd17_baseline").data
    assert (cfg.rgb, cfg.x, cfg.x_encoding) == ("grey", "events", "evsegnet6")
    seen = model_card(cfg)
    assert seen.modality("grey").bands == ("grey",) * 3
    assert list(seen.modality("events").bands) == EVENT_BANDS
    hist = load_config("ddd17_baseline", ["data.x_encoding=histogram"]).data
    assert model_card(hist).modality("events").bands == ("count_pos", "count_neg")


def test_splits_are_the_folders_and_rgb_must_be_named(ddd17_root):
    train, test = dataset(ddd17_root), dataset(ddd17_root, "test")
    assert [r.id for r in train.samples] == [
        "rec1487339175_export_120", "rec1487339175_export_121", "rec1487593224_export_900",
    ]  # fmt: skip
    assert [r.id for r in test.samples] == [
        "rec1487417411_export_3772", "rec1487417411_export_3798",
    ]  # fmt: skip
    assert dataset(ddd17_root, "val").part == "test"
    for ds in (train, test):
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == (3, 24, 40) and s["image_x"].shape == (6, 24, 40)
    with pytest.raises(KeyError, match=r"no modality 'rgb'; choose one of \['events', 'grey'\]"):
        NaturalRGBXDataset(ddd17_root, "train", card="ddd17", x="events")


def test_grey_repeated_events_as_stored_labels_ignored(ddd17_root):
    ds = dataset(ddd17_root, "test")
    ref = ds.samples[1]
    grey = np.array(Image.open(ddd17_root / "images/test" / f"{ref.id}.png"))
    events = np.load(ddd17_root / "events/test" / f"{ref.id}.npy")
    label = np.array(Image.open(ddd17_root / "labels/test" / f"{ref.id}.png"))
    s = ds[1]
    assert grey.ndim == 2 and events.shape == (24, 40, 6)
    assert all(np.array_equal(s["image"][c].numpy(), grey) for c in range(3))
    # stored (H, W, 6), read (6, H, W), values as stored (x_norm scale 1)
    assert np.array_equal(s["image_x"].numpy(), np.moveaxis(events, -1, 0))
    assert (label == 255).any()
    assert np.array_equal(s["mask"].numpy(), label.astype(np.int64))  # 0..5 as they are, 255 kept
    hist = dataset(ddd17_root, "test", "histogram")[1]["image_x"].numpy()
    assert np.array_equal(hist, np.moveaxis(events[..., :2], -1, 0))
    four = dataset(ddd17_root, "test", "hist_mean")[1]["image_x"].numpy()
    assert np.array_equal(four, np.moveaxis(events[..., :4], -1, 0))
    assert (four[2] <= 1).all() and four[0].max() >= 1  # timestamps in [0, 1], counts >= 1


def test_batches_augment_and_dry_run(ddd17_root, capsys):
    cfg = load_config("ddd17_baseline", [f"data.root={ddd17_root}", *TINY])
    dm = make_datamodule(cfg.data, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 64) and batch["image_x"].shape == (2, 6, 32, 64)
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])
    assert torch.all(batch["mask"][:, 24:] == 255) and torch.all(batch["mask"][:, :, 40:] == 255)
    counts = batch["image_x"][:, 0]
    assert torch.equal(counts, counts.round()) and float(counts.max()) >= 1  # x_norm scale 1
    out = dm.train_aug(batch)
    assert out["image_x"].shape == (2, 6, 32, 64)
    assert set(out["mask"].unique().tolist()) <= {255, *range(6)}
    meta = dm.describe()
    assert meta["rgb_modality"] == "grey" and meta["x_bands"] == EVENT_BANDS
    out = dry_run_report("ddd17_baseline", ddd17_root, capsys)
    assert "data train: 3 samples ('train' of preset 'official') (the release has 15950)" in out
    assert "data val: 2 samples ('test'" in out and "missing" not in out


def test_one_training_step(ddd17_root, tmp_path):
    ckpt = train_one_step(
        "ddd17_baseline", ddd17_root, tmp_path / "run", *TINY, "trainer.limit_val_batches=0"
    )
    meta = ckpt["rsfusion"]
    assert meta["card"] == "ddd17" and meta["x_encoding"] == "evsegnet6"
    assert meta["model"]["x_channels"] == 6 and meta["model"]["num_classes"] == 6
