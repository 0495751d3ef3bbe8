#!/usr/bin/env python3
"""Write the tiny fake UrbanLF (light field) release beside this script (run it to regenerate).

Source: the official UrbanLF README (HAWKEYE-Group/UrbanLF: classes, colours, splits) and the
dataset classes of the authors' LF-IENet (Congrx/LF-IENet ``mmseg/datasets/custom_lf.py``,
``UrbanLF_Real.py``, ``UrbanLF_Syn.py``); the extra per-view files of UrbanLF-Syn come from a
third-party reader, ``label.png`` of UrbanLF-Real from CMNeXt ``semseg/datasets/urbanlf.py``
(which re-packages the two parts as ``real/`` and ``Syn/``). ``root`` holds both parts::

    UrbanLF_Real/{train,val,test}/Image<N>/
        <u>_<v>.png        sub-aperture views, u (row) and v (column) in 1..9: 81 RGB 8-bit PNGs,
                           432 x 623 (H x W); 5_5.png is the central view (the RGB input)
        label.npy          central-view class ids (H, W), integer: 1..14 = classes below
        label.png          the same labels colour-coded (RGB 8-bit, colours below)
    UrbanLF_Syn/{train,val,test}/Image<N>/
        <u>_<v>.png        81 RGB 8-bit views, 480 x 640 (H x W)
        5_5_label.npy      central-view class ids (H, W), integer, 1..14 (read by LF-IENet/CMNeXt)
        5_5_label.png      the central labels colour-coded (RGB 8-bit)
        5_5_disparity.npy  central-view disparity in pixels between adjacent views, float (H, W)

The Syn release carries ``<u>_<v>_label.npy``, ``<u>_<v>_disparity.npy`` and renderings
(``*_label.png``, ``*_disparity.png``, ``*_depth.png``) for all 81 views; the fixture keeps them
for the central view only. ``test/`` folders hold no labels (the online benchmark scores them).
Loaders subtract 1 from the ids (LF-IENet ``np.load(...) - 1``); an id 0 (unlabelled, if
present) becomes the ignore value. The SegRGB-X paper uses "the first sub-aperture image" as the
X modality; CMNeXt's LF8 setting uses 5_1..5_4 and 5_6..5_9. Arrays here: label.npy uint8,
disparity float32.

Classes (file id: name, colour): 1 bike (168, 198, 168), 2 building (198, 0, 0),
3 fence (202, 154, 198), 4 others (0, 0, 0), 5 person (100, 198, 198), 6 pole (198, 100, 0),
7 road (52, 42, 198), 8 sidewalk (154, 52, 192), 9 traffic sign (198, 0, 168),
10 vegetation (0, 198, 0), 11 vehicle (198, 186, 90), 12 bridge (108, 107, 161),
13 rider (156, 200, 26), 14 sky (158, 179, 202).

Real counts: semantic segmentation benchmark, UrbanLF-Real 824 = train 580 / val 80 / test 164;
UrbanLF-Syn 250 = train 172 / val 28 / test 50.

CMNeXt's copy (``generate_cmnext``, written by the tests into a temporary folder): the same
files with the parts named ``real/`` and ``Syn/`` (CMNeXt ``semseg/datasets/urbanlf.py`` picks
the label reader by ``'real' in root`` / ``'Syn' in root``; the DELIVER README's data tree shows
``UrbanLF/Syn`` and ``UrbanLF/real``), holding what that loader reads: ``label.png`` for Real
(decoded by colour) and ``5_5_label.npy`` for Syn, where 255 is void (CMNeXt sets 255 to 0
before subtracting 1). Whether CMNeXt's copy also keeps Real's ``label.npy`` is not known; this
fake copy leaves it out, and gives one Syn label a block of 255.

Fixture: Real train/val/test and Syn train/val, one sample each, views of 16 x 24 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (16, 24)
SAMPLES = (  # part, split, folder
    ("UrbanLF_Real", "train", "Image17"),
    ("UrbanLF_Real", "val", "Image301"),
    ("UrbanLF_Real", "test", "Image512"),
    ("UrbanLF_Syn", "train", "Image3"),
    ("UrbanLF_Syn", "val", "Image90"),
)
COLOURS = np.array(
    [
        (0, 0, 0),  # file id 0 is not a class; unused
        (168, 198, 168),
        (198, 0, 0),
        (202, 154, 198),
        (0, 0, 0),
        (100, 198, 198),
        (198, 100, 0),
        (52, 42, 198),
        (154, 52, 192),
        (198, 0, 168),
        (0, 198, 0),
        (198, 186, 90),
        (108, 107, 161),
        (156, 200, 26),
        (158, 179, 202),
    ],
    dtype=np.uint8,
)
PAD = 4  # the views see a 4 px wider canvas: view (u, v) is shifted by (u - 5, v - 5) px


def _blocks(rng: np.random.Generator, shape: tuple[int, int], n: int, cell: int = 8) -> np.ndarray:
    """Random blocky class map with ids 0..n-1 (one id per ``cell`` x ``cell`` block)."""
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.integers(0, n, (gh, gw), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: shape[0], : shape[1]]


def generate(root: Path) -> None:
    h, w = SHAPE
    for i, (part, split, name) in enumerate(SAMPLES):
        rng = np.random.default_rng([2024, i])
        canvas = _blocks(rng, (h + 2 * PAD, w + 2 * PAD), 14, cell=6) + 1  # ids 1..14
        colour = COLOURS[canvas].astype(np.int16) // 2 + 50
        folder = root / part / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for u in range(1, 10):
            for v in range(1, 10):
                y, x = PAD + u - 5, PAD + v - 5
                view = colour[y : y + h, x : x + w] + 3 * u
                Image.fromarray(np.clip(view, 0, 255).astype(np.uint8)).save(
                    folder / f"{u}_{v}.png"
                )
        if split == "test":
            continue
        label = canvas[PAD : PAD + h, PAD : PAD + w]
        prefix = "" if part == "UrbanLF_Real" else "5_5_"
        np.save(folder / f"{prefix}label.npy", label)
        Image.fromarray(COLOURS[label]).save(folder / f"{prefix}label.png")
        if part == "UrbanLF_Syn":
            disparity = (0.2 * (label % 5) - 0.3 + np.linspace(0, 0.4, w)[None]).astype(np.float32)
            np.save(folder / "5_5_disparity.npy", disparity)


def generate_cmnext(root: Path) -> None:
    """Write CMNeXt's copy under ``root``: ``real/`` and ``Syn/``, Real labels as PNG only, and
    a block of 255 (void) in the Syn train label."""
    generate(root)
    (root / "UrbanLF_Real").rename(root / "real")
    (root / "UrbanLF_Syn").rename(root / "Syn")
    for path in (root / "real").glob("*/Image*/label.npy"):
        path.unlink()
    path = root / "Syn" / "train" / "Image3" / "5_5_label.npy"
    label = np.load(path)
    label[:4, :6] = 255
    np.save(path, label)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
