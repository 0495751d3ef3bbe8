#!/usr/bin/env python3
"""Write the tiny fake ISPRS Potsdam release beside this script (run it to regenerate).

Tiles 2_10, 2_11 (train), 2_13 and 3_13 (test), 32x40 px, EPSG:32633 at 5 cm, laid out as the
release archives unpack into one folder:

* ``2_Ortho_RGB/``, ``3_Ortho_IRRG/``, ``4_Ortho_RGBIR/``: orthophotos (each archive holds its
  folder: torchgeo's tests/data/potsdam/4_Ortho_RGBIR.zip, mmsegmentation's potsdam converter);
* ``1_DSM/``: float DSM, zero-padded ids, georeferenced;
* ``1_DSM_normalisation/``: 8-bit nDSM JPEGs without georeference. Tile 3_13's is one column
  narrower than its orthophoto (the release's 3_13 nDSM is 5999 px wide for 6000: public
  Potsdam prepare scripts pad it), and tile 2_11 has only the ``_normalized_ownapproach.jpg``
  variant (prepare scripts fall back to it where lastools' is absent);
* labels at the top level, as 5_Labels_all.zip and 5_Labels_all_noBoundary.zip unpack
  (torchgeo's Potsdam2D reads ``root/top_potsdam_<r>_<c>_label.tif``; its test archive
  5_Labels_all.zip holds them without a folder): ``top_potsdam_<r>_<c>_label.tif`` and
  ``top_potsdam_<r>_<c>_label_noBoundary.tif``, colour-coded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio

from rsfusion.catalog import load_card
from rsfusion.data.demo import grid_transform, synth_scene, write_tile
from rsfusion.data.writers import write_geotiff

SHAPE = (32, 40)
TILES = ("2_10", "2_11", "2_13", "3_13")
ORIGIN = (366000.0, 5808000.0)
NARROW_NDSM = "3_13"  # one column short
OWNAPPROACH_ONLY = "2_11"  # no lastools nDSM


def _ndsm(root: Path, tid: str, kind: str) -> Path:
    row, col = (int(v) for v in tid.split("_"))
    return root / f"1_DSM_normalisation/dsm_potsdam_{row:02d}_{col:02d}_normalized_{kind}.jpg"


def generate(root: Path) -> None:
    card = load_card("potsdam")
    gsd = float(card.gsd_m)
    for tid in TILES:
        row, col = (int(v) for v in tid.split("_"))
        scene = synth_scene(np.random.default_rng([2024, row, col]), SHAPE, gsd)
        transform = grid_transform(ORIGIN, col, row, SHAPE, gsd)
        write_tile(root, card, tid, scene, card.assumed_crs, transform)
        lastools = _ndsm(root, tid, "lastools")
        if tid == NARROW_NDSM:
            with rasterio.open(lastools) as src:
                narrow = src.read()[:, :, :-1]
            lastools.unlink()
            write_geotiff(lastools, narrow, None, None, driver="JPEG", quality=95)
        elif tid == OWNAPPROACH_ONLY:
            lastools.rename(_ndsm(root, tid, "ownapproach"))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
