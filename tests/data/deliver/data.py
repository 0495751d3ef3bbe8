#!/usr/bin/env python3
"""Write the tiny fake DeLiVER (RGB + depth/LiDAR/event) release beside this script.

Source: the front-view DeLiVER release (jamycheung/DELIVER README, Google Drive) as read by the
authors' CMNeXt loader ``semseg/datasets/deliver.py``; the depth encoding and the naming of the
sensor-failure scenes come from a third-party DeLiVER loader that documents the files it read.
``root`` is the extracted ``DELIVER/`` folder::

    <modality>/<condition>/<split>/<scene>/<frame>_<suffix>_front.png

    modality  suffix     file
    img       rgb        RGB, 8-bit, 3 channels (readers keep channels [:3], so RGBA also works)
    depth     depth      depth image, 8-bit, 1 channel (unit and invalid value undocumented)
    hha       depth      HHA encoding of the depth, 8-bit, 3 channels; CMNeXt's "depth" input
                         (``rgb.replace('/img', '/hha').replace('_rgb', '_depth')``)
    lidar     lidar      projected LiDAR image, 8-bit, 3 channels, zero where no return
    event     event      event image, 8-bit, 3 channels, zero where no event; in the
                         ``_eventlowres`` scenes it is smaller than the RGB (CMNeXt resizes
                         every event image to the RGB size with nearest interpolation)
    semantic  semantic   labels, 8-bit, 3 channels, class in the R channel (CARLA tag
                         convention); G = B = 0 here

    condition  cloud, fog, night, rain, sun
    split      train, val, test
    scene      MAP_<m>_point<p> (e.g. MAP_10_point102), with a sensor-failure suffix for the
               corner cases: _motionblur, _overexposure, _underexposure, _lidarjitter,
               _eventlowres (CMNeXt selects a case with ``case in path``)
    frame      6 digits, e.g. 045050; the name is unique only within its scene folder

Label encoding (R channel): 0 unlabelled, 1..25 the classes below in order, 255 also unlabelled.
CMNeXt decodes ``label[label == 255] = 0; label -= 1`` on uint8, so 0 and 255 both become the
ignore value 255 and 1..25 become train ids 0..24. Train ids: 0 Building, 1 Fence, 2 Other,
3 Pedestrian, 4 Pole, 5 RoadLine, 6 Road, 7 SideWalk, 8 Vegetation, 9 Cars, 10 Wall,
11 TrafficSign, 12 Sky, 13 Ground, 14 Bridge, 15 RailTrack, 16 GroundRail (guard rail),
17 TrafficLight, 18 Static, 19 Dynamic, 20 Water, 21 Terrain, 22 TwoWheeler, 23 Bus, 24 Truck.

Real counts: 7885 front-view samples of 1042 x 1042 px: train 3983 / val 2005 / test 1897.

Fixture: 5 frames of 32 x 32 px, one per condition, covering the three splits and three
sensor-failure scenes (the ``_eventlowres`` event image is 16 x 16).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHAPE = (32, 32)
SAMPLES = (  # condition, split, scene, frame
    ("cloud", "train", "MAP_1_point102", "110100"),
    ("night", "train", "MAP_3_point20_motionblur", "001200"),
    ("fog", "val", "MAP_5_point36_eventlowres", "004500"),
    ("rain", "test", "MAP_10_point102", "045050"),
    ("sun", "test", "MAP_10_point102_lidarjitter", "045060"),
)


def _blocks(rng: np.random.Generator, shape: tuple[int, int], n: int, cell: int = 8) -> np.ndarray:
    """Random blocky class map with ids 0..n-1 (one id per ``cell`` x ``cell`` block)."""
    gh, gw = -(-shape[0] // cell), -(-shape[1] // cell)
    coarse = rng.integers(0, n, (gh, gw), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: shape[0], : shape[1]]


def _sparse(rng: np.random.Generator, base: np.ndarray, keep: float) -> np.ndarray:
    """3-channel 8-bit image that is ``base`` on a random ``keep`` fraction of pixels, else 0."""
    mask = rng.random(base.shape[:2]) < keep
    return np.where(mask[..., None], base, 0).astype(np.uint8)


def generate(root: Path) -> None:
    h, w = SHAPE
    rows = np.linspace(0, 1, h)[:, None] * np.ones((1, w))
    for i, (cond, split, scene, frame) in enumerate(SAMPLES):
        rng = np.random.default_rng([2024, i])
        tag = _blocks(rng, SHAPE, 26)  # 0 unlabelled, 1..25 classes
        depth = (30 + 200 * rows).astype(np.uint8)  # near at the bottom of the image
        colour = np.stack([tag * 9 + 20, 200 - tag * 6, 80 + depth // 3], -1).astype(np.uint8)
        if cond == "night":
            colour //= 4
        hha = np.stack([depth, 255 - depth, (tag * 7 + 40).astype(np.uint8)], -1)
        lidar = _sparse(rng, np.stack([depth] * 3, -1), 0.15)
        event = _sparse(
            rng, np.stack([colour[..., 0], np.zeros_like(depth), colour[..., 2]], -1), 0.2
        )
        if scene.endswith("_eventlowres"):
            event = event[::2, ::2]
        semantic = np.stack([tag, np.zeros_like(tag), np.zeros_like(tag)], -1)
        files = {
            ("img", "rgb"): colour,
            ("depth", "depth"): depth,
            ("hha", "depth"): hha,
            ("lidar", "lidar"): lidar,
            ("event", "event"): event,
            ("semantic", "semantic"): semantic,
        }
        for (modality, suffix), arr in files.items():
            folder = root / modality / cond / split / scene
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(folder / f"{frame}_{suffix}_front.png")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
