"""Output writing speed and size (issue 16: compression and writing that keep up with a GPU).

Writes the outputs of one prediction, as ``predict.py`` does, through
:class:`~rsfusion.inference.writer.StreamingGeoTIFF` in row bands of ``--rows`` rows: the class
map (1 band uint8, nodata 255, colour table), the probabilities (``--classes`` bands uint8) and
the confidence (1 band uint8), for every combination of compression and level (``--compress``,
e.g. ``deflate:1``), predictor (``--predictor``: 1 none, 2 horizontal differences), GDAL
compression threads (``--threads``: a count or ALL_CPUS) and tile size (``--tiles``).

The content is made once, before any timing, as ``predict.py`` makes it from logits: the
logits are smooth random fields (four octaves, 512 to 8 px, plus a little per-pixel noise) with
per-class biases, so the class map has the coherent regions and uneven class shares of a
land-cover map; the probabilities are their softmax times 255, rounded (each pixel's bands sum
to ~255), the confidence the largest one; a corner of the raster has no data.

Each configuration runs ``--repeats`` times, in rounds that run every configuration in turn (a
slow spell of a shared machine weighs on all alike). The table gives MPix of raster per second
(all three outputs written; best and median), the seconds of each output (best), the file sizes
and the speed of reading the three files back (best). ``--cog`` adds :func:`to_cog` of the
three outputs (written at 512 px tiles) for each compression and thread count.

Not a test: run it by hand, e.g.

    nice -n 10 python benchmarks/writer_bench.py --size 8192 --repeats 3 --cog
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from rsfusion.inference.writer import StreamingGeoTIFF, to_cog

NAMES = ("impervious_surfaces", "building", "low_vegetation", "tree", "car", "clutter")
COLOURS = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
#: logit offsets per class: land-cover shares (few cars and clutter), cycled for other counts
BIASES = (0.35, 0.3, 0.25, 0.3, -0.45, -0.5)
OUTPUTS = ("classes", "probs", "confidence")
#: (cell px, amplitude) of the smooth fields summed into the logits
OCTAVES = ((512, 1.0), (128, 0.6), (32, 0.3), (8, 0.15))
TEMPERATURE = 12.0  # logit scale: confident inside regions, unsure at their borders


@dataclass(frozen=True)
class Config:
    """One way of writing the outputs."""

    compress: str
    level: int | None
    predictor: int
    threads: int | str
    block: int

    @property
    def label(self) -> str:
        level = "" if self.level is None else f" {self.level}"
        return f"{self.compress}{level} | {self.predictor} | {self.threads} | {self.block}"


def parse_compress(text: str) -> tuple[str, int | None]:
    """``deflate:1`` -> ("deflate", 1); ``lzw`` -> ("lzw", None)."""
    name, _, level = text.partition(":")
    return name.lower(), int(level) if level else None


def parse_threads(text: str) -> int | str:
    """``1`` -> 1, ``ALL_CPUS`` stays a string."""
    return int(text) if text.isdigit() else text.upper()


# ------------------------------------------------------------------------------ the content
def _upsample(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray, cell: int) -> np.ndarray:
    """Bilinear values of a coarse ``(k, gh, gw)`` grid with ``cell`` px cells at pixel
    ``rows`` x ``cols`` (separable: along rows on the coarse grid first)."""

    def weights(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = (px + 0.5) / cell + 0.5  # the grid has one padding cell before the raster
        i = np.floor(f).astype(np.intp)
        return i, (f - i).astype(np.float32)

    iy, wy = weights(rows)
    ix, wx = weights(cols)
    by_rows = grid[:, iy] * (1 - wy)[:, None] + grid[:, iy + 1] * wy[:, None]
    return by_rows[:, :, ix] * (1 - wx) + by_rows[:, :, ix + 1] * wx


def scene(size: int, k: int, rows: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The outputs of a ``size`` x ``size`` prediction, one dict per row band of ``rows``."""
    rng = np.random.default_rng(seed)
    grids = [
        (cell, amp * rng.standard_normal((k, size // cell + 3, size // cell + 3), np.float32))
        for cell, amp in OCTAVES
    ]  # fmt: skip
    bias = np.array([BIASES[i % len(BIASES)] for i in range(k)], np.float32)[:, None, None]
    cols = np.arange(size)
    bands = []
    for row in range(0, size, rows):
        n = min(rows, size - row)
        ys = np.arange(row, row + n)
        logits = 0.02 * rng.standard_normal((k, n, size), np.float32) + bias
        for cell, grid in grids:
            logits += _upsample(grid, ys, cols, cell)
        logits *= TEMPERATURE
        valid = (ys[:, None] + cols[None, :]) >= size // 8  # a corner without data
        classes = np.where(valid, logits.argmax(0), 255).astype(np.uint8)
        probs = np.exp(logits - logits.max(0, keepdims=True))
        probs /= probs.sum(0, keepdims=True)
        probs *= valid
        confidence = np.rint(probs.max(0) * 255).astype(np.uint8)
        probs = np.rint(probs * 255).astype(np.uint8)
        bands.append({"classes": classes[None], "probs": probs, "confidence": confidence[None]})
    return bands


def describe(bands: list[dict[str, np.ndarray]]) -> str:
    """Class shares, mean confidence and probability sums of the content."""
    classes = np.concatenate([b["classes"][0] for b in bands])
    valid = classes != 255
    k = bands[0]["probs"].shape[0]
    shares = np.bincount(classes[valid].ravel(), minlength=k) / valid.sum()
    conf = np.concatenate([b["confidence"][0] for b in bands])[valid]
    sums = np.concatenate([b["probs"].sum(0, dtype=np.int32) for b in bands])[valid]
    regions = np.count_nonzero(np.diff(classes.astype(np.int16), axis=1)) / classes.shape[0]
    return (
        f"content: class shares {' '.join(f'{s:.1%}' for s in shares)}; nodata "
        f"{1 - valid.mean():.1%}; mean confidence {conf.mean() / 255:.3f} "
        f"({(conf == 255).mean():.0%} at 255); probability sums {sums.min()}-{sums.max()}; "
        f"{regions:.1f} class changes per row"
    )


# ------------------------------------------------------------------------------ the work
def write_outputs(
    bands: list[dict[str, np.ndarray]], folder: Path, cfg: Config
) -> dict[str, tuple[float, Path]]:
    """Write the three outputs one after the other; seconds and path of each."""
    size = bands[0]["classes"].shape[2]
    height = sum(b["classes"].shape[1] for b in bands)
    grid = ("EPSG:32632", from_origin(496000.0, 5420000.0, 0.1, 0.1), size, height)
    k = bands[0]["probs"].shape[0]
    names = [NAMES[i % len(NAMES)] for i in range(k)]
    styles = {
        "classes": {"nodata": 255, "class_names": names,
                    "colormap": {i: COLOURS[i % len(COLOURS)] for i in range(k)}},
        "probs": {"class_names": names, "band_descriptions": names},
        "confidence": {"nodata": 0, "class_names": names, "band_descriptions": ["confidence"]},
    }  # fmt: skip
    done = {}
    for name in OUTPUTS:
        path = folder / f"scene_{name}.tif"
        count = bands[0][name].shape[0]
        start = time.perf_counter()
        with StreamingGeoTIFF(
            path, grid, count, "uint8", block=cfg.block, compress=cfg.compress, level=cfg.level,
            threads=cfg.threads, predictor=cfg.predictor, **styles[name],
        ) as w:  # fmt: skip
            row = 0
            for band in bands:
                w.write_rows(row, band[name])
                row += band[name].shape[1]
        done[name] = (time.perf_counter() - start, path)
    return done


def read_back(paths: Sequence[Path]) -> float:
    """Seconds to read every band of the files whole (GDAL's defaults: one thread)."""
    start = time.perf_counter()
    for path in paths:
        with rasterio.open(path) as src:
            src.read()
    return time.perf_counter() - start


def _row(label: str, mpix: float, totals: list[float], cells: Sequence[str]) -> str:
    best, median = min(totals), statistics.median(totals)
    return f"| {label} | {mpix / best:.1f} | {mpix / median:.1f} | " + " | ".join(cells) + " |"


def bench_writes(
    bands: list[dict[str, np.ndarray]], configs: Sequence[Config], repeats: int, work: Path
) -> list[str]:
    """The write table: every configuration ``repeats`` times, in rounds."""
    mpix = bands[0]["classes"].shape[2] * sum(b["classes"].shape[1] for b in bands) / 1e6
    times = {c: {n: [] for n in (*OUTPUTS, "read")} for c in configs}
    sizes: dict[Config, dict[str, int]] = {}
    for _ in range(repeats):
        for cfg in configs:
            folder = Path(tempfile.mkdtemp(dir=work))
            done = write_outputs(bands, folder, cfg)
            for name, (seconds, path) in done.items():
                times[cfg][name].append(seconds)
                sizes[cfg] = sizes.get(cfg, {}) | {name: path.stat().st_size}
            times[cfg]["read"].append(read_back([p for _, p in done.values()]))
            shutil.rmtree(folder)
    lines = [
        "| compress level | predictor | threads | tile | MPix/s best | MPix/s median "
        "| s classes / probs / conf (best) | MB total | MB classes / probs / conf "
        "| read MPix/s (best) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg in configs:
        t = times[cfg]
        totals = [sum(parts) for parts in zip(*(t[n] for n in OUTPUTS))]
        mb = {n: sizes[cfg][n] / 2**20 for n in OUTPUTS}
        cells = [
            " / ".join(f"{min(t[n]):.2f}" for n in OUTPUTS),
            f"{sum(mb.values()):.2f}",
            " / ".join(f"{mb[n]:.2f}" for n in OUTPUTS),
            f"{mpix / min(t['read']):.1f}",
        ]
        lines.append(_row(cfg.label, mpix, totals, cells))
    return lines


def bench_cogs(
    bands: list[dict[str, np.ndarray]], configs: Sequence[Config], repeats: int, work: Path
) -> list[str]:
    """The COG table: :func:`to_cog` of the three outputs written with each configuration."""
    mpix = bands[0]["classes"].shape[2] * sum(b["classes"].shape[1] for b in bands) / 1e6
    sources = {}
    for cfg in configs:
        sources[cfg] = write_outputs(bands, Path(tempfile.mkdtemp(dir=work)), cfg)
    times: dict[Config, list[float]] = {c: [] for c in configs}
    sizes: dict[Config, int] = {}
    for _ in range(repeats):
        for cfg in configs:
            start, total = time.perf_counter(), 0
            for _, src in sources[cfg].values():
                cog = src.with_name(f"cog_{src.name}")
                to_cog(src, cog, compress=cfg.compress, level=cfg.level, threads=cfg.threads)
                total += cog.stat().st_size
                cog.unlink()
            times[cfg].append(time.perf_counter() - start)
            sizes[cfg] = total
    for parts in sources.values():
        shutil.rmtree(next(iter(parts.values()))[1].parent)
    lines = [
        "| to_cog: compress level | threads | MPix/s best | MPix/s median | MB (3 COGs) |",
        "|---|---|---|---|---|",
    ]
    for cfg in configs:
        label = f"{cfg.compress}{'' if cfg.level is None else f' {cfg.level}'} | {cfg.threads}"
        lines.append(_row(label, mpix, times[cfg], [f"{sizes[cfg] / 2**20:.2f}"]))
    return lines


def cpu_name() -> str:
    """The CPU's model name and the cores this process may use."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            line.split(":", 1)[1].strip() for line in info.splitlines()
            if line.startswith("model name")
        )  # fmt: skip
    except (OSError, StopIteration):
        import platform

        model = platform.processor() or platform.machine()
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=8192, help="raster side in px")
    parser.add_argument("--rows", type=int, default=512, help="rows per band written")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compress", nargs="+", default=["none", "deflate:1", "deflate:6", "zstd:1", "zstd:9",
                                          "lzw"], help="name[:level] ...",
    )  # fmt: skip
    parser.add_argument("--predictor", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--threads", nargs="+", default=["1", "ALL_CPUS"])
    parser.add_argument("--tiles", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--cog", action="store_true", help="also time to_cog")
    parser.add_argument("--work", type=Path, default=None, help="folder for the files")
    args = parser.parse_args(argv)
    threads = [parse_threads(t) for t in args.threads]
    compressions = [parse_compress(c) for c in args.compress]
    configs = [
        Config(name, level, pred, thr, block)
        for (name, level), pred, thr, block in itertools.product(
            compressions, args.predictor, threads, args.tiles
        )
        if not (name == "none" and pred != 1)  # a predictor without compression does nothing
    ]
    load = os.getloadavg()
    print(f"command: python {' '.join([sys.argv[0], *(argv or sys.argv[1:])])}")
    print(
        f"{cpu_name()}; niceness {os.nice(0)}; load {load[0]:.2f}; GDAL "
        f"{rasterio.__gdal_version__}, rasterio {rasterio.__version__}; "
        f"{datetime.date.today().isoformat()}"
    )
    start = time.perf_counter()
    bands = scene(args.size, args.classes, args.rows)
    print(
        f"{args.size} x {args.size} px, {args.classes} classes, {args.rows}-row bands "
        f"(made in {time.perf_counter() - start:.0f} s); {describe(bands)}"
    )
    print(f"raw: {sum(v.nbytes for b in bands for v in b.values()) / 2**20:.0f} MB; "
          f"{args.repeats} rounds; best = least disturbed by other load")  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="writer_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print("\n".join(["", *bench_writes(bands, configs, args.repeats, work)]))
        if args.cog:
            cogs = [Config(n, lv, 2, t, 512) for (n, lv), t in itertools.product(
                compressions, threads)]  # fmt: skip
            print("\n".join(["", *bench_cogs(bands, cogs, args.repeats, work)]))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(f"\nload at the end {load[0]:.2f}; {time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
