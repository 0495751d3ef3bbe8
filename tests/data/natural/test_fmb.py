"""FMB on the fake release: Visible/Infrared/Label folders, grey infrared, one step, dry run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfusion.catalog import load_card
from rsfusion.config import load_config
from rsfusion.data.factory import make_datamodule
from rsfusion.data.natural.base import dataset_class_for
from rsfusion.data.natural.fmb import FMB
from rsfusion.errors import SampleFormatError
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = ["data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def fmb_root() -> Path:
    """tests/data/fmb: train 00001-00003, test 00004-00005, 24x32."""
    return Path(__file__).parents[1] / "fmb"


def stored(root: Path, split: str, folder: str, name: str) -> np.ndarray:
    return np.array(Image.open(root / split / folder / f"{name}.png"))


def test_card_follows_the_release():
    card = load_card("fmb")
    assert card.num_classes == 15 and card.class_names[0] == "unlabelled"
    assert card.class_names[-1] == "pole" and card.image_size == (600, 800)
    assert (card.sample_split(None, "train").count, card.sample_split(None, "test").count) == (
        1220,
        280,
    )
    assert (
        set(card.modalities) == {"rgb", "infrared"} and "val" not in card.sample_splits["official"]
    )
    assert dataset_class_for("fmb") is FMB


def test_splits_are_the_folders(fmb_root):
    train, test = FMB(fmb_root, "train", x="infrared"), FMB(fmb_root, "test", x="infrared")
    assert [r.id for r in train.samples] == ["00001", "00002", "00003"]
    assert [r.id for r in test.samples] == ["00004", "00005"]
    val = FMB(fmb_root, "val", x="infrared")
    assert val.part == "test" and [r.id for r in val.samples] == ["00004", "00005"]
    for ds in (train, test):
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == s["image_x"].shape == (3, 24, 32)


def test_labels_are_ids_and_match_the_colour_folder(fmb_root):
    ds = FMB(fmb_root, "train", x="infrared")
    code = {c: i for i, c in enumerate(ds.card.palette)}
    for i, ref in enumerate(ds.samples):
        mask = ds[i]["mask"].numpy()
        assert np.array_equal(mask, stored(fmb_root, "train", "Label", ref.id))
        colour = stored(fmb_root, "train", "color", ref.id).reshape(-1, 3)
        decoded = np.array([code[tuple(int(v) for v in c)] for c in colour]).reshape(mask.shape)
        assert np.array_equal(decoded, mask)  # the card's colours are the release's
    assert (ds[0]["mask"] == 0).any()  # unlabelled is a trained class, not ignore


def test_infrared_scaling(fmb_root):
    ref = FMB(fmb_root, "test").samples[1]
    ir = stored(fmb_root, "test", "Infrared", ref.id).astype(np.float64)
    unit3 = FMB(fmb_root, "test", x="infrared", encodings={"infrared": "unit3"})
    x = unit3.read_modality("infrared", ref)
    assert x.shape == (3, 24, 32) and np.allclose(x, ir / 255.0)
    raw = FMB(fmb_root, "test", x="infrared", encodings={"infrared": "repeat3"})
    assert np.array_equal(raw.read_modality("infrared", ref)[2], ir)


def test_three_channel_infrared_copies_read_as_grey(fmb_root, tmp_path):
    root = tmp_path / "fmb"
    shutil.copytree(fmb_root, root, ignore=shutil.ignore_patterns("*.py"))
    one = FMB(fmb_root, "train", x="infrared", encodings={"infrared": "unit"})
    ir = stored(fmb_root, "train", "Infrared", "00002")
    Image.fromarray(np.stack([ir] * 3, -1)).save(root / "train/Infrared/00002.png")
    three = FMB(root, "train", x="infrared", encodings={"infrared": "unit"})
    ref = three.samples[1]
    assert np.array_equal(three.read_modality("infrared", ref), one.read_modality("infrared", ref))
    colour = np.zeros((24, 32, 3), np.uint8)
    colour[..., 0], colour[..., 1] = 100, 200  # grey = round(.299 * 100 + .587 * 200) = 147
    Image.fromarray(colour).save(root / "train/Infrared/00002.png")
    assert np.allclose(three.read_modality("infrared", ref), 147 / 255.0)
    Image.fromarray(colour[..., :2].copy(), mode="LA").save(root / "train/Infrared/00002.png")
    with pytest.raises(SampleFormatError, match="has 2 channels"):
        three.read_modality("infrared", ref)


def test_batches_augment_and_dry_run(fmb_root, capsys):
    cfg = load_config("fmb_baseline", [f"data.root={fmb_root}", *TINY])
    dm = make_datamodule(cfg.data, seed=0)
    assert isinstance(dm.make_dataset("train"), FMB)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == batch["image_x"].shape == (2, 3, 32, 32)
    assert torch.all(batch["mask"][:, 24:] == 255)
    x = batch["image_x"][:, :, :24]
    assert float((x * 255 - (x * 255).round()).abs().max()) < 1e-3  # stored / 255, not stretched
    out = dm.train_aug(batch)
    assert out["image_x"].shape == (2, 3, 32, 32)
    assert set(out["mask"].unique().tolist()) <= {255, *range(15)}
    out = dry_run_report("fmb_baseline", fmb_root, capsys)
    assert "data train: 3 samples ('train' of preset 'official') (the release has 1220)" in out
    assert "data val: 2 samples ('test' of preset 'official') (the release has 280)" in out


def test_one_training_step(fmb_root, tmp_path):
    ckpt = train_one_step(
        "fmb_baseline", fmb_root, tmp_path / "run", *TINY, "trainer.limit_val_batches=0"
    )
    meta = ckpt["rsfusion"]
    assert meta["card"] == "fmb" and meta["x_bands"] == ["thermal"] * 3
    assert meta["model"]["num_classes"] == 15 and meta["classes"][0] == "unlabelled"


def test_labels_as_the_loaders_read_them_255_ignored_channel_0(fmb_root, tmp_path):
    root = tmp_path / "fmb"
    shutil.copytree(fmb_root, root, ignore=shutil.ignore_patterns("*.py"))
    label = stored(fmb_root, "train", "Label", "00001").copy()
    label[:3, :4] = 255  # the loaders' ignore label
    Image.fromarray(np.stack([label, label // 2, label // 3], -1)).save(
        root / "train/Label/00001.png"
    )  # a 3-channel copy: the class is channel 0
    mask = FMB(root, "train", x="infrared")[0]["mask"].numpy()
    assert (mask[:3, :4] == 255).all()
    rest = np.ones_like(label, bool)
    rest[:3, :4] = False
    assert np.array_equal(mask[rest], label[rest])
    card = load_card("fmb")
    assert card.labels.channel == 0 and card.labels.void == (255,)
    assert card.modality("infrared").channel_variants == {3: "grey", 4: "grey"}
