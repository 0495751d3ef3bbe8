#!/usr/bin/env python3
"""Write the tiny fake DDD17 semantic-segmentation release (Ev-SegNet) beside this script.

Source: the Ev-SegNet release of DDD17 labels (Alonso and Murillo, CVPRW 2019;
Shathe/Ev-SegNet README, Google Drive ``dataset_our_codification``): the writer
``generate_dataset.py`` and the reader ``utils/Loader.py``; the folder order
``<modality>/<split>`` is the one public loaders of the download use
(``dataset_our_codification/events/train/rec1487846842_export_1954.npy``).
``root`` is the extracted ``dataset_our_codification/`` folder::

    images/{train,test}/<name>.png   grey APS frame, 8-bit, 1 channel, 200 x 346 (H x W)
    events/{train,test}/<name>.npy   event tensor (200, 346, 6), float: per polarity the event
                                     histogram, the mean and the standard deviation of the
                                     normalised timestamps in a 50 ms window (Ev-SegNet paper;
                                     the channel order was not verified). float32 here.
    labels/{train,test}/<name>.png   class ids, 8-bit, 1 channel: 0..5, 255 ignore

``<name>`` is ``<recording>_<frame>``, e.g. ``rec1487846842_export_1954``; the test split is the
recording ``rec1487417411_export`` (run3). Images, events and labels are cropped to the top 200
rows of the 260-row DAVIS346 frame; the labels were produced by a Cityscapes network and merged
into 6 categories. Classes (id: name): 0 flat, 1 construction+sky (background), 2 object,
3 nature (vegetation), 4 human, 5 vehicle.

Real counts: train 15950 / test 3890 (no validation split).

Fixture: train 3 and test 2 samples of 24 x 40 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (24, 40)
SPLITS = {
    "train": ("rec1487339175_export_120", "rec1487339175_export_121", "rec1487593224_export_900"),
    "test": ("rec1487417411_export_3772", "rec1487417411_export_3798"),
}


def _blocks(rng: np.random.Generator, shape: tuple[int, int], n: int, cell: int = 8) -> np.ndarray:
    """Random blocky class map with ids 0..n-1 (one id per ``cell`` x ``cell`` block)."""
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.integers(0, n, (gh, gw), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: shape[0], : shape[1]]


def generate(root: Path) -> None:
    ramp = np.linspace(0, 30, SHAPE[1]).astype(np.int16)[None]
    i = 0
    for split, names in SPLITS.items():
        for name in names:
            rng = np.random.default_rng([2024, i])
            i += 1
            label = _blocks(rng, SHAPE, 6)
            label[:2, :8] = 255  # an ignored patch
            grey = np.clip(40 + 30 * np.minimum(label, 5).astype(np.int16) + ramp, 0, 255)
            # events fire on class edges: counts there, timestamps in [0, 1] where counts > 0
            edges = np.zeros(SHAPE, bool)
            edges[:, 1:] |= label[:, 1:] != label[:, :-1]
            edges[1:] |= label[1:] != label[:-1]
            counts = np.where(edges, rng.integers(1, 5, SHAPE), 0).astype(np.float32)
            mean_t = np.where(counts > 0, rng.random(SHAPE), 0).astype(np.float32)
            std_t = np.where(counts > 1, 0.1 * rng.random(SHAPE), 0).astype(np.float32)
            events = np.stack([counts, counts // 2, mean_t, mean_t / 2, std_t, std_t / 2], -1)
            for folder in ("images", "labels", "events"):
                (root / folder / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(grey.astype(np.uint8)).save(root / "images" / split / f"{name}.png")
            Image.fromarray(label).save(root / "labels" / split / f"{name}.png")
            np.save(root / "events" / split / f"{name}.npy", events.astype(np.float32))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
