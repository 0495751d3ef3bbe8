"""MCubeS on the fake release: list_folder splits, AoLP from two files, NIR warp mask and left
border, DoLP/NIR encodings, one training step."""

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
from rsfusion.data.natural.mcubes import MCubeS
from rsfusion.errors import SampleFileError
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = ["data.batch_size=2", "data.num_workers=0", "data.crop=[32,32]", "trainer.accelerator=cpu"]
TRAIN = ["outscene1208_2_0000000150", "outscene1208_2_0000000180"]
VAL = ["outscene1211_1_0000000090"]
TEST = ["outscene1214_3_0000000030", "outscene1214_3_0000000060"]
BORDER = 4  # the fixture's NIR warp is invalid in the left 4 columns


@pytest.fixture(scope="module")
def root() -> Path:
    return Path(__file__).parents[1] / "mcubes"


def png(root: Path, folder: str, name: str) -> np.ndarray:
    return np.array(Image.open(root / folder / f"{name}.png"))


def test_card_release_facts():
    card = load_card("mcubes")
    assert card.num_classes == 20 and card.class_names[3] == "road_marking"
    assert card.image_size == (1024, 1224)
    counts = [card.sample_split(None, p).count for p in ("train", "val", "test")]
    assert counts == [302, 96, 102]
    assert card.modality("aolp").encoding().bands == ("aolp_sin", "aolp_cos", "aolp_sin")


def test_splits_follow_list_folder(root):
    assert [r.id for r in MCubeS(root, "train", x="aolp").samples] == TRAIN
    assert [r.id for r in MCubeS(root, "val", x="aolp").samples] == VAL
    assert [r.id for r in MCubeS(root, "test", x="aolp").samples] == TEST
    cmnext = MCubeS(root, "val", x="aolp", preset="cmnext")  # CMNeXt validates on test.txt
    assert cmnext.part == "test" and [r.id for r in cmnext.samples] == TEST


def test_left_border_is_dropped_and_warp_invalid_pixels_ignored(root):
    ds = MCubeS(root, "train", x="nir")
    sample = ds[0]
    rgb = png(root, "polL_color", TRAIN[0])
    gt = png(root, "GT", TRAIN[0]).astype(np.int64)
    assert sample["image"].shape == (3, 32, 40 - BORDER)
    assert np.array_equal(sample["image"].numpy(), np.moveaxis(rgb, -1, 0)[:, :, BORDER:])
    assert np.array_equal(sample["mask"].numpy(), gt[:, BORDER:])  # 255 stays ignore
    assert (gt == 255).any() and (gt[:, BORDER:] < 20).any()


def test_aolp_stacks_sin_and_cos_dolp_and_nir_encodings(root):
    ref = MCubeS(root, "test").samples[1]
    sin = np.load(root / "polL_aolp_sin" / f"{ref.id}.npy")[:, BORDER:]
    cos = np.load(root / "polL_aolp_cos" / f"{ref.id}.npy")[:, BORDER:]
    dolp = np.load(root / "polL_dolp" / f"{ref.id}.npy")[:, BORDER:]
    nir = png(root, "NIR_warped", ref.id)[:, BORDER:] / 255.0

    def read(x, encoding=None):
        return MCubeS(root, "test", x=x, encodings={x: encoding}).read_modality(x, ref)

    assert np.array_equal(read("aolp"), np.stack([sin, cos, sin]))  # sincos3, the default
    assert np.array_equal(read("aolp", "sincos"), np.stack([sin, cos]))
    assert np.allclose(read("aolp", "sincos")[0] ** 2 + read("aolp", "sincos")[1] ** 2, 1.0)
    assert np.array_equal(read("dolp"), np.stack([dolp] * 3))
    assert np.allclose(read("nir", "unit")[0], nir) and read("nir").shape[0] == 3


@pytest.fixture
def damaged(root, tmp_path) -> Path:
    """A copy whose first training set's NIR warp is also invalid in an inner 4 x 6 patch."""
    copy = tmp_path / "mcubes"
    shutil.copytree(root, copy)
    path = copy / "NIR_warped_mask" / f"{TRAIN[0]}.png"
    mask = np.array(Image.open(path))
    mask[10:14, 20:26] = 255
    Image.fromarray(mask).save(path)
    return copy


def test_nir_is_unknown_and_labels_ignored_where_the_warp_is_invalid(damaged, monkeypatch):
    ds = MCubeS(damaged, "train", x="nir", encodings={"nir": "unit"})
    nir = ds.read_modality("nir", ds.samples[0])[0]
    inner = np.zeros((32, 40 - BORDER), bool)
    inner[10:14, 20 - BORDER : 26 - BORDER] = True
    assert np.array_equal(np.isnan(nir), inner)
    mask = ds[0]["mask"].numpy()
    assert (mask[inner] == 255).all() and (mask[~inner] != 255).any()
    assert float(ds[0]["image_x"][0][torch.from_numpy(inner)].abs().max()) == 0.0
    monkeypatch.setattr(MCubeS, "left_offset", 2)  # at most left_offset columns are dropped
    capped = ds[0]
    assert capped["image"].shape[-1] == 38 and (capped["mask"][:, :2] == 255).all()


def test_missing_cos_file_is_reported(damaged):
    (damaged / "polL_aolp_cos" / f"{TRAIN[1]}.npy").unlink()
    ds = MCubeS(damaged, "train", x="aolp")
    assert ds.missing_files() == [str(damaged / "polL_aolp_cos" / f"{TRAIN[1]}.npy")]
    with pytest.raises(SampleFileError, match="polL_aolp_cos"):
        ds[1]


def test_batches_augment_and_dry_run_for_each_x(root, capsys):
    cfg = load_config("mcubes_baseline", [f"data.root={root}", *TINY])
    dm = make_datamodule(cfg.data, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_x"].shape == (2, 3, 32, 32)
    out = dm.train_aug(batch)
    assert set(out["mask"].unique().tolist()) <= {255, *range(20)}
    assert abs(float(out["image"].mean())) < 3
    for x in ("aolp", "dolp", "nir"):
        out = dry_run_report("mcubes_baseline", root, capsys, f"data.x={x}")
        assert "missing" not in out and "(the release has 302)" in out


def test_one_training_step(root, tmp_path):
    ckpt = train_one_step(
        "mcubes_baseline", root, tmp_path / "run", *TINY, "data.x_encoding=sincos"
    )
    meta = ckpt["rsfusion"]
    assert meta["x_bands"] == ["aolp_sin", "aolp_cos"]
    assert meta["model"]["x_channels"] == 2 and meta["model"]["num_classes"] == 20
