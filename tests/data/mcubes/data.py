#!/usr/bin/env python3
"""Write the tiny fake MCubeS (RGB + polarization + NIR) release beside this script.

Source: the official MCubeS release (kyotovision-public/multimodal-material-segmentation
README, Google Drive) as read by the authors' loader
``dataloaders/datasets/multimodal_dataset.py`` and by CMNeXt ``semseg/datasets/mcubes.py``.
``root`` is the extracted ``multimodal_dataset/`` folder; every folder holds one file per
sample ``<name>``::

    polL_color/<name>.png       RGB image (left polarization camera), 3 channels, 8- or 16-bit:
                                both readers do ``cv2.imread(p, -1)[:, :, ::-1]`` and divide by
                                255 or 65535 by dtype; 1024 x 1224 (H x W). 8-bit here.
    polL_aolp_sin/<name>.npy    sin of the angle of linear polarization, float (H, W)
    polL_aolp_cos/<name>.npy    cos of the angle of linear polarization, float (H, W)
    polL_dolp/<name>.npy        degree of linear polarization in [0, 1], float (H, W)
    NIR_warped/<name>.png       near-infrared warped onto the RGB view, 1 channel, 8- or 16-bit
                                (same dtype rule as polL_color). 8-bit here.
    NIR_warped_mask/<name>.png  1 channel 8-bit, 255 (white) where the warp is invalid; those
                                pixels are excluded from the loss
    GT/<name>.png               material ids, 1 channel 8-bit, 0..19; 255 = unlabelled (the
                                loaders' ignore value)
    SS/<name>.png               semantic labels with Cityscapes ids, 1 channel 8-bit
    SSGT4MS/<name>.png          the semantic labels condensed to 10 classes, 1 channel 8-bit
    list_folder/all.txt train.txt val.txt test.txt
                                one <name> per line, no extension

``<name>`` is ``outscene<date>_<seq>_<10-digit frame>``, e.g. ``outscene1208_2_0000000150``.
Both readers drop the left 192 columns of every modality (``_left_offset = 192``, where the
NIR warp leaves no data). The float ``.npy`` files are float32 here; loaders should cast.

Material classes (id: name): 0 asphalt, 1 concrete, 2 metal, 3 road_marking, 4 fabric,
5 glass, 6 plaster, 7 plastic, 8 rubber, 9 sand, 10 gravel, 11 ceramic, 12 cobblestone,
13 brick, 14 grass, 15 wood, 16 leaf, 17 water, 18 human, 19 sky.

Real counts: 500 image sets, train 302 / val 96 / test 102 (CMNeXt's "val" reads test.txt).

Fixture: 5 sets of 32 x 40 px (train 2, val 1, test 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (32, 40)
SPLITS = {
    "train": ("outscene1208_2_0000000150", "outscene1208_2_0000000180"),
    "val": ("outscene1211_1_0000000090",),
    "test": ("outscene1214_3_0000000030", "outscene1214_3_0000000060"),
}


def _blocks(rng: np.random.Generator, shape: tuple[int, int], n: int, cell: int = 8) -> np.ndarray:
    """Random blocky class map with ids 0..n-1 (one id per ``cell`` x ``cell`` block)."""
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.integers(0, n, (gh, gw), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: shape[0], : shape[1]]


def generate(root: Path) -> None:
    h, w = SHAPE
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None] * np.ones((h, 1), np.float32)
    names = [n for split in SPLITS.values() for n in split]
    for i, name in enumerate(names):
        rng = np.random.default_rng([2024, i])
        gt = _blocks(rng, SHAPE, 20)
        g = gt.astype(np.int16)  # appearance follows the material, before the unlabelled patch
        gt[-4:, -8:] = 255  # an unlabelled patch
        aolp = (g / np.float32(20) + 0.5 * ramp) * np.pi  # radians
        nir_mask = np.zeros(SHAPE, np.uint8)
        nir_mask[:, :4] = 255  # invalid warp at the left border
        files = {
            "polL_color": np.stack([g * 11 + 20, 220 - g * 9, 60 + g * 5], -1).astype(np.uint8),
            "NIR_warped": np.where(nir_mask > 0, 0, 50 + g * 8).astype(np.uint8),
            "NIR_warped_mask": nir_mask,
            "GT": gt,
            "SS": (_blocks(rng, SHAPE, 19) + 7).astype(np.uint8),  # Cityscapes ids 7..25
            "SSGT4MS": _blocks(rng, SHAPE, 10),
            "polL_aolp_sin": np.sin(aolp).astype(np.float32),
            "polL_aolp_cos": np.cos(aolp).astype(np.float32),
            "polL_dolp": (0.05 + 0.4 * ramp * (g % 3) / 2).astype(np.float32),
        }
        for folder, arr in files.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            if arr.dtype == np.float32:
                np.save(root / folder / f"{name}.npy", arr)
            else:
                Image.fromarray(arr).save(root / folder / f"{name}.png")
    (root / "list_folder").mkdir(parents=True, exist_ok=True)
    (root / "list_folder" / "all.txt").write_text("".join(f"{n}\n" for n in names))
    for split, split_names in SPLITS.items():
        (root / "list_folder" / f"{split}.txt").write_text("".join(f"{n}\n" for n in split_names))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
