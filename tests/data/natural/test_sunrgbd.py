"""SUN RGB-D on the fake release: varying sizes, CPU crops, toolbox depth, one training step."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from rsfusion.catalog import load_card
from rsfusion.cli.train import main
from rsfusion.config import load_config
from rsfusion.data.factory import make_datamodule
from rsfusion.data.natural.sunrgbd import SUNRGBD
from tests.data.natural.helpers import dry_run_report, train_one_step

TINY = [
    "data.batch_size=2",
    "data.num_workers=0",
    "data.crop=[32,32]",
    "trainer.accelerator=cpu",
]


def test_card_has_37_classes_official_split_and_varying_size():
    card = load_card("sunrgbd")
    assert card.num_classes == 37 and card.class_names[23:25] == ["fridge", "tv"]
    assert card.image_size is None
    assert (card.sample_split(None, "train").count, card.sample_split(None, "test").count) == (
        5285,
        5050,
    )


def test_samples_keep_their_own_sizes(sunrgbd_root):
    ds = SUNRGBD(sunrgbd_root, "train", x="depth")
    assert [r.id for r in ds.samples] == ["img-005051", "img-005052", "img-005053"]
    shapes = [tuple(ds[i]["image"].shape[1:]) for i in range(len(ds))]
    assert shapes == [(40, 56), (44, 52), (36, 60)]
    assert all(ds[i]["mask"].shape == ds[i]["image_x"].shape[1:] for i in range(3))


def test_metres_undo_the_toolbox_bit_rotation(sunrgbd_root):
    ds = SUNRGBD(sunrgbd_root, "train", x="depth", encodings={"depth": "metres"})
    ref = ds.samples[0]
    depth = ds.read_modality("depth", ref)[0]
    stored = np.array(Image.open(sunrgbd_root / "Depth" / f"{ref.id}.png"))
    labels = np.array(Image.open(sunrgbd_root / "labels" / f"{ref.id}.png"))
    assert np.array_equal(np.isnan(depth), stored == 0)
    known = depth[np.isfinite(depth)]
    assert known.min() >= 0.4 and known.max() <= 8.0  # raw stored values would be ~8x larger
    furniture = np.isin(labels, (5, 7, 14)) & np.isfinite(depth)
    assert np.ptp(depth[furniture]) < 1e-6 and 1.0 <= depth[furniture][0] <= 2.0


def test_training_batches_are_cpu_crops_eval_batches_padded(sunrgbd_root):
    cfg = load_config("sunrgbd_baseline", [f"data.root={sunrgbd_root}", *TINY])
    dm = make_datamodule(cfg.data, seed=0)
    dm.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image_x"].shape == (2, 3, 32, 32)
    aug = dm.train_aug(batch)
    assert aug["image"].shape == (2, 3, 32, 32) and aug["mask"].dtype == torch.long
    val = list(dm.val_dataloader())  # eval_batch_size 1: each test image padded to /32 alone
    assert [tuple(b["image"].shape[-2:]) for b in val] == [(64, 64), (64, 64)]
    assert int((val[0]["mask"] != 255).sum()) <= 48 * 40


def test_dry_run_and_one_training_step(sunrgbd_root, tmp_path, capsys):
    out = dry_run_report("sunrgbd_baseline", sunrgbd_root, capsys)
    assert "data train: 3 samples" in out and "(the release has 5285)" in out
    assert "data test: 2 samples" in out
    ckpt = train_one_step(
        "sunrgbd_baseline", sunrgbd_root, tmp_path / "run", *TINY, "trainer.limit_val_batches=0"
    )
    assert ckpt["rsfusion"]["crop"] == [32, 32]
    assert ckpt["rsfusion"]["classes"][-1] == "bag"


def test_cli_errors_name_the_fix(sunrgbd_root, tmp_path, capsys):
    def err(*sets: str) -> str:
        assert main(["--cfg", "sunrgbd_baseline", "--dry-run", "--set", *sets]) == 2
        return capsys.readouterr().err

    missing = err(f"data.root={tmp_path}")
    assert "missing split file" in missing and str(tmp_path / "train.txt") in missing
    assert "choose one of ['metres', 'metres3', 'raw', 'repeat3']" in err(
        f"data.root={sunrgbd_root}", "data.x_encoding=hha"
    )
    assert "crop must be [height, width]" in err(f"data.root={sunrgbd_root}", "data.crop=[32]")


def test_dformer_rgba_depth_reads_one_channel_and_refuses_metres(sunrgbd_root, tmp_path):
    import shutil

    import pytest
    from matplotlib.image import imsave

    from rsfusion.errors import EncodingError

    root = tmp_path / "SUNRGBD"
    shutil.copytree(sunrgbd_root, root, ignore=shutil.ignore_patterns("*.py"))
    ref = SUNRGBD(root, "train").samples[0]
    toolbox = SUNRGBD(root, "train", x="depth", encodings={"depth": "metres"})
    metres = toolbox.read_modality("depth", ref)[0]
    imsave(root / "Depth" / f"{ref.id}.png", np.nan_to_num(metres), cmap="Greys_r")  # DFormer
    with Image.open(root / "Depth" / f"{ref.id}.png") as im:
        assert im.mode == "RGBA"
        grey = np.array(im)[..., 0]
    ds = SUNRGBD(root, "train", x="depth")  # repeat3, the default
    x = ds.read_modality("depth", ref)
    assert x.shape == (3, 40, 56) and np.array_equal(x[0], grey.astype(np.float32))
    assert ds[0]["image_x"].shape == (3, 40, 56)
    with pytest.raises(EncodingError, match=r"stores uint8; 8-bit depth .*no metric scale"):
        toolbox.read_modality("depth", ref)
