#!/usr/bin/env python3
"""Write the tiny fake FMB (RGB-infrared) release beside this script (run it to regenerate).

Source: the FMB release of SegMiF (Liu et al., ICCV 2023; download links in the
JinyuanLiu-CV/SegMiF README), layout as read by public loaders: Road-Former
(``configs/_base_/datasets/mmfmb.py``: ``train/Visible``, ``train/Infrared``, ``train/color``,
colour decoding in ``LoadFMBAnnotations``), the README tree of an RGB-T repository listing
``train/{color,Infrared,Label,Visible}`` and a toolbox loader reading
``<split>/{Visible,Infrared,Label}/<file>``. ``root`` is the extracted ``FMB/`` folder::

    train/  test/                (no validation split)
        Visible/<name>.png   RGB, 8-bit, 3 channels, 600 x 800 (H x W)
        Infrared/<name>.png  thermal, 8-bit grey (1 channel here; SegMiF reads it with
                             ``cv2.imread(p, 0)``, so read it as grey to also accept 3-channel copies)
        Label/<name>.png     class ids, 8-bit, 1 channel: 0 unlabelled, 1..14 the classes below
        color/<name>.png     the same labels colour-coded (RGB, 3 channels; palette below)

``<name>`` is the same file name in all four folders: a zero-padded number, e.g. ``00001.png``
(the exact numbering was not verified).

Classes (id: name, colour in ``color/``): 0 unlabelled (0, 0, 0), 1 Road (228, 228, 179),
2 Sidewalk (133, 57, 181), 3 Building (177, 162, 67), 4 Traffic Lamp (50, 178, 200),
5 Traffic Sign (199, 45, 132), 6 Vegetation (84, 172, 66), 7 Sky (79, 73, 179),
8 Person (166, 99, 76), 9 Car (253, 121, 66), 10 Truck (91, 165, 137), 11 Bus (152, 97, 155),
12 Motorcycle (140, 153, 105), 13 Bicycle (158, 215, 222), 14 Pole (90, 113, 135).
Protocol: StitchFusion-style loaders train the 15 ids with 0 as a "background" class;
Road-Former maps 0 to ignore and scores 14.

Real counts: 1500 pairs, train 1220 / test 280.

Fixture: train 3 and test 2 frames of 24 x 32 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (24, 32)
SPLITS = {"train": ("00001", "00002", "00003"), "test": ("00004", "00005")}
PALETTE = np.array(
    [
        (0, 0, 0),
        (228, 228, 179),
        (133, 57, 181),
        (177, 162, 67),
        (50, 178, 200),
        (199, 45, 132),
        (84, 172, 66),
        (79, 73, 179),
        (166, 99, 76),
        (253, 121, 66),
        (91, 165, 137),
        (152, 97, 155),
        (140, 153, 105),
        (158, 215, 222),
        (90, 113, 135),
    ],
    dtype=np.uint8,
)


def _blocks(rng: np.random.Generator, shape: tuple[int, int], n: int, cell: int = 8) -> np.ndarray:
    """Random blocky class map with ids 0..n-1 (one id per ``cell`` x ``cell`` block)."""
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.integers(0, n, (gh, gw), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: shape[0], : shape[1]]


def generate(root: Path) -> None:
    ramp = np.linspace(0, 24, SHAPE[1]).astype(np.int16)[None]
    i = 0
    for split, names in SPLITS.items():
        for name in names:
            label = _blocks(np.random.default_rng([2024, i]), SHAPE, len(PALETTE))
            i += 1
            rgb = np.clip(PALETTE[label].astype(np.int16) // 2 + 60 + ramp[..., None], 0, 255)
            infrared = np.clip(40 + 12 * label.astype(np.int16) + ramp, 0, 255)
            files = {
                "Visible": rgb.astype(np.uint8),
                "Infrared": infrared.astype(np.uint8),
                "Label": label,
                "color": PALETTE[label],
            }
            for folder, arr in files.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / split / folder / f"{name}.png")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
