#!/usr/bin/env python3
"""Write the tiny fake MFNet (RGB-thermal) release beside this script (run it to regenerate).

Source: the official ``ir_seg_dataset`` release of the MFNet project page
(https://www.mi.t.u-tokyo.ac.jp/static/projects/mil_multispectral/), as read by the authors'
loader (haqishen/MFNet-pytorch ``util/MF_dataset.py``) and by RTFNet
(yuxiangsun/RTFNet ``util/MF_dataset.py``, which also opens ``test_day``/``test_night``).
``root`` is the extracted ``ir_seg_dataset/`` folder::

    images/<name>.png   8-bit PNG with 4 channels (PIL mode RGBA): R, G, B, then the thermal
                        image in the 4th ("alpha") channel; 480 x 640 (H x W)
    labels/<name>.png   8-bit PNG, 1 channel (mode L): class id per pixel, 0..8
    train.txt  val.txt  test.txt  test_day.txt  test_night.txt
                        one <name> per line, no extension, no path

``<name>`` is a 5-digit frame number followed by ``D`` (day) or ``N`` (night), e.g. ``00001D``,
``01234N``. Some copies also hold ``visual/`` (colour renderings of the labels); no loader reads
it and it is not faked. CMX/CMNeXt re-package the same files as ``RGB/``, ``Thermal/`` (split
channels) and ``Label/``; loaders here follow the release.

Classes (id: name), in this order: 0 unlabelled, 1 car, 2 person, 3 bike, 4 curve (curb),
5 car_stop, 6 guardrail, 7 color_cone, 8 bump. The benchmark protocol (RTFNet, CMX, CMNeXt)
trains and scores all 9 ids, unlabelled included; the labels hold no ignore value.

Real counts: 1569 pairs (820 day, 749 night) split 50/25/25 per condition: train 784, val 392,
test 393 (test_day 205, test_night 188). CMX trains on train+val (1176).

Fixture: 6 frames of 24 x 32 px, one day and one night frame per split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (24, 32)
SPLITS = {"train": ("00001D", "00002N"), "val": ("00003D", "00004N"), "test": ("00005D", "00006N")}
# per-class grey level of the RGB and temperature of the thermal channel (people and cars warm)
BASE_RGB = np.array([90, 40, 150, 60, 120, 100, 170, 230, 140], dtype=np.int16)
BASE_T = np.array([60, 170, 230, 120, 70, 80, 65, 90, 75], dtype=np.int16)


def _blocks(rng: np.random.Generator, shape: tuple[int, int], n: int, cell: int = 8) -> np.ndarray:
    """Random blocky class map with ids 0..n-1 (one id per ``cell`` x ``cell`` block)."""
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.integers(0, n, (gh, gw), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: shape[0], : shape[1]]


def generate(root: Path) -> None:
    ramp = np.linspace(0, 20, SHAPE[1]).astype(np.int16)[None]
    for i, name in enumerate(n for names in SPLITS.values() for n in names):
        label = _blocks(np.random.default_rng([2024, i]), SHAPE, 9)
        night = name.endswith("N")
        grey = BASE_RGB[label] // (3 if night else 1) + ramp
        rgb = np.stack([grey, grey + 10, grey - 10], -1)
        thermal = BASE_T[label] + ramp
        rgbt = np.clip(np.concatenate([rgb, thermal[..., None]], -1), 0, 255).astype(np.uint8)
        for folder, arr in (("images", rgbt), ("labels", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / folder / f"{name}.png")
    lists = dict(SPLITS)
    lists["test_day"] = tuple(n for n in SPLITS["test"] if n.endswith("D"))
    lists["test_night"] = tuple(n for n in SPLITS["test"] if n.endswith("N"))
    for split, names in lists.items():
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
