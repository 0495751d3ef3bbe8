#!/usr/bin/env python3
"""Write a tiny fake NYU Depth V2 release (DFormer's copy) beside this script.

Five 40x56 indoor scenes (wall, floor, one piece of furniture): RGB/<n>.jpg, HHA/<n>.jpg,
Depth/<n>.png, Label/<n>.png (8-bit, 0 = unlabelled around the furniture, 1..40 = classes),
and train.txt (2, 3, 4) / test.txt (1, 8) with the release's "RGB/<n>.jpg<TAB>Label/<n>.png"
lines. Run it to regenerate.

Depth is written as DFormer distributes it. Source: the VCIP-RGBD/DFormer README ("we map the
depth (.npy) to .png via plt.imsave(save_path, np.load(depth), cmap='Greys_r')"), so each
Depth/<n>.png is an 8-bit RGBA PNG with R = G = B = the in-painted depth (metres, no holes)
scaled to 0..255 between the image's own minimum (0, nearest) and maximum (255), alpha 255;
DFormer's loader (utils/dataloader/RGBXDataset.py) reads it with cv2.IMREAD_GRAYSCALE.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.image import imsave  # what plt.imsave calls
from PIL import Image

SHAPE = (40, 56)
TRAIN, TEST = (2, 3, 4), (1, 8)
WALL, FLOOR, FURNITURE = 1, 2, (4, 5, 7)  # stored values: class index + 1 (bed, chair, table)
COLOURS = {
    1: (200, 190, 170),
    2: (120, 90, 60),
    4: (60, 80, 160),
    5: (160, 40, 40),
    7: (90, 140, 70),
}


def scene(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Label values, in-painted depth in metres, RGB and HHA of one synthetic room view."""
    h, w = SHAPE
    rows, cols = np.mgrid[0:h, 0:w]
    horizon = int(rng.integers(16, 24))
    wall_mm = float(rng.uniform(3000, 4200))
    label = np.where(rows < horizon, WALL, FLOOR).astype(np.uint8)
    depth = np.where(
        rows < horizon, wall_mm + 8.0 * (cols - w / 2), wall_mm * horizon / np.maximum(rows, 1)
    )
    top, left = int(rng.integers(8, 20)), int(rng.integers(4, 30))
    bottom, right = top + int(rng.integers(12, 18)), left + int(rng.integers(12, 22))
    obj = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    label[obj] = rng.choice(FURNITURE)
    depth[obj] = float(rng.uniform(1200, 2200))
    ring = (rows >= top - 1) & (rows <= bottom) & (cols >= left - 1) & (cols <= right) & ~obj
    label[ring] = 0  # unlabelled boundary
    depth = np.clip(depth, 500, 9000)
    rng.random(SHAPE)  # (the draw earlier versions made holes from: keeps the RGB noise)
    depth_m = np.round(depth) / 1000.0  # in-painted: no holes in NYU's labelled depth
    base = np.array([COLOURS.get(int(v), (0, 0, 0)) for v in label.ravel()]).reshape(h, w, 3)
    shade = 1.2 - 0.08 * depth / 1000.0
    rgb = np.clip(base * shade[..., None] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    hha = np.stack(
        [
            np.clip(255_000.0 / depth, 0, 255),
            np.clip(255 * (1 - rows / h), 0, 255),
            np.where(label == FLOOR, 30, 120),
        ],
        axis=-1,
    ).astype(np.uint8)
    return {"label": label, "depth": depth_m, "rgb": rgb, "hha": hha}


def generate(root: Path) -> None:
    for folder in ("RGB", "HHA", "Depth", "Label"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for n in TRAIN + TEST:
        s = scene(np.random.default_rng([2025, n]))
        Image.fromarray(s["rgb"]).save(root / "RGB" / f"{n}.jpg", quality=90)
        Image.fromarray(s["hha"]).save(root / "HHA" / f"{n}.jpg", quality=90)
        imsave(root / "Depth" / f"{n}.png", s["depth"], cmap="Greys_r")  # DFormer: RGBA
        Image.fromarray(s["label"]).save(root / "Label" / f"{n}.png")
    for name, ids in (("train.txt", TRAIN), ("test.txt", TEST)):
        (root / name).write_text("".join(f"RGB/{n}.jpg\tLabel/{n}.png\n" for n in ids))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
