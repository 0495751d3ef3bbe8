#!/usr/bin/env python3
"""Write the tiny fake PST900 (RGB-thermal) release beside this script (run it to regenerate).

Source: the README and toolkit of the official repository (ShreyasSkandanS/pst900_thermal_rgb;
"PST900 RGB-T" Google Drive archive). ``root`` is the extracted ``PST900_RGBT_Dataset/``
folder; every modality folder holds the same file names::

    train/  test/                (no validation split)
        rgb/<name>.png           RGB, 8-bit, 3 channels, 720 x 1280 (H x W)
        thermal/<name>.png       thermal after FLIR AGC, 8-bit, 1 channel, projected into the RGB
                                 camera (zeros in parallax holes; the toolkit can fill them)
        thermal_raw/<name>.png   raw thermal, 16-bit, 1 channel (must be read as 16-bit)
        depth/<name>.png         stereo depth, 16-bit, 1 channel (must be read as 16-bit)
        labels/<name>.png        class ids, 8-bit, 1 channel, 0..4

``<name>`` is ``<seq>_<bag>_rect_rgb_frame<10 digits>.png``, e.g.
``31_bag1a_rect_rgb_frame0000000007.png``.

Classes (id: name): 0 background, 1 fire_extinguisher, 2 backpack, 3 hand_drill, 4 survivor
(a thermal mannequin). The protocol trains and scores all 5 ids, background included.

Real counts: the README states 894 pairs; RGB-T papers (RTFNet-style loaders, CMX, CRM) use
train 597 / test 288. The README tree comments give 606 / 288 with train and test swapped.

Fixture: train 3 and test 2 frames of 24 x 40 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (24, 40)
SPLITS = {
    "train": (
        "31_bag1a_rect_rgb_frame0000000007.png",
        "31_bag1a_rect_rgb_frame0000000042.png",
        "32_bag2_rect_rgb_frame0000000113.png",
    ),
    "test": ("40_bag3_rect_rgb_frame0000000005.png", "40_bag3_rect_rgb_frame0000000070.png"),
}
BASE_RGB = np.array([(70, 60, 50), (200, 30, 30), (40, 60, 160), (220, 180, 30), (230, 120, 40)])
BASE_T = np.array([40, 90, 70, 80, 220])  # survivors are warm


def _blocks(rng: np.random.Generator, shape: tuple[int, int], n: int, cell: int = 8) -> np.ndarray:
    """Random blocky class map with ids 0..n-1 (one id per ``cell`` x ``cell`` block)."""
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.integers(0, n, (gh, gw), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: shape[0], : shape[1]]


def generate(root: Path) -> None:
    ramp = np.linspace(0, 20, SHAPE[1]).astype(np.int64)[None]
    depth_ramp = np.linspace(800, 9000, SHAPE[0]).astype(np.int64)[:, None]  # far at the top
    i = 0
    for split, names in SPLITS.items():
        for name in names:
            label = _blocks(np.random.default_rng([2024, i]), SHAPE, len(BASE_T))
            i += 1
            thermal = np.clip(BASE_T[label] + ramp, 0, 255).astype(np.uint8)
            thermal[:, :2] = 0  # parallax hole at the image border
            files = {
                "rgb": np.clip(BASE_RGB[label] + ramp[..., None], 0, 255).astype(np.uint8),
                "thermal": thermal,
                "thermal_raw": (22000 + 40 * thermal.astype(np.int64)).astype(np.uint16),
                "depth": (depth_ramp - 300 * (label > 0)).astype(np.uint16),
                "labels": label,
            }
            for folder, arr in files.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / split / folder / name)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
