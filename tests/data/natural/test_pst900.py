"""PST900 on the fake release: thermal 8/16-bit, depth, CPU crops, one training step, dry run."""

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

TINY = ["data.batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu", "data.crop=[16,32]"]
TRAIN = [
    "31_bag1a_rect_rgb_frame0000000007",
    "31_bag1a_rect_rgb_frame0000000042",
    "32_bag2_rect_rgb_frame0000000113",
]
TEST = ["40_bag3_rect_rgb_frame0000000005", "40_bag3_rect_rgb_frame0000000070"]


@pytest.fixture(scope="module")
def pst900_root() -> Path:
    """tests/data/pst900: 3 train and 2 test frames of 24x40, official folder layout."""
    return Path(__file__).parents[1] / "pst900"


def dataset(root: Path, split: str = "train", x: str = "thermal", enc: str | None = None):
    return NaturalRGBXDataset(root, split, card="pst900", x=x, encodings={x: enc})


def stored(root: Path, split: str, folder: str, name: str) -> np.ndarray:
    return np.array(Image.open(root / split / folder / f"{name}.png"))


def test_card_names_every_x_modality():
    card = load_card("pst900")
    assert card.num_classes == 5 and card.class_names == [
        "background", "fire_extinguisher", "backpack", "hand_drill", "survivor",
    ]  # fmt: skip
    assert set(card.modalities) == {"rgb", "thermal", "thermal_raw", "depth"}
    assert card.image_size == (720, 1280) and card.metric_classes == list(range(5))
    assert (card.sample_split(None, "train").count, card.sample_split(None, "test").count) == (
        597,
        288,
    )
    depth = load_config("pst900_baseline", ["data.x=depth", "data.x_encoding=metres"]).data
    assert model_card(depth).modality("depth").bands == ("depth_m",)


def test_splits_load_with_every_x(pst900_root):
    assert [r.id for r in dataset(pst900_root).samples] == TRAIN
    assert [r.id for r in dataset(pst900_root, "test").samples] == TEST
    assert dataset(pst900_root, "val").part == "test"
    for x in ("thermal", "thermal_raw", "depth"):
        for split in ("train", "test"):
            ds = dataset(pst900_root, split, x)
            for i in range(len(ds)):
                s = ds[i]
                assert s["image"].shape == s["image_x"].shape == (3, 24, 40), (x, split)
                assert np.array_equal(
                    s["mask"].numpy(), stored(pst900_root, split, "labels", ds.samples[i].id)
                )


def test_thermal_8_and_16_bit_scaling(pst900_root):
    ref = dataset(pst900_root).samples[2]
    thermal = stored(pst900_root, "train", "thermal", ref.id).astype(np.float64)
    raw = stored(pst900_root, "train", "thermal_raw", ref.id)
    assert raw.dtype == np.uint16 and raw.max() > 255
    unit3 = dataset(pst900_root, enc="unit3").read_modality("thermal", ref)
    assert unit3.shape == (3, 24, 40) and np.allclose(unit3, thermal / 255.0)
    raw_unit = dataset(pst900_root, x="thermal_raw", enc="unit").read_modality("thermal_raw", ref)
    assert raw_unit.shape == (1, 24, 40) and np.allclose(raw_unit[0], raw / 65535.0)
    holes = dataset(pst900_root, enc="unit3_holes")
    h = holes.read_modality("thermal", ref)
    assert np.array_equal(np.isnan(h[0]), thermal == 0) and (thermal[:, :2] == 0).all()
    x = holes[2]["image_x"].numpy()  # the sample: unknown -> 0, the rest stored / 255
    assert (x[:, :, :2] == 0).all() and np.allclose(x[:, :, 2:], thermal[:, 2:] / 255.0)


def test_depth_metres(pst900_root):
    ref = dataset(pst900_root, "test").samples[0]
    depth = stored(pst900_root, "test", "depth", ref.id).astype(np.float64)
    m = dataset(pst900_root, "test", "depth", "metres").read_modality("depth", ref)
    assert m.shape == (1, 24, 40) and np.allclose(m[0], depth / 1000.0)
    assert float(m.min()) > 0.4 and float(m.max()) < 9.1  # the fake's 0.5-9 m ramp


def test_training_batches_are_cpu_crops(pst900_root):
    cfg = load_config("pst900_baseline", [f"data.root={pst900_root}", *TINY])
    dm = make_datamodule(cfg.data, seed=0)
    dm.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == batch["image_x"].shape == (2, 3, 32, 32)  # 16x32 padded
    assert torch.all(batch["mask"][:, 16:] == 255)
    out = dm.train_aug(batch)
    assert out["image"].shape == (2, 3, 32, 32) and set(out["mask"].unique().tolist()) <= {
        255, *range(5),
    }  # fmt: skip
    val = next(iter(dm.val_dataloader()))  # whole test images, padded to /32
    assert val["image"].shape == (2, 3, 32, 64) and torch.all(val["mask"][:, 24:] == 255)
    assert dm.describe()["crop"] == [16, 32] and dm.describe()["x_encoding"] == "unit3"


def test_dry_run_and_one_training_step(pst900_root, tmp_path, capsys):
    out = dry_run_report("pst900_baseline", pst900_root, capsys)
    assert "data train: 3 samples ('train' of preset 'official') (the release has 597)" in out
    assert "data test: 2 samples" in out and "missing" not in out
    dry_run_report(
        "pst900_baseline", pst900_root, capsys, "data.x=depth", "data.x_encoding=metres3"
    )
    ckpt = train_one_step(
        "pst900_baseline", pst900_root, tmp_path / "run", *TINY, "trainer.limit_val_batches=0"
    )
    meta = ckpt["rsfusion"]
    assert meta["card"] == "pst900" and meta["crop"] == [16, 32]
    assert meta["model"]["num_classes"] == 5 and meta["x_bands"] == ["thermal"] * 3
