#!/usr/bin/env python3
"""Write a tiny fake SUN RGB-D release (DFormer layout) beside this script.

Five indoor scenes of different sizes (as SUN RGB-D's four sensors give): RGB/<id>.jpg,
Depth/<id>.png (16-bit millimetres stored with the bits rotated left by 3, as the SUN RGB-D
toolbox reads them, 0 = unknown), labels/<id>.png (8-bit, 0 = unlabelled, 1..37 = classes) and
train.txt / test.txt ("RGB/<id>.jpg labels/<id>.png" lines). Run it to regenerate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {  # id -> (height, width): three training, two test images
    "img-005051": (40, 56),
    "img-005052": (44, 52),
    "img-005053": (36, 60),
    "img-000001": (48, 40),
    "img-000002": (42, 54),
}
TRAIN, TEST = ("img-005051", "img-005052", "img-005053"), ("img-000001", "img-000002")
WALL, FLOOR, OBJECTS = 1, 2, (5, 7, 14)  # stored values: class index + 1 (chair, table, desk)
COLOURS = {
    1: (190, 185, 175),
    2: (110, 85, 60),
    5: (150, 50, 40),
    7: (80, 130, 60),
    14: (50, 70, 150),
}


def rotl16(values: np.ndarray, bits: int) -> np.ndarray:
    """Rotate 16-bit values left (the inverse of the toolbox's read)."""
    v = values.astype(np.uint32)
    return (((v << bits) | (v >> (16 - bits))) & 0xFFFF).astype(np.uint16)


def scene(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Label values, depth in mm (0 = unknown) and RGB of one synthetic room view."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w]
    horizon = int(rng.integers(h // 3, h // 2 + 4))
    wall_mm = float(rng.uniform(2500, 5000))
    label = np.where(rows < horizon, WALL, FLOOR).astype(np.uint8)
    depth = np.where(rows < horizon, wall_mm, wall_mm * horizon / np.maximum(rows, 1))
    top, left = int(rng.integers(h // 4, h // 2)), int(rng.integers(2, w // 2))
    obj = (rows >= top) & (rows < top + h // 3) & (cols >= left) & (cols < left + w // 3)
    label[obj] = rng.choice(OBJECTS)
    depth[obj] = float(rng.uniform(1000, 2000))
    edge = obj ^ (np.roll(obj, 1, 0) | np.roll(obj, 1, 1))
    label[edge & ~obj] = 0  # unlabelled boundary
    holes = rng.random(shape) < 0.04
    depth_mm = np.where(holes, 0, np.round(np.clip(depth, 400, 8000))).astype(np.uint16)
    base = np.array([COLOURS.get(int(v), (0, 0, 0)) for v in label.ravel()]).reshape(h, w, 3)
    shade = 1.15 - 0.07 * depth / 1000.0
    rgb = np.clip(base * shade[..., None] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    return {"label": label, "depth": depth_mm, "rgb": rgb}


def generate(root: Path) -> None:
    for folder in ("RGB", "Depth", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for k, (sid, shape) in enumerate(SIZES.items()):
        s = scene(np.random.default_rng([2026, k]), shape)
        Image.fromarray(s["rgb"]).save(root / "RGB" / f"{sid}.jpg", quality=90)
        Image.fromarray(rotl16(s["depth"], 3)).save(root / "Depth" / f"{sid}.png")
        Image.fromarray(s["label"]).save(root / "labels" / f"{sid}.png")
    for name, ids in (("train.txt", TRAIN), ("test.txt", TEST)):
        (root / name).write_text("".join(f"RGB/{i}.jpg labels/{i}.png\n" for i in ids))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
