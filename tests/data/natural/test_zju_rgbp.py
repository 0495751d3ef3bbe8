"""ZJU-RGB-P on the fake release: suffixed file names, colour-coded labels, AoLP, one step."""

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
from rsfusion.data.natural.zju_rgbp import ZJURGBP
from rsfusion.errors import LabelColourError
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = ["data.batch_size=2", "data.num_workers=0", "data.crop=[32,32]", "trainer.accelerator=cpu"]
# Road-Former's colours (RGB order) of file class 0 (unlabelled, black) .. 8: the VOC colour map
COLOURS = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128),
           (0, 128, 128), (128, 128, 128), (64, 0, 0)]  # fmt: skip


@pytest.fixture(scope="module")
def root() -> Path:
    return Path(__file__).parents[1] / "zju_rgbp"


def test_card_release_facts():
    card = load_card("zju_rgbp")
    assert card.num_classes == 8 and card.palette == COLOURS[1:]
    assert card.labels is not None and card.labels.encoding == "rgb"
    counts = [card.sample_split(None, p).count for p in ("train", "val", "test")]
    assert counts == [344, 50, 50]


def test_stems_and_split_folders_come_from_the_rgb_names(root):
    train = ZJURGBP(root, "train", x="aolp")
    assert [(r.id, r.split) for r in train.samples] == [
        ("0001", "train"), ("0002", "train"), ("0003", "train")
    ]  # fmt: skip
    for split in ("val", "test"):  # no test split: the test part reads the val folder
        ds = ZJURGBP(root, split, x="aolp")
        assert [(r.id, r.split) for r in ds.samples] == [("0345", "val"), ("0346", "val")]
    assert not ZJURGBP(root, "test", x="aolp").missing_files()


def test_card_colours_are_road_formers_rgb_order():
    card = load_card("zju_rgbp")
    named = dict(zip(card.class_names, card.palette, strict=True))
    assert named["building"] == (128, 0, 0) and named["road"] == (0, 0, 128)
    assert named["car"] == (128, 128, 0) and named["sky"] == (0, 128, 128)
    assert named["bicycle"] == (64, 0, 0)


def test_palette_png_building_pixels_decode_to_building(root):
    path = root / "val" / "label" / "0346_image0.png"
    with Image.open(path) as im:
        assert im.mode == "P"  # palette PNG, index = file class
        ids = np.array(im)
    ds = ZJURGBP(root, "val", x="aolp")
    mask = ds[1]["mask"].numpy()
    building = ds.card.class_names.index("building")
    assert (ids == 1).any() and np.array_equal(mask == building, ids == 1)
    assert np.array_equal(mask == ds.card.class_names.index("road"), ids == 4)


def test_an_rgb_copy_of_the_labels_decodes_alike(root, tmp_path):
    copy = tmp_path / "zju"
    shutil.copytree(root, copy)
    for path in (copy / "val" / "label").glob("*.png"):
        Image.open(path).convert("RGB").save(path)
    palette = [ZJURGBP(root, "val", x="aolp")[i]["mask"] for i in range(2)]
    rgb = [ZJURGBP(copy, "val", x="aolp")[i]["mask"] for i in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(palette, rgb, strict=True))


def test_colours_decode_to_classes_and_black_is_ignored(root):
    ds = ZJURGBP(root, "val", x="aolp")
    stored = np.array(Image.open(root / "val" / "label" / "0346_image0.png").convert("RGB"))
    file_ids = np.full(stored.shape[:2], -1)
    for k, colour in enumerate(COLOURS):
        file_ids[(stored == colour).all(-1)] = k
    assert (file_ids >= 0).all() and (file_ids == 0).any()
    mask = ds[1]["mask"].numpy()
    assert np.array_equal(mask, np.where(file_ids == 0, 255, file_ids - 1))


def test_aolp_as_stored_and_on_unit_scale(root):
    ref = ZJURGBP(root, "train").samples[2]
    aolp = np.moveaxis(np.array(Image.open(root / "train/aolp2/0003_aolp.png")), -1, 0)
    raw = ZJURGBP(root, "train", x="aolp")[2]["image_x"].numpy()  # x_norm scale 1: as stored
    assert np.array_equal(raw, aolp.astype(np.float32))
    unit = ZJURGBP(root, "train", x="aolp", encodings={"aolp": "unit"})
    assert np.allclose(unit.read_modality("aolp", ref), aolp / 255.0)


def test_damaged_label_colour_names_the_file(root, tmp_path):
    copy = tmp_path / "zju"
    shutil.copytree(root, copy)
    path = copy / "train" / "label" / "0002_image0.png"
    arr = np.array(Image.open(path).convert("RGB"))
    arr[3, 5] = (1, 2, 3)
    Image.fromarray(arr).save(path)
    with pytest.raises(LabelColourError, match=r"0002_image0.png: colour \(1, 2, 3\)"):
        ZJURGBP(copy, "train", x="aolp")[1]


def test_batches_augment_dry_run_and_one_training_step(root, tmp_path, capsys):
    cfg = load_config("zju_rgbp_baseline", [f"data.root={root}", *TINY])
    dm = make_datamodule(cfg.data, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_x"].shape == (2, 3, 32, 32)
    out = dm.train_aug(batch)
    assert set(out["mask"].unique().tolist()) <= {255, *range(8)}
    report = dry_run_report("zju_rgbp_baseline", root, capsys)
    assert "data val: 2 samples ('val'" in report and "data test: 2 samples ('test'" in report
    assert "missing" not in report
    ckpt = train_one_step("zju_rgbp_baseline", root, tmp_path / "run", *TINY)
    assert ckpt["rsfusion"]["classes"][1] == "glass"
    assert ckpt["rsfusion"]["model"]["num_classes"] == 8
