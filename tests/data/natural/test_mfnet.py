"""MFNet on the fake release: 4-channel RGBT PNGs, day/night splits, one training step, dry run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfusion.catalog import load_card
from rsfusion.config import load_config
from rsfusion.data.factory import make_datamodule, model_card
from rsfusion.data.natural.base import NaturalRGBXDataset, dataset_class_for
from rsfusion.data.natural.mfnet import MFNet
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = ["data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def mfnet_root() -> Path:
    """tests/data/mfnet: 00001D..00006N, one day and one night frame per split, 24x32."""
    return Path(__file__).parents[1] / "mfnet"


def dataset(root: Path, split: str = "train", **kwargs) -> NaturalRGBXDataset:
    return NaturalRGBXDataset(root, split, card="mfnet", x="thermal", **kwargs)


def stored(root: Path, folder: str, name: str) -> np.ndarray:
    return np.array(Image.open(root / folder / f"{name}.png"))


def test_card_follows_the_release():
    card = load_card("mfnet")
    assert card.num_classes == 9 and card.class_names[0] == "unlabelled"
    assert card.class_names[-1] == "bump" and card.metric_classes == list(range(9))
    assert card.image_size == (480, 640) and set(card.modalities) == {"rgb", "thermal"}
    counts = {p: card.sample_split(None, p).count for p in ("train", "val", "test")}
    assert counts == {"train": 784, "val": 392, "test": 393}
    assert card.sample_split("test_day", "test").count == 205
    assert card.sample_split("test_night", "test").count == 188
    assert set(card.conditions) == {"day", "night"}
    seen = model_card(load_config("mfnet_baseline").data)
    assert seen.modality("thermal").bands == ("thermal",) * 3
    assert seen.modality("rgb").bands == ("red", "green", "blue")


def test_every_split_comes_from_its_list(mfnet_root):
    ids = {s: [r.id for r in dataset(mfnet_root, s).samples] for s in ("train", "val", "test")}
    assert ids == {"train": ["00001D", "00002N"], "val": ["00003D", "00004N"],
                   "test": ["00005D", "00006N"]}  # fmt: skip
    for split in ("train", "val", "test"):
        ds = dataset(mfnet_root, split)
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == s["image_x"].shape == (3, 24, 32)
            assert s["mask"].shape == (24, 32)


def test_day_night_presets_and_conditions(mfnet_root):
    listed = {p: (mfnet_root / f"{p}.txt").read_text().split() for p in ("test_day", "test_night")}
    for preset in ("test_day", "test_night"):
        ds = dataset(mfnet_root, "test", preset=preset)
        assert [r.id for r in ds.samples] == listed[preset]
        assert [r.id for r in dataset(mfnet_root, "train", preset=preset).samples] == [
            "00001D", "00002N",
        ]  # fmt: skip
    night = dataset(mfnet_root, "test", condition="night")
    assert [r.id for r in night.samples] == listed["test_night"] == ["00006N"]
    assert [r.id for r in dataset(mfnet_root, "train", condition="day").samples] == ["00001D"]
    with pytest.raises(KeyError, match=r"choose one of \['day', 'night'\]"):
        dataset(mfnet_root, "test", condition="dusk")


def test_rgb_and_thermal_come_from_one_four_channel_png(mfnet_root):
    rgbt = stored(mfnet_root, "images", "00002N")
    assert rgbt.shape == (24, 32, 4)
    s = dataset(mfnet_root, encodings={"thermal": "repeat3"})[1]
    assert np.array_equal(s["image"].numpy(), np.moveaxis(rgbt[..., :3], -1, 0).astype(np.float32))
    assert all(np.array_equal(s["image_x"][c].numpy(), rgbt[..., 3]) for c in range(3))
    unit = dataset(mfnet_root, encodings={"thermal": "unit3"})[1]["image_x"]
    assert torch.allclose(unit, torch.from_numpy(rgbt[..., 3] / 255.0).float().expand(3, -1, -1))
    one = dataset(mfnet_root, encodings={"thermal": "unit"})[1]["image_x"]
    assert one.shape == (1, 24, 32) and float(one.max()) <= 1.0
    # people are warm in the fake release: thermal says so, not the RGB
    label = stored(mfnet_root, "labels", "00002N")
    assert rgbt[..., 3][label == 2].min() > rgbt[..., 3][label == 4].max()


def test_labels_are_the_train_ids_and_unlabelled_is_a_class(mfnet_root):
    ds = dataset(mfnet_root, "val")
    for i, ref in enumerate(ds.samples):
        label = stored(mfnet_root, "labels", ref.id)
        mask = ds[i]["mask"].numpy()
        assert np.array_equal(mask, label.astype(np.int64))
        assert (mask == 0).any() and not (mask == 255).any()


@pytest.fixture(scope="module")
def datamodule(mfnet_root):
    cfg = load_config("mfnet_baseline", [f"data.root={mfnet_root}", *TINY])
    dm = make_datamodule(cfg.data, seed=1)
    dm.setup("fit")
    return dm


def test_batches_pad_augment_and_keep_thermal_scale(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_x"].shape == (2, 3, 32, 32)
    assert torch.all(batch["mask"][:, 24:] == 255) and not (batch["mask"][:, :24] == 255).any()
    x = batch["image_x"][:, :, :24]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # unit3, x_norm scale 1: stored/255
    assert float((x * 255 - (x * 255).round()).abs().max()) < 1e-3  # not stretched per image
    out = datamodule.train_aug(batch)
    assert out["image"].shape == (2, 3, 32, 32) and out["image_x"].shape == (2, 3, 32, 32)
    assert set(out["mask"].unique().tolist()) <= {255, *range(9)}
    meta = datamodule.describe()
    assert meta["x_encoding"] == "unit3" and meta["x_bands"] == ["thermal"] * 3
    assert meta["rgb_bands"] == ["red", "green", "blue"] and meta["x_norm"]["mode"] == "scale"


def test_condition_from_the_config(mfnet_root):
    cfg = load_config("mfnet_baseline", [f"data.root={mfnet_root}", "data.condition=night"])
    dm = make_datamodule(cfg.data)
    assert [r.id for r in dm.make_dataset("train").samples] == ["00002N"]
    assert [r.id for r in dm.make_dataset("test").samples] == ["00006N"]


def test_dry_run_names_presets(mfnet_root, capsys):
    out = dry_run_report("mfnet_baseline", mfnet_root, capsys)
    assert "data train: 2 samples ('train' of preset 'official') (the release has 784)" in out
    assert "data val: 2 samples ('val' of preset 'official') (the release has 392)" in out
    assert "missing" not in out
    night = dry_run_report("mfnet_baseline", mfnet_root, capsys, "data.split=test_night")
    assert "data test: 1 samples ('test' of preset 'test_night') (the release has 188)" in night


def test_one_training_step_scores_all_nine_classes(mfnet_root, tmp_path):
    ckpt = train_one_step("mfnet_baseline", mfnet_root, tmp_path / "run", *TINY)
    meta = ckpt["rsfusion"]
    assert meta["card"] == "mfnet" and meta["x_modality"] == "thermal"
    assert meta["model"]["x_channels"] == 3 and meta["model"]["num_classes"] == 9
    scores = json.loads((tmp_path / "run/reports/val_scores.json").read_text())
    assert 0.0 <= scores["mIoU"] <= 1.0 and "unlabelled" in scores["per_class"]


def test_flip_names_of_the_split_file_are_skipped_with_a_count(
    mfnet_root, tmp_path, caplog, monkeypatch
):
    import logging
    import shutil

    monkeypatch.setattr(logging.getLogger("rsfusion"), "propagate", True)  # a CLI may unset it

    root = tmp_path / "ir_seg_dataset"
    shutil.copytree(mfnet_root, root, ignore=shutil.ignore_patterns("*.py"))
    names = (root / "train.txt").read_text().split()
    (root / "train.txt").write_text("".join(f"{n}\n{n}_flip\n" for n in names))
    for name in names:  # what make_flip.py writes: mirrored copies
        for folder in ("images", "labels"):
            img = Image.open(root / folder / f"{name}.png")
            img.transpose(Image.FLIP_LEFT_RIGHT).save(root / folder / f"{name}_flip.png")
    with caplog.at_level(logging.WARNING, logger="rsfusion"):
        ds = dataset_class_for("mfnet")(root, "train", x="thermal")
    assert isinstance(ds, MFNet) and [r.id for r in ds.samples] == names
    assert "skipped 2 '_flip' entries of the split file (e.g. 00001D_flip)" in caplog.text
    assert "2 frames kept" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rsfusion"):
        assert len(MFNet(mfnet_root, "train", x="thermal")) == 2
    assert "_flip" not in caplog.text  # the release's own list: nothing to skip
