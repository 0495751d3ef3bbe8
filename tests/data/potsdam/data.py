#!/usr/bin/env python3
"""Write the tiny fake ISPRS Potsdam release beside this script (run it to regenerate).

Tiles 2_10, 2_11 (train) and 2_13 (test), 32x40 px: RGB, IRRG and RGBIR orthophotos, DSM
(zero-padded ids, georeferenced), nDSM as an 8-bit JPEG without georeference, full and eroded
colour-coded labels, EPSG:32633 at 5 cm.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rsfusion.catalog import load_card
from rsfusion.data.demo import grid_transform, synth_scene, write_tile

SHAPE = (32, 40)
TILES = ("2_10", "2_11", "2_13")
ORIGIN = (366000.0, 5808000.0)


def generate(root: Path) -> None:
    card = load_card("potsdam")
    gsd = float(card.gsd_m)
    for tid in TILES:
        row, col = (int(v) for v in tid.split("_"))
        scene = synth_scene(np.random.default_rng([2024, row, col]), SHAPE, gsd)
        transform = grid_transform(ORIGIN, col, row, SHAPE, gsd)
        write_tile(root, card, tid, scene, card.assumed_crs, transform)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
