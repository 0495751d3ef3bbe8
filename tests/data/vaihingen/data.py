#!/usr/bin/env python3
"""Write the tiny fake ISPRS Vaihingen release beside this script (run it to regenerate).

Areas 1, 3, 5 (official train) and 2, 4 (official test), 40x48 px, labels in the root as the
official zips extract. Area 1, 2, 4: GeoTIFFs with CRS and transform. Area 3: orthophoto and DSM
carry a world file (.tfw) and no CRS. Area 5: no georeference at all (orthophoto, DSM, labels).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from rsfusion.catalog import load_card
from rsfusion.data.demo import (
    VAIHINGEN_ORIGIN,
    grid_transform,
    synth_scene,
    write_tile,
)
from rsfusion.data.writers import write_world_file

SHAPE = (40, 48)
AREAS = (1, 3, 5, 2, 4)


def generate(root: Path) -> None:
    card = load_card("vaihingen")
    gsd = float(card.gsd_m)
    for area in AREAS:
        scene = synth_scene(np.random.default_rng([2024, area]), SHAPE, gsd)
        transform = grid_transform(VAIHINGEN_ORIGIN, area - 1, 0, SHAPE, gsd)
        tid = str(area)
        if area == 3:
            files = write_tile(root, card, tid, scene, None, None)
            for path in files[:2]:  # orthophoto, DSM
                write_world_file(path, transform)
        elif area == 5:
            write_tile(root, card, tid, scene, None, None)
        else:
            write_tile(root, card, tid, scene, card.assumed_crs, transform)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
