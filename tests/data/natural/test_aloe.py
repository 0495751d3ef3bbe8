"""A real RGB-D pair through the NYU-style loader: Middlebury 2006 "Aloe" (via OpenCV's sdist).

The left view and its ground-truth disparity (tests/data/aloe, scripts/fetch_aloe.py) are
resized to 96x128 and laid out as a one-sample NYU Depth V2 release: depth-like X = 100 / d
metres (16-bit mm, 0 where the disparity is unknown), labels = disparity quantised into four
classes (0 = unknown). Checked: alignment (the unknown pixels land exactly where the ground
truth has none; depth edges follow image edges, a shifted depth does not), augmentation keeps
RGB, X and mask together, and one training step runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfusion.cli.train import main
from rsfusion.data.augment import PairedAugment
from rsfusion.data.natural.nyudepthv2 import NYUDepthV2
from rsfusion.data.normalise import XNorm

HEIGHT, WIDTH = 96, 128


def aligned_pair(aloe_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """RGB (96, 128, 3) and disparity (96, 128): resized to width 128, centre rows kept."""
    rgb, gt = Image.open(aloe_root / "aloeL.jpg"), Image.open(aloe_root / "aloeGT.png")
    assert rgb.size == gt.size == (1282, 1110) and gt.mode == "L"
    height = round(rgb.height * WIDTH / rgb.width)
    top = (height - HEIGHT) // 2
    rgb_small = np.asarray(rgb.resize((WIDTH, height), Image.BILINEAR))[top : top + HEIGHT]
    gt_small = np.asarray(gt.resize((WIDTH, height), Image.NEAREST))[top : top + HEIGHT]
    return rgb_small, gt_small


@pytest.fixture(scope="module")
def release(aloe_root, tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("aloe_nyu")
    rgb, disparity = aligned_pair(aloe_root)
    valid = disparity > 0
    depth_mm = np.where(valid, np.round(100_000.0 / np.maximum(disparity, 1)), 0)
    edges = np.quantile(disparity[valid], [0.25, 0.5, 0.75])
    label = np.where(valid, np.digitize(disparity, edges) + 1, 0).astype(np.uint8)  # 1..4
    for folder in ("RGB", "Depth", "Label"):
        (root / folder).mkdir()
    Image.fromarray(rgb).save(root / "RGB/1.jpg", quality=95)
    Image.fromarray(depth_mm.astype(np.uint16)).save(root / "Depth/1.png")
    Image.fromarray(label).save(root / "Label/1.png")
    for name in ("train.txt", "test.txt"):
        (root / name).write_text("RGB/1.jpg\tLabel/1.png\n")
    return root, disparity


def edge_strength(a: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(a, axis=0))[:, :-1] + np.abs(np.diff(a, axis=1))[:-1, :]


def edge_correlation(image: np.ndarray, depth: np.ndarray) -> float:
    ge, gd = edge_strength(image), edge_strength(depth)
    ok = np.isfinite(gd)
    return float(np.corrcoef(ge[ok], gd[ok])[0, 1])


def test_real_pair_loads_aligned(release):
    root, disparity = release
    unknown = disparity == 0
    assert 0.02 < unknown.mean() < 0.06  # about 3.9% of the 96x128 pixels have no disparity
    ds = NYUDepthV2(root, "train", x="depth", encodings={"depth": "metres"})
    sample = ds[0]
    assert sample["image"].shape == (3, HEIGHT, WIDTH) and sample["image_x"].shape == (1, 96, 128)
    depth = ds.read_modality("depth", ds.samples[0])[0]
    assert np.array_equal(np.isnan(depth), unknown)  # unknown disparity -> NaN, nowhere else
    assert np.array_equal(sample["mask"].numpy() == 255, unknown)  # and ignored by the loss
    assert set(sample["mask"].unique().tolist()) == {0, 1, 2, 3, 255}
    known = depth[~unknown]
    assert np.allclose(known, 100.0 / disparity[~unknown], atol=6e-4)  # 1 mm storage step
    lum = sample["image"].numpy().mean(0)
    aligned = edge_correlation(lum, depth)
    shifted = max(edge_correlation(lum, np.roll(depth, s, axis=1)) for s in (3, 6, 12))
    assert aligned > 0.25 and aligned > shifted + 0.15


def test_augmentation_keeps_rgb_depth_and_mask_together(release):
    root, disparity = release
    ds = NYUDepthV2(
        root, "train", x="depth", encodings={"depth": "metres"}, x_norm=XNorm("scale", 1.0)
    )
    sample = ds[0]
    batch = {k: v[None] for k, v in sample.items() if torch.is_tensor(v)}
    out = PairedAugment(hflip=1.0, vflip=0.0, rot90=False)(batch)
    flipped_unknown = torch.from_numpy(disparity == 0).flip(-1)
    assert torch.equal(out["mask"][0] == 255, flipped_unknown)
    assert torch.equal(out["image_x"][0, 0] == 0, flipped_unknown)  # depth > 0.4 m elsewhere
    assert torch.equal(out["image"][0], sample["image"].flip(-1))


def test_one_training_step_on_the_real_pair(release, tmp_path, monkeypatch):
    root, _ = release
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            ["--cfg", "nyudepthv2_baseline", "--out", str(tmp_path / "run"), "--set",
             f"data.root={root}", "data.x_encoding=metres3", "data.batch_size=1",
             "data.num_workers=0", "trainer.accelerator=cpu", "trainer.max_steps=1",
             "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
             "optim.warmup_steps=0"]
        )  # fmt: skip
    assert code == 0
    ckpt = torch.load(
        tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["global_step"] == 1 and ckpt["rsfusion"]["x_encoding"] == "metres3"
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(w).all() for w in weights)
