"""UrbanLF (Real + Syn) on the fake release: folder ids, the central view and a chosen other
view, labels from label.npy / 5_5_label.npy, per-sample CPU crops of unequal sizes, one step."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfusion.catalog import load_card
from rsfusion.config import load_config
from rsfusion.data.factory import make_datamodule
from rsfusion.data.natural.base import NaturalRGBXDataset, dataset_class_for
from rsfusion.errors import SampleFormatError
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = ["data.batch_size=2", "data.num_workers=0", "data.crop=[32,32]", "trainer.accelerator=cpu"]
REAL, SYN = "UrbanLF_Real/train/Image17", "UrbanLF_Syn/train/Image3"


@pytest.fixture(scope="module")
def root() -> Path:
    return Path(__file__).parents[1] / "urbanlf"


def dataset(root: Path, split: str = "train", **kwargs) -> NaturalRGBXDataset:
    return dataset_class_for("urbanlf")(root, split, **kwargs)


def view(root: Path, sample: str, name: str) -> np.ndarray:
    return np.moveaxis(np.array(Image.open(root / sample / f"{name}.png")), -1, 0)


def test_card_offers_every_other_view_as_x():
    card = load_card("urbanlf")
    assert card.num_classes == 14 and card.class_names[12:] == ["rider", "sky"]
    views = {m for m in card.modalities if m.startswith("view_")}
    assert len(views) == 80 and "view_5_5" not in views and {"view_1_1", "view_9_9"} <= views
    assert card.modality("view_3_7").patterns == ("{id}/3_7.png",)
    assert card.image_size is None and set(card.conditions) == {"real", "syn"}
    counts = [card.sample_split(None, p).count for p in ("train", "val", "test")]
    assert counts == [752, 108, 108]


def test_samples_are_folders_of_both_parts(root):
    assert [r.id for r in dataset(root).samples] == [REAL, SYN]
    val = ["UrbanLF_Real/val/Image301", "UrbanLF_Syn/val/Image90"]
    assert [r.id for r in dataset(root, "val").samples] == val
    assert [r.id for r in dataset(root, "test").samples] == val  # test labels are withheld
    assert [r.id for r in dataset(root, condition="real").samples] == [REAL]
    assert [r.id for r in dataset(root, "val", condition="syn").samples] == val[1:]


def test_rgb_is_the_central_view_and_x_the_chosen_one(root):
    ds = dataset(root, x="view_5_9")  # x_norm scale 1: values as stored
    sample = ds[0]
    central = view(root, REAL, "5_5")
    assert np.array_equal(sample["image"].numpy(), central)
    right = sample["image_x"].numpy()
    assert np.array_equal(right, view(root, REAL, "5_9"))
    assert np.array_equal(right[:, :, :-4], central[:, :, 4:])  # 4 views right: 4 px parallax
    first = dataset(root, x="view_1_1")[0]["image_x"].numpy()
    assert np.array_equal(first, view(root, REAL, "1_1")) and not np.array_equal(first, right)


def test_labels_of_both_parts_shift_by_one(root):
    ds = dataset(root, x="view_1_1")
    for i, name in enumerate((f"{REAL}/label.npy", f"{SYN}/5_5_label.npy")):
        stored = np.load(root / name).astype(np.int64)
        assert stored.min() >= 1 and np.array_equal(ds[i]["mask"].numpy(), stored - 1)


def test_syn_disparity(root):
    ds = dataset(root, x="disparity", condition="syn")
    stored = np.load(root / SYN / "5_5_disparity.npy")
    assert np.array_equal(ds.read_modality("disparity", ds.samples[0]), np.stack([stored] * 3))
    assert dataset(root, x="disparity").missing_files() == [str(root / REAL / "5_5_disparity.npy")]


@pytest.fixture
def unequal(root, tmp_path) -> Path:
    """A copy whose Syn training sample is 2x larger (32 x 48), like Syn 480x640 vs Real."""
    copy = tmp_path / "urbanlf"
    shutil.copytree(root, copy)
    folder = copy / SYN
    for name in ("5_5", "1_1"):
        img = Image.open(folder / f"{name}.png")
        img.resize((48, 32), Image.NEAREST).save(folder / f"{name}.png")
    label = np.load(folder / "5_5_label.npy")
    np.save(folder / "5_5_label.npy", np.repeat(np.repeat(label, 2, 0), 2, 1))
    return copy


def test_unequal_sizes_are_cropped_per_sample_before_batching(unequal):
    ds = dataset(unequal, x="view_1_1")
    assert [tuple(ds[i]["image"].shape[1:]) for i in range(2)] == [(16, 24), (32, 48)]
    cfg = load_config("urbanlf_baseline", [f"data.root={unequal}", *TINY])
    dm = make_datamodule(cfg.data, seed=0)
    dm.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_x"].shape == (2, 3, 32, 32)
    out = dm.train_aug(batch)
    assert set(out["mask"].unique().tolist()) <= {255, *range(14)}
    assert (out["mask"] != 255).any()


def test_dry_run_and_one_training_step(root, tmp_path, capsys):
    for x in ("view_1_1", "view_9_5"):
        out = dry_run_report("urbanlf_baseline", root, capsys, f"data.x={x}")
        assert "missing" not in out and "(the release has 752)" in out
    meta = train_one_step("urbanlf_baseline", root, tmp_path / "run", *TINY)["rsfusion"]
    assert meta["x_modality"] == "view_1_1"
    assert meta["crop"] == [32, 32] and meta["model"]["num_classes"] == 14


def _generator():
    spec = importlib.util.spec_from_file_location("fake_urbanlf", Path(__file__).parents[1]
                                                  / "urbanlf" / "data.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cmnext_copy_real_and_syn_folders_png_labels_and_255_void(root, tmp_path):
    copy = tmp_path / "UrbanLF"
    _generator().generate_cmnext(copy)
    assert sorted(p.name for p in copy.iterdir()) == ["Syn", "real"]
    ds = dataset(copy, x="view_1_1")
    assert [r.id for r in ds.samples] == ["Syn/train/Image3", "real/train/Image17"]
    assert [r.id for r in dataset(copy, condition="real").samples] == ["real/train/Image17"]
    assert [r.id for r in dataset(copy, "val", condition="syn").samples] == ["Syn/val/Image90"]
    assert not (copy / "real/train/Image17/label.npy").exists()
    official = dataset(root, x="view_1_1")
    real = ds[1]["mask"]  # decoded from label.png, as CMNeXt reads Real labels
    assert torch.equal(real, official[0]["mask"])
    syn = ds[0]["mask"].numpy()  # 5_5_label.npy with a block of 255: void
    assert (syn[:4, :6] == 255).all()
    assert np.array_equal(syn[4:], official[1]["mask"].numpy()[4:])
    assert not ds.missing_files()


def test_a_colour_outside_the_palette_names_the_png(tmp_path):
    copy = tmp_path / "UrbanLF"
    _generator().generate_cmnext(copy)
    path = copy / "real/train/Image17/label.png"
    arr = np.array(Image.open(path))
    arr[2, 3] = (1, 2, 3)
    Image.fromarray(arr).save(path)
    with pytest.raises(SampleFormatError, match=r"label.png: colour \(1, 2, 3\) at pixel \(row 2"):
        dataset(copy, x="view_1_1", condition="real")[0]
