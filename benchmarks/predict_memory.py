"""Peak memory of scripts/predict.py versus raster size (issue: streaming prediction).

Writes synthetic RGB + DSM GeoTIFF pairs of each size block by block (never whole in memory),
runs predict.py on each in a fresh process under GNU time, and prints one table: size, seconds,
peak RSS and the ratio to the smallest size. Not a test: run it by hand, e.g.

    python benchmarks/predict_memory.py --ckpt runs/demo_mobanet/latest/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window


def write_pair(folder: Path, size: int, block: int = 512) -> tuple[Path, Path]:
    """An RGB and a DSM raster of ``size``² written in block rows (smooth synthetic content)."""
    rgb, dsm = folder / f"rgb_{size}.tif", folder / f"dsm_{size}.tif"
    common = dict(driver="GTiff", width=size, height=size, crs="EPSG:32632", tiled=True,
                  blockxsize=256, blockysize=256, compress="deflate",
                  transform=from_origin(496000, 5420000, 0.09, 0.09))  # fmt: skip
    cols = np.arange(size, dtype=np.float32)
    with (
        rasterio.open(rgb, "w", count=3, dtype="uint8", **common) as r,
        rasterio.open(dsm, "w", count=1, dtype="float32", **common) as d,
    ):
        for row in range(0, size, block):
            n = min(block, size - row)
            rows = np.arange(row, row + n, dtype=np.float32)[:, None]
            wave = np.sin(rows / 37.0) * np.cos(cols / 53.0)
            img = np.stack([(127 + 100 * wave * k).astype(np.uint8) for k in (1.0, 0.6, -0.8)])
            r.write(img, window=Window(0, row, size, n))
            d.write((280 + 8 * wave)[None].astype(np.float32), window=Window(0, row, size, n))
    return rgb, dsm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", help="folder for the rasters (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="rsfusion_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        rgb, dsm = write_pair(work, size)
        cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "rsfusion.cli.predict",
               "--ckpt", args.ckpt, "--rgb", str(rgb), "--x", str(dsm), "--out",
               str(work / f"out_{size}"), "--window", str(args.window), "--batch-size",
               str(args.batch_size), "--probs"]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        peak_mib = int(proc.stderr.strip().splitlines()[-1]) / 1024
        rows.append((size, seconds, peak_mib))
    base = rows[0][2]
    print(f"{'raster':>12} {'MPix':>7} {'seconds':>8} {'peak RSS MiB':>13} {'ratio':>6}")
    for size, seconds, peak in rows:
        print(f"{size:>5}x{size:<6} {size * size / 1e6:7.1f} {seconds:8.1f} {peak:13.0f} "
              f"{peak / base:6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
