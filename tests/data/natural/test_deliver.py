"""DeLiVER on the fake release: path ids, conditions, X modalities, event resize, one step."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rsfusion.catalog import SplitSource, load_card
from rsfusion.cli.train import main
from rsfusion.config import load_config
from rsfusion.data.factory import make_datamodule
from rsfusion.data.natural.base import decode_index_labels
from rsfusion.data.natural.deliver import DELIVER, pattern_regex, resize_nearest
from rsfusion.errors import SampleFormatError
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = ["data.batch_size=2", "data.num_workers=0", "data.crop=[32,32]", "trainer.accelerator=cpu"]
SPLITS = {
    "train": ["cloud/train/MAP_1_point102/110100", "night/train/MAP_3_point20_motionblur/001200"],
    "val": ["fog/val/MAP_5_point36_eventlowres/004500"],
    "test": ["rain/test/MAP_10_point102/045050", "sun/test/MAP_10_point102_lidarjitter/045060"],
}


@pytest.fixture(scope="module")
def root() -> Path:
    return Path(__file__).parents[1] / "deliver"


def stored(root: Path, modality: str, sample_id: str, suffix: str) -> np.ndarray:
    return np.array(Image.open(root / modality / f"{sample_id}_{suffix}_front.png"))


def test_card_release_facts():
    card = load_card("deliver")
    assert card.num_classes == 25 and card.class_names[9] == "Cars"
    assert card.image_size == (1042, 1042) and card.ignore_index == 255
    assert set(card.modalities) == {"rgb", "depth", "hha", "lidar", "event"}
    counts = [card.sample_split(None, p).count for p in ("train", "val", "test")]
    assert counts == [3983, 2005, 1897]
    assert len(card.conditions) == 10 and len(set(card.palette)) == 25


def test_ids_are_paths_read_back_from_the_rgb_files(root):
    for split, ids in SPLITS.items():
        ds = DELIVER(root, split, x="depth")
        assert [r.id for r in ds.samples] == ids and {r.split for r in ds.samples} == {split}
    rx = pattern_regex("{split}/0/{id}_image0_0.png")
    assert rx.fullmatch("val/0/0345_image0_0").groupdict() == {"split": "val", "id": "0345"}
    assert rx.fullmatch("val/aolp2/0345_aolp") is None


def test_a_glob_of_other_files_is_refused(root):
    card = load_card("deliver")
    glob = SplitSource("glob", "semantic/*/train/*/*_semantic_front.png", id_from="path")
    wrong = replace(
        card, sample_splits={"official": {**card.sample_splits["official"], "train": glob}}
    )
    with pytest.raises(SampleFormatError, match="RGB pattern 'img/{id}_rgb_front.png'"):
        DELIVER(root, "train", card=wrong)


def test_conditions_pick_weathers_and_sensor_failures(root):
    def ids(split, condition):
        return [r.id for r in DELIVER(root, split, x="event", condition=condition).samples]

    assert ids("train", "night") == [SPLITS["train"][1]]
    assert ids("train", "motionblur") == [SPLITS["train"][1]] and ids("train", "fog") == []
    assert ids("test", "lidarjitter") == [SPLITS["test"][1]]
    assert ids("test", "rain") == [SPLITS["test"][0]]
    with pytest.raises(KeyError, match="no condition 'snow'"):
        DELIVER(root, "train", condition="snow")


def test_labels_come_from_the_red_channel(root):
    ds = DELIVER(root, "test", x="depth")
    semantic = stored(root, "semantic", ds.samples[0].id, "semantic")
    mask = ds[0]["mask"].numpy()
    red = semantic[..., 0].astype(np.int64)
    assert (red == 0).any() and np.array_equal(mask, np.where(red == 0, 255, red - 1))
    card = ds.card
    assert card.labels is not None
    decoded = decode_index_labels(np.array([[0, 1, 25, 255]]), card.labels, 25, 255, "t")
    assert decoded.tolist() == [[255, 0, 24, 255]]  # CMNeXt: 255 -> 0, then - 1


def test_x_encodings_decode_the_stored_files(root):
    sid = SPLITS["train"][0]
    ref = DELIVER(root, "train").samples[0]
    depth = stored(root, "depth", sid, "depth").astype(np.float32)

    def read(x, encoding=None):
        return DELIVER(root, "train", x=x, encodings={x: encoding}).read_modality(x, ref)

    assert np.array_equal(read("depth"), np.stack([depth] * 3))  # repeat3, the default
    assert np.allclose(read("depth", "unit")[0], depth / 255)
    assert np.array_equal(read("hha"), np.moveaxis(stored(root, "hha", sid, "depth"), -1, 0))
    lidar = stored(root, "lidar", sid, "lidar")
    returns = read("lidar", "returns")
    assert np.array_equal(np.isnan(returns), np.moveaxis(lidar, -1, 0) == 0)
    assert np.array_equal(read("lidar"), np.moveaxis(lidar, -1, 0))  # as stored: no NaN


def test_low_resolution_events_are_resized_to_the_rgb_nearest(root):
    ds = DELIVER(root, "val", x="event")
    small = stored(root, "event", SPLITS["val"][0], "event")
    assert small.shape == (16, 16, 3)
    event = ds.read_modality("event", ds.samples[0])
    assert event.shape == (3, 32, 32)
    big = np.repeat(np.repeat(np.moveaxis(small, -1, 0), 2, 1), 2, 2)
    assert np.array_equal(event, big)
    assert ds[0]["image_x"].shape == ds[0]["image"].shape  # aligned with the RGB and mask
    odd = torch.arange(35.0).reshape(1, 5, 7)  # nearest as torch (CMNeXt's TF.resize)
    ref = F.interpolate(odd[None], (9, 4), mode="nearest")[0].numpy()
    assert np.array_equal(resize_nearest(odd.numpy(), 9, 4), ref)


def test_batches_are_cpu_crops_that_augment(root):
    cfg = load_config("deliver_baseline", [f"data.root={root}", "data.x=event", *TINY])
    dm = make_datamodule(cfg.data, seed=0)
    dm.setup("fit")
    assert dm.describe()["x_bands"] == ["event_0", "event_1", "event_2"]
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_x"].shape == (2, 3, 32, 32)
    out = dm.train_aug(batch)
    assert out["image"].shape == (2, 3, 32, 32) and abs(float(out["image"].mean())) < 3
    assert set(out["mask"].unique().tolist()) <= {255, *range(25)}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 32, 32) and val["image_x"].shape == (1, 3, 32, 32)


def test_dry_run_for_each_x_modality(root, capsys):
    for x in ("depth", "hha", "lidar", "event"):
        out = dry_run_report("deliver_baseline", root, capsys, f"data.x={x}")
        assert "missing" not in out
        assert "data train: 2 samples ('train' of preset 'official') (the release has 3983)" in out
    # the fixture has night frames for training only: a night run has nothing to validate on
    assert main(["--cfg", "deliver_baseline", "--dry-run", "--set", f"data.root={root}",
                 "data.condition=night"]) == 2  # fmt: skip
    assert "no complete val sample" in capsys.readouterr().err


def test_one_training_step(root, tmp_path):
    meta = train_one_step("deliver_baseline", root, tmp_path / "run", *TINY)["rsfusion"]
    assert meta["card"] == "deliver"
    assert meta["x_modality"] == "depth" and meta["x_encoding"] == "repeat3"
    assert meta["model"]["x_channels"] == 3 and meta["model"]["num_classes"] == 25


def test_rgba_and_one_channel_files_are_read_as_cmnext_does(root, tmp_path):
    import shutil

    copy = tmp_path / "deliver"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.py"))
    sid = SPLITS["train"][0]
    rgb = stored(root, "img", sid, "rgb")
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], -1)).save(copy / "img" / f"{sid}_rgb_front.png")
    lidar = stored(root, "lidar", sid, "lidar")
    Image.fromarray(lidar[..., 0]).save(copy / "lidar" / f"{sid}_lidar_front.png")  # 1 channel
    event = stored(root, "event", sid, "event")
    Image.fromarray(np.concatenate([event, alpha], -1)).save(
        copy / "event" / f"{sid}_event_front.png"
    )
    ref = DELIVER(copy, "train", x="lidar").samples[0]
    as_stored = DELIVER(root, "train", x="lidar")
    assert np.array_equal(
        DELIVER(copy, "train", x="lidar").read_modality("rgb", ref),
        as_stored.read_modality("rgb", ref),
    )  # alpha dropped (io.read_image(...)[:3])
    x = DELIVER(copy, "train", x="lidar").read_modality("lidar", ref)
    assert x.shape[0] == 3 and all(np.array_equal(x[c], lidar[..., 0]) for c in range(3))
    ev = DELIVER(copy, "train", x="event", encodings={"event": "unit"}).read_modality("event", ref)
    assert np.allclose(ev, np.moveaxis(event, -1, 0) / 255.0)
