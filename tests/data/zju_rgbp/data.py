#!/usr/bin/env python3
"""Write the tiny fake ZJU-RGB-P (RGB-polarization) dataset beside this script.

Source: the only public loader found for it, Road-Former (LiJiahang617/Road-Former:
``MMZJUDataset`` file suffixes, its ZJU config with ``data_prefix`` ``{train,val}/0``,
``{train,val}/aolp2``, ``{train,val}/label`` and the colour decoding of
``LoadZJUAnnotations``). The original archive of the EAFNet authors (Xiang et al. 2021;
``RGB-P-dataset.rar``, mirrored on the Hugging Face hub as ``Zhonghua/ZJU_RGB_P``) could not be
inspected, so this is the layout that loader reads. ``root`` is the dataset folder::

    train/  val/
        0/<stem>_image0_0.png    RGB behind the 0-degree polarizer, 8-bit, 3 channels,
                                 1024 x 1224 (H x W)
        aolp2/<stem>_aolp.png    angle-of-linear-polarization image, 8-bit, 3 channels
                                 (channel layout not verified)
        label/<stem>_image0.png  colour-coded labels: 8-bit palette ("P") PNGs, index = file
                                 class id, palette = the PASCAL VOC colour map

The polarization pair is synthesised from four captures behind 0/45/90/135-degree polarizers
(LUCID PHX050S-Q camera). Classes and their colours in RGB order, as Road-Former decodes them
(``LoadZJUAnnotations`` reads the label through ``mmcv_custom.imfrombytes`` with the pillow
backend, whose default channel order in that copy of mmcv is RGB, after converting a non-RGB
file to RGB; ``MMZJUDataset``'s palette lists the same colours): 0 unlabelled (0, 0, 0),
1 building (128, 0, 0), 2 glass (0, 128, 0), 3 car (128, 128, 0), 4 road (0, 0, 128),
5 tree/vegetation (128, 0, 128), 6 sky (0, 128, 128), 7 pedestrian (128, 128, 128),
8 bicycle (64, 0, 0): the VOC colour map of ids 0..8, hence the palette PNGs here (whether the
released files are palette or RGB PNGs could not be checked; they decode alike). Unlabelled
is ignored (Road-Former's evaluator uses ``ignore_index=0``); CMX reports the 8 classes 1..8.

Real counts: 394 pairs, train 344 / val 50.

Fixture: train 3 and val 2 samples of 32 x 40 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (32, 40)
SPLITS = {"train": ("0001", "0002", "0003"), "val": ("0345", "0346")}
COLOURS = np.array(
    [
        (0, 0, 0),
        (128, 0, 0),
        (0, 128, 0),
        (128, 128, 0),
        (0, 0, 128),
        (128, 0, 128),
        (0, 128, 128),
        (128, 128, 128),
        (64, 0, 0),
    ],
    dtype=np.uint8,
)
PALETTE = [int(v) for v in COLOURS.ravel()] + [0] * (768 - COLOURS.size)


def _blocks(rng: np.random.Generator, shape: tuple[int, int], n: int, cell: int = 8) -> np.ndarray:
    """Random blocky class map with ids 0..n-1 (one id per ``cell`` x ``cell`` block)."""
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.integers(0, n, (gh, gw), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: shape[0], : shape[1]]


def generate(root: Path) -> None:
    ramp = np.linspace(0, 30, SHAPE[1]).astype(np.int16)[None]
    i = 0
    for split, stems in SPLITS.items():
        for stem in stems:
            label = _blocks(np.random.default_rng([2024, i]), SHAPE, len(COLOURS))
            i += 1
            lab = label.astype(np.int16)
            rgb = np.stack([60 + 15 * lab, 140 - 8 * lab, 90 + 5 * lab], -1) + ramp[..., None]
            # glass (2) and car (3) reflect strongly polarized light: distinct AoLP
            aolp = np.where((lab == 2) | (lab == 3), 200, 40 + 10 * lab) + ramp
            files = {
                "0": (f"{stem}_image0_0.png", np.clip(rgb, 0, 255).astype(np.uint8)),
                "aolp2": (
                    f"{stem}_aolp.png",
                    np.stack([np.clip(aolp, 0, 255)] * 3, -1).astype(np.uint8),
                ),
                "label": (f"{stem}_image0.png", label),
            }
            for folder, (fname, arr) in files.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                img = Image.fromarray(arr)
                if folder == "label":
                    img = img.convert("P")  # mode P, index = class id
                    img.putpalette(PALETTE)
                img.save(root / split / folder / fname)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
