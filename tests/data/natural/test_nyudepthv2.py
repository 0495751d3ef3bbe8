"""NYU Depth V2 on the fake release: card, loader, datamodule, one training step, dry run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rsfusion.catalog import load_card
from rsfusion.config import load_config
from rsfusion.data.factory import make_datamodule, model_card
from rsfusion.data.natural.datamodule import NaturalDataModule
from rsfusion.data.natural.nyudepthv2 import NYUDepthV2
from rsfusion.errors import EncodingError, SampleFormatError
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = ["data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu"]


def test_card_matches_the_release_conventions():
    card = load_card("nyudepthv2")
    assert card.num_classes == 40 and card.class_names[0] == "wall"
    assert card.class_names[-1] == "other_prop" and card.ignore_index == 255
    assert card.sample_split(None, "train").count == 795
    assert card.sample_split(None, "test").count == 654
    assert card.image_size == (480, 640) and set(card.modalities) == {"rgb", "depth", "hha"}
    assert len(set(card.palette)) == 40 and (0, 0, 0) not in card.palette


def test_samples_come_from_the_split_files(nyudepthv2_root):
    train = NYUDepthV2(nyudepthv2_root, "train", x="depth")
    test = NYUDepthV2(nyudepthv2_root, "test", x="depth")
    assert [r.id for r in train.samples] == ["2", "3", "4"]
    assert [r.id for r in test.samples] == ["1", "8"]
    assert NYUDepthV2(nyudepthv2_root, "val").part == "test"


def test_labels_shift_by_one_and_unlabelled_is_ignored(nyudepthv2_root):
    ds = NYUDepthV2(nyudepthv2_root, "train", x="depth")
    stored = np.array(Image.open(nyudepthv2_root / "Label" / "2.png"))
    mask = ds[0]["mask"].numpy()
    assert np.array_equal(mask[stored == 0], np.full((stored == 0).sum(), 255))
    assert np.array_equal(mask[stored > 0], stored[stored > 0].astype(np.int64) - 1)


def test_dformer_rgba_depth_is_one_relative_channel(nyudepthv2_root):
    ref = NYUDepthV2(nyudepthv2_root, "train").samples[0]
    with Image.open(nyudepthv2_root / "Depth" / "2.png") as im:
        assert im.mode == "RGBA"  # plt.imsave(..., cmap="Greys_r"), as DFormer distributes it
        rgba = np.array(im)
    ds = NYUDepthV2(nyudepthv2_root, "train", x="depth", encodings={"depth": "repeat3"})
    x = ds.read_modality("depth", ref)
    assert x.shape == (3, 40, 56) and np.array_equal(x[0], rgba[..., 0].astype(np.float32))
    assert x.min() == 0 and x.max() == 255  # scaled per image: 0 = nearest, 255 = farthest
    rep = ds[0]["image_x"]  # repeat3 + per-sample min-max: the papers' input
    assert rep.shape == (3, 40, 56) and torch.equal(rep[0], rep[2])
    hha = NYUDepthV2(nyudepthv2_root, "train", x="hha")[0]["image_x"]
    assert hha.shape == (3, 40, 56) and not torch.equal(hha[0], hha[1])


@pytest.mark.parametrize("encoding", ["metres", "metres3"])
def test_metres_refuses_relative_depth_with_the_reason(nyudepthv2_root, encoding):
    ds = NYUDepthV2(nyudepthv2_root, "train", x="depth", encodings={"depth": encoding})
    with pytest.raises(EncodingError, match=r"2.png: stores uint8; 8-bit depth .* no metric"):
        ds[0]
    with pytest.raises(EncodingError, match="data.x_encoding=repeat3"):
        ds.read_modality("depth", ds.samples[0])


def test_a_16_bit_millimetre_copy_gives_metres(nyudepthv2_root, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(nyudepthv2_root, root, ignore=shutil.ignore_patterns("*.py"))
    mm = np.full((40, 56), 2500, np.uint16)
    mm[:3, :5] = 0  # unknown
    Image.fromarray(mm).save(root / "Depth" / "2.png")
    ds = NYUDepthV2(root, "train", x="depth", encodings={"depth": "metres"})
    m = ds.read_modality("depth", ds.samples[0])[0]
    assert np.isnan(m[:3, :5]).all() and np.allclose(m[3:], 2.5)


def test_other_channel_counts_are_named(nyudepthv2_root, tmp_path):
    root = tmp_path / "nyu"
    shutil.copytree(nyudepthv2_root, root, ignore=shutil.ignore_patterns("*.py"))
    Image.fromarray(np.zeros((40, 56, 2), np.uint8), mode="LA").save(root / "Depth" / "2.png")
    ds = NYUDepthV2(root, "train", x="depth")
    with pytest.raises(SampleFormatError, match=r"2.png: has 2 channels; .*also read: \[3, 4\]"):
        ds[0]


@pytest.fixture
def datamodule(nyudepthv2_root):
    cfg = load_config("nyudepthv2_baseline", [f"data.root={nyudepthv2_root}", *TINY])
    dm = make_datamodule(cfg.data, seed=3)
    dm.setup("fit")
    return dm


def test_datamodule_batches_pad_augment_and_normalise(datamodule):
    assert isinstance(datamodule, NaturalDataModule)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image_x"].shape == (2, 3, 64, 64)
    assert torch.all(batch["mask"][:, 40:, :] == 255) and torch.all(batch["mask"][:, :, 56:] == 255)
    assert float(batch["image"].max()) > 100  # 0-255 before the device transform
    out = datamodule.train_aug(batch)
    assert out["image"].shape == batch["image"].shape and abs(float(out["image"].mean())) < 3
    assert set(out["mask"].unique().tolist()) <= {255, *range(40)}
    val = next(iter(datamodule.val_dataloader()))
    assert val["image"].shape[0] == 2 and val["mask"].shape == (2, 64, 64)


def test_epoch_order_depends_on_seed_and_epoch_only(datamodule):
    first = list(datamodule.train_dataloader().sampler)
    assert sorted(first) == [0, 1, 2] and list(datamodule.train_dataloader().sampler) == first
    orders = set()
    for epoch in range(6):
        datamodule._current_epoch = lambda e=epoch: e
        orders.add(tuple(datamodule.train_dataloader().sampler))
    assert len(orders) > 1


def test_describe_has_the_isprs_keys_and_the_encoded_bands(datamodule, vaihingen_root):
    meta = datamodule.describe()
    isprs = make_datamodule(
        load_config("vaihingen_baseline", [f"data.root={vaihingen_root}"]).data
    ).describe()
    assert set(isprs) <= set(meta)
    assert meta["x_bands"] == ["depth"] * 3 and meta["x_encoding"] == "repeat3"
    assert meta["classes"][1] == "floor" and meta["palette"][0] == [128, 0, 0]
    assert meta["x_norm"]["mode"] == "raster_minmax"
    metres = load_config("nyudepthv2_baseline", ["data.x_encoding=metres"]).data
    assert model_card(metres).modality("depth").bands == ("depth_m",)


def test_dry_run_reports_samples_per_split(nyudepthv2_root, capsys):
    out = dry_run_report("nyudepthv2_baseline", nyudepthv2_root, capsys)
    assert "data train: 3 samples ('train' of preset 'official') (the release has 795)" in out
    assert "data val: 2 samples ('test'" in out and "missing" not in out


def test_one_training_step_writes_a_checkpoint(nyudepthv2_root, tmp_path):
    ckpt = train_one_step("nyudepthv2_baseline", nyudepthv2_root, tmp_path / "run", *TINY)
    meta = ckpt["rsfusion"]
    assert meta["card"] == "nyudepthv2" and meta["x_bands"] == ["depth"] * 3
    assert meta["model"]["x_channels"] == 3 and meta["model"]["num_classes"] == 40
    scores = json.loads((tmp_path / "run/reports/val_scores.json").read_text())  # epoch end
    assert 0.0 <= scores["mIoU"] <= 1.0 and "wall" in scores["per_class"]
