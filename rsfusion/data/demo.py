"""Synthetic ISPRS-style scenes in the exact Vaihingen release layout, and the raster writers.

The scene is built so that elevation is needed to separate classes: building roofs take their
colours from the same distribution as roads, trees from the same colour field as low vegetation;
only the DSM (roofs 5-12 m, canopies 4-10 m, cars ~1.5 m above ground) tells them apart.
``synth_scene`` and ``write_tile`` are reused by the test fixtures' generators
(tests/data/<dataset>/data.py); the raster writers live in :mod:`rsfusion.data.writers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.transform import Affine

from rsfusion.catalog import DatasetCard, load_card
from rsfusion.data.writers import encode_labels, erode_labels, write_geotiff

DEMO_TRAIN_AREAS = (1, 3, 5, 7)
DEMO_VAL_AREAS = (8,)  # picks the best checkpoint; never scored as test
DEMO_TEST_AREAS = (2, 4)
DEMO_AREAS = DEMO_TRAIN_AREAS + DEMO_VAL_AREAS + DEMO_TEST_AREAS

IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)
CLASS_NAMES = ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter")
BAND_NAMES = ("red", "green", "blue", "nir")
VAIHINGEN_ORIGIN = (496000.0, 5420000.0)
NDSM_DN_PER_M = 10.0  # 8-bit nDSM JPEGs: 1 DN = 0.1 m above ground (assumed scale)
_NOMINAL = 320  # tile size (px at 0.09 m) at which object sizes below are given


@dataclass(frozen=True)
class SyntheticScene:
    """One synthetic tile: class ids, reflectance bands, surface and terrain heights."""

    classes: np.ndarray  # (H, W) uint8 class ids in the ISPRS card order
    image: np.ndarray  # (4, H, W) uint8 bands in BAND_NAMES order
    dsm: np.ndarray  # (H, W) float32 absolute surface elevation, metres
    dtm: np.ndarray  # (H, W) float32 absolute ground elevation, metres

    @property
    def ndsm(self) -> np.ndarray:
        """Height above ground in metres."""
        return self.dsm - self.dtm

    def select(self, names: Sequence[str]) -> np.ndarray:
        """Bands by name ('red', 'green', 'blue', 'nir') stacked as (len(names), H, W)."""
        return np.stack([self.image[BAND_NAMES.index(n)] for n in names])


def grid_transform(
    origin: tuple[float, float], col: int, row: int, shape: tuple[int, int], gsd: float
) -> Affine:
    """Transform of tile (row, col) on one pixel grid; tiles are spaced apart, never overlapping."""
    step_y, step_x = (100 * math.ceil(1.2 * n / 100) for n in shape)  # whole pixels
    return Affine(
        gsd, 0.0, origin[0] + col * step_x * gsd, 0.0, -gsd, origin[1] - row * step_y * gsd
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise of unit scale: a coarse normal grid, smoothstep-interpolated."""
    h, w = shape
    grid = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2))
    y, x = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _local(
    shape: tuple[int, int], cy: float, cx: float, theta: float, reach: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Bounding box around (cy, cx) and pixel coordinates (u, v) in a frame rotated by theta."""
    y0, x0 = max(0, int(cy - reach)), max(0, int(cx - reach))
    y1, x1 = (
        max(y0, min(shape[0], int(cy + reach) + 2)),
        max(x0, min(shape[1], int(cx + reach) + 2)),
    )
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = dy + 0.5 - cy, dx + 0.5 - cx
    c, s = math.cos(theta), math.sin(theta)
    return (slice(y0, y1), slice(x0, x1)), dx * c + dy * s, dy * c - dx * s


def _grey(rng: np.random.Generator) -> np.ndarray:
    """Base colour of one paved surface: roads and roofs share this distribution."""
    g = float(np.clip(rng.normal(135, 16), 90, 190))
    return g + rng.normal(0, 4, 4)


class _Painter:
    """Mutable canvas of one tile: class ids, base colour and height above ground."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.cls = np.full(shape, LOW_VEG, np.uint8)
        self.base = np.zeros((4, *shape), np.float32)
        self.rel = np.zeros(shape, np.float32)

    def paint(self, sl: tuple[slice, slice], m: np.ndarray, cls: int, colour: Any, z: Any) -> None:
        self.cls[sl][m] = cls
        if colour is not None:  # vegetation takes its colour from one shared field later
            self.base[:, sl[0], sl[1]][:, m] = np.asarray(colour, np.float32).reshape(4, -1)
        self.rel[sl][m] = np.broadcast_to(z, m.shape)[m]


def synth_scene(
    rng: np.random.Generator, shape: tuple[int, int], gsd: float = 0.09
) -> SyntheticScene:
    """Draw one synthetic urban tile (roads, buildings, trees, cars, clutter) of ``shape`` px."""
    h, w = shape
    k = (0.09 / gsd) * min(1.0, min(h, w) / _NOMINAL)  # pixels per nominal pixel
    n_scale = h * w / (_NOMINAL * _NOMINAL * k * k)  # tile area in nominal tiles
    p = _Painter(shape)
    # absolute terrain: a level, a tilt and gentle undulation, all different per tile
    ys, xs = ((np.arange(n) - n / 2) * gsd for n in shape)
    gy, gx = rng.uniform(-0.08, 0.08, 2)
    dtm = (
        rng.uniform(265, 292)
        + gy * ys[:, None]
        + gx * xs[None]
        + 0.3 * _smooth_noise(rng, shape, max(4, 80 * k))
    )

    roads = []
    for _ in range(max(1, round(rng.uniform(1.0, 2.4) * math.sqrt(n_scale)))):
        theta = float(rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.1))
        cy, cx, half = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, rng.uniform(22, 34) * k
        sl, u, v = _local(shape, cy, cx, theta, h + w)
        p.paint(sl, np.abs(v) < half, IMPERVIOUS, _grey(rng)[:, None], 0.0)
        roads.append((cy, cx, theta, half))

    n_target, placed = max(1, round(rng.uniform(3, 5) * n_scale)), 0
    for _ in range(30 * n_target):
        if placed >= n_target:
            break
        a, b = rng.uniform(30, 75) * k, rng.uniform(22, 45) * k
        wing, ext = (
            (rng.uniform(0.4, 0.7) * b, rng.uniform(0.6, 1.2) * b)
            if rng.random() < 0.35
            else (0, 0)
        )
        theta, margin = float(rng.uniform(-0.5, 0.5)), 5 * k
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sl, u, v = _local(shape, cy, cx, theta, math.hypot(a, b + ext) + margin)
        main, wing_m = (
            (np.abs(u) < a) & (np.abs(v) < b),
            (u > a - 2 * wing) & (u < a) & (v > -b) & (v < b + ext),
        )
        grown = (np.abs(u) < a + margin) & (np.abs(v) < b + ext + margin)
        foot = main | wing_m
        if foot.sum() < 0.4 * 4 * a * b or (p.cls[sl][grown] != LOW_VEG).any():
            continue
        height, rise = rng.uniform(5, 12), rng.uniform(1.5, 3.5) * (rng.random() < 0.6)
        z = np.where(main, height + rise * (1 - np.abs(v) / b), 0)
        if wing:
            z = np.maximum(
                z, np.where(wing_m, height + rise * (1 - np.abs(u - a + wing) / wing), 0)
            )
        ground = dtm[min(max(int(cy), 0), h - 1), min(max(int(cx), 0), w - 1)]
        p.paint(sl, foot, BUILDING, _grey(rng)[:, None], z + ground - dtm[sl])  # level roofs
        placed += 1

    n_target, placed = max(1, round(rng.uniform(5, 10) * n_scale)), 0
    for _ in range(20 * n_target):
        if placed >= n_target:
            break
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if p.cls[int(cy), int(cx)] != LOW_VEG:
            continue
        radius, tree_h = rng.uniform(14, 40) * k, rng.uniform(4, 10)
        sl, u, v = _local(shape, cy, cx, 0.0, radius * 1.4)
        r, ang = np.hypot(u, v), np.arctan2(v, u)
        wobble = 1 + sum(
            rng.uniform(0, 0.12) * np.cos(j * ang + rng.uniform(0, 6.3)) for j in (2, 3, 5)
        )
        r = r / (radius * wobble)
        m = (r < 1) & np.isin(p.cls[sl], (LOW_VEG, IMPERVIOUS, TREE))
        canopy = tree_h * (0.45 + 0.55 * np.sqrt(np.clip(1 - r * r, 0, 1)))
        p.paint(sl, m, TREE, None, np.maximum(canopy, np.where(p.cls[sl] == TREE, p.rel[sl], 0)))
        placed += 1

    for _ in range(max(1, round(rng.uniform(2, 5) * n_scale))):
        for _ in range(20):
            sl, u, v = _local(
                shape, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, math.pi), 24 * k
            )
            s1, s2 = rng.uniform(5, 16) * k, rng.uniform(5, 16) * k
            m = (
                ((u / s1) ** 2 + (v / s2) ** 2 < 1)
                if rng.random() < 0.5
                else (np.abs(u) < s1) & (np.abs(v) < s2)
            )
            m &= np.isin(p.cls[sl], (LOW_VEG, IMPERVIOUS))
            if m.sum() >= 0.5 * s1 * s2:
                odd = rng.choice(
                    [[200, 40, 40, 60], [40, 50, 190, 30], [230, 150, 20, 120], [25, 25, 30, 20]]
                )
                z = rng.uniform(0, 0.3) if rng.random() < 0.4 else rng.uniform(0.5, 3.0)
                p.paint(sl, m, CLUTTER, (odd + rng.normal(0, 12, 4))[:, None], z)
                break

    def place_car(cy: float, cx: float, theta: float, allowed: tuple[int, ...]) -> bool:
        half_l, half_w = 22.5 * k, 10.0 * k
        sl, u, v = _local(shape, cy, cx, theta, math.hypot(half_l, half_w))
        m = (np.abs(u) < half_l) & (np.abs(v) < half_w)
        if m.sum() < 0.9 * 4 * half_l * half_w or not np.isin(p.cls[sl][m], allowed).all():
            return False
        rgb = rng.uniform(15, 245) * np.ones(3) if rng.random() < 0.5 else rng.uniform(0, 255, 3)
        colour = np.append(rgb, 0.8 * rgb.mean() + rng.normal(0, 10))
        z = rng.normal(1.5, 0.15) * (0.75 + 0.25 * (1 - (u / half_l) ** 2))
        p.paint(sl, m, CAR, colour[:, None], z)
        return True

    for cy, cx, theta, half in roads:
        n_cars = int(rng.integers(1, 4) * max(1, round(math.sqrt(n_scale))))
        for _ in range(8 * n_cars):
            t, lane = (
                rng.uniform(-0.5, 0.5) * (h + w),
                rng.choice([-1, 1]) * half * rng.uniform(0.3, 0.55),
            )
            py = cy + t * math.sin(theta) + lane * math.cos(theta)
            px = cx + t * math.cos(theta) - lane * math.sin(theta)
            n_cars -= place_car(py, px, theta + rng.normal(0, 0.04), (IMPERVIOUS,))
            if n_cars <= 0:
                break
    if rng.random() < 0.5:  # the odd car parked off the road
        for _ in range(10):
            if place_car(rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, math.pi), (LOW_VEG,)):
                break

    # colours: paved surfaces keep their base, vegetation (low or tree) one shared field
    veg_base = np.array(
        [rng.uniform(60, 90), rng.uniform(85, 115), rng.uniform(50, 75), rng.uniform(165, 215)]
    )
    veg = (
        veg_base[:, None, None]
        + 14
        * _smooth_noise(rng, shape, max(3, 20 * k))[None]
        * np.array([0.8, 1.0, 0.6, 1.3])[:, None, None]
    )
    is_veg = np.isin(p.cls, (LOW_VEG, TREE))
    texture = 7 * _smooth_noise(rng, shape, max(2, 10 * k))[None] + rng.normal(0, 9, (4, h, w))
    image = np.clip(np.rint(np.where(is_veg[None], veg, p.base) + texture), 0, 255).astype(np.uint8)

    # heights: objects above the terrain, tree canopies rough, image-matching noise everywhere
    rough = np.where(
        p.cls == TREE,
        0.5 * rng.standard_normal(shape) + 0.7 * _smooth_noise(rng, shape, max(2, 4 * k)),
        0,
    )
    rel = np.where(p.cls == TREE, np.maximum(p.rel + rough, 2.0), p.rel)
    dsm = dtm + rel + rng.normal(0, 0.05, shape)
    return SyntheticScene(p.cls, image, dsm.astype(np.float32), dtm.astype(np.float32))


def write_tile(
    root: str | Path,
    card: DatasetCard,
    tile_id: str,
    scene: SyntheticScene,
    crs: Any,
    transform: Affine | None,
) -> list[Path]:
    """Write every modality and label file of one tile at the card's first file patterns.

    Orthophoto bands come from the card's band names; 'elevation' is the DSM (float32 metres),
    'height' the 8-bit nDSM (``NDSM_DN_PER_M``). JPEGs carry no georeference, as released.
    """
    root, written = Path(root), []
    if card.class_names != list(CLASS_NAMES):
        raise ValueError(f"card '{card.name}' classes {card.class_names} differ from {CLASS_NAMES}")
    for mod in card.modalities.values():
        if mod.bands == ("elevation",):
            arr = scene.dsm
        elif mod.bands == ("height",):
            arr = np.clip(np.rint(scene.ndsm * NDSM_DN_PER_M), 0, 255)
        else:
            arr = scene.select(mod.bands)
        path = root / card.format_pattern(mod.patterns[0], tile_id)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            written.append(
                write_geotiff(path, arr.astype(mod.dtype), None, None, driver="JPEG", quality=95)
            )
        else:
            written.append(write_geotiff(path, arr.astype(mod.dtype), crs, transform))
    black = card.boundary_colour or (0, 0, 0)
    for kind, ids in (("full", scene.classes), ("eroded", erode_labels(scene.classes))):
        if kind in card.label_patterns:
            path = root / card.format_pattern(card.label_patterns[kind][0], tile_id)
            written.append(
                write_geotiff(path, encode_labels(ids, card.palette, black), crs, transform)
            )
    return written


def make_demo_scene(
    root: str | Path,
    areas: Sequence[int] = DEMO_AREAS,
    size: int | tuple[int, int] = 320,
    seed: int = 0,
    georeferenced: bool = True,
) -> Path:
    """Write a synthetic scene in the ISPRS Vaihingen release layout under ``root``.

    By default the areas of the demo configs' three disjoint splits: training
    (``DEMO_TRAIN_AREAS``), validation (``DEMO_VAL_AREAS``) and test (``DEMO_TEST_AREAS``).
    Each area is drawn from its own stream (``seed``, area), so its content does not depend on
    which other areas are written. ``size`` is px (square) or (height, width). With
    ``georeferenced=False`` the files carry no CRS and no transform, like some real tiles.
    """
    root = Path(root)
    card = load_card("vaihingen")
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(shape) < 8:
        raise ValueError(f"demo tiles need at least 8x8 px, got {shape}")
    gsd = float(card.gsd_m or 0.09)
    for area in areas:
        scene = synth_scene(np.random.default_rng([seed, int(area)]), shape, gsd)
        transform = grid_transform(VAIHINGEN_ORIGIN, (area - 1) % 8, (area - 1) // 8, shape, gsd)
        crs = card.assumed_crs if georeferenced else None
        write_tile(root, card, str(area), scene, crs, transform if georeferenced else None)
    return root
