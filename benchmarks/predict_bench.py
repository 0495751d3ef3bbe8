"""Prediction speed and memory, side by side in one run (issue: prediction at speed and scale).

One table:

* **end-to-end vs model-only**: ``predict_pair`` (background reads, normalisation, model,
  blending, GeoTIFF writing) versus the model alone on the same, pre-read windows; both in MPix of
  raster per second, and their ratio (goal >= 0.85).
* **reader vs plain rasterio**: the background reader (threads, batches of raw windows: the
  model runner normalises them on its device) versus a plain loop of rasterio windowed reads of
  the same windows (goal >= 0.8x).
* **bf16 vs fp32**: model-only speed ratio (goal >= 2x) and the share of equal pixels in the
  end-to-end class maps (goal >= 99.5 %).
* the speed rows keep freed memory for reuse as the CLIs do (:mod:`rsfusion.allocator`);
  ``--glibc-default`` measures them with glibc's default malloc settings instead.
* **peak RSS** of ``predict.py`` in a fresh process for a 2048^2 and an 8192^2 raster (goal:
  ratio <= 1.3), on rasters of smooth waves written block by block.

The speed rows run on a synthetic demo scene of ``--size`` (the kind of content the demo
models were trained on; ``--content waves`` uses the smooth waves instead).

Not a test: run it by hand on a quiet machine, e.g.

    python benchmarks/predict_bench.py --ckpt runs/demo_mobanet/latest/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import rasterio
import torch
from predict_memory import write_pair  # benchmarks/ is on sys.path when run as a script

from rsfusion.allocator import keep_freed_memory
from rsfusion.data.windows import batched, plan_windows
from rsfusion.inference.predict import PredictOptions, load_predictor, pair_spec, predict_pair
from rsfusion.inference.reader import WindowReader
from rsfusion.inference.runner import ModelRunner, cpu_has_bf16


def rounds(fns: Sequence[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Wall times of each function over ``repeats`` rounds that run them in turn, so a slow
    spell of the machine (other load, clock changes) weighs on all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return times


def _interleaved(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Best wall time of each function over :func:`rounds`."""
    return [min(t) for t in rounds(fns, repeats)]


def cpu_name() -> str:
    """The CPU model and its bf16 units: AMX tiles, or AVX512-BF16 dot products only (bf16 then
    peaks at 2x fp32's multiply-adds, so memory-bound models gain less)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), platform.machine())  # fmt: skip
    units = "AMX" if "amx_bf16" in info else "AVX512-BF16" if "avx512_bf16" in info else "no bf16"
    return f"{model} ({units})"


def peak_rss(ckpt: str, rgb: Path, dsm: Path, out: Path, window: int, batch: int) -> float:
    """Peak resident memory (MiB) of predict.py on one pair, in a fresh process."""
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "rsfusion.cli.predict",
           "--ckpt", ckpt, "--rgb", str(rgb), "--x", str(dsm), "--out", str(out),
           "--window", str(window), "--batch-size", str(batch), "--probs", "--no-progress", "--redo"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--size", type=int, default=2048, help="raster side for the speed rows")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[2048, 8192])
    parser.add_argument("--work", help="folder for the rasters (default: a temporary one)")
    parser.add_argument(
        "--content", choices=("scene", "waves"), default="scene",
        help="speed rows on a synthetic demo scene (default) or on smooth waves",
    )  # fmt: skip
    parser.add_argument(
        "--glibc-default", action="store_true",
        help="speed rows with glibc's default malloc settings (page faults for large tensors)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    kept = False if args.glibc_default else keep_freed_memory()
    work = Path(args.work or tempfile.mkdtemp(prefix="rsfusion_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.content == "scene":  # the demo scene's kind of content: what the model knows
        from rsfusion.data.demo import make_demo_scene

        scene = make_demo_scene(work / "scene", areas=[1], size=args.size, seed=3)
        rgb = scene / "top" / "top_mosaic_09cm_area1.tif"
        dsm = scene / "dsm" / "dsm_09cm_matching_area1.tif"
    else:
        rgb, dsm = write_pair(work, args.size)
    model, meta = load_predictor(args.ckpt)
    spec = pair_spec(meta, rgb, dsm)
    wins = plan_windows(args.size, args.size, args.window, args.window - args.overlap)
    batches = list(batched(wins, args.batch_size))
    raster_mpix = args.size**2 / 1e6
    window_mpix = len(wins) * args.window**2 / 1e6
    rows: list[tuple[str, str, str]] = []

    # reader vs plain rasterio windowed reads of the same windows
    def plain() -> None:
        with rasterio.open(rgb) as a, rasterio.open(dsm) as b:
            for w in wins:
                a.read(window=w)  # the plan keeps every window inside the raster
                b.read(window=w)

    def reader() -> None:
        for _ in WindowReader(spec, batches, args.window, threads=args.readers):
            pass

    t_plain, t_reader = _interleaved((plain, reader), args.repeats)
    rows.append(("plain rasterio reads", f"{window_mpix / t_plain:.1f} MPix/s", ""))
    rows.append(("background reader", f"{window_mpix / t_reader:.1f} MPix/s",
                 f"{t_plain / t_reader:.2f}x plain (goal >= 0.8)"))  # fmt: skip

    # model only on pre-read windows and end-to-end, both precisions, all timed in turns
    inputs = [(r, x) for _, r, x in WindowReader(spec, batches, args.window, threads=0)]
    precisions = ["fp32", "bf16"] if cpu_has_bf16() or torch.cuda.is_available() else ["fp32"]
    fns = []
    for precision in precisions:
        # a fresh model per precision: channels_last and BatchNorm folding change it in place
        runner = ModelRunner(load_predictor(args.ckpt)[0], precision=precision)
        runner(*inputs[0], spec.norm)  # warm-up: kernel selection, allocations, folding
        opts = PredictOptions(window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                              readers=args.readers, precision=precision)  # fmt: skip

        def model_only(runner: ModelRunner = runner) -> None:
            for r, x in inputs:
                runner(r, x, spec.norm)

        def end_to_end(runner: ModelRunner = runner, opts=opts, precision=precision) -> None:
            predict_pair(runner, meta, rgb, dsm, work / f"e2e_{precision}", opts)

        fns += [model_only, end_to_end]
    times = _interleaved(fns, args.repeats)
    speeds = {p: (raster_mpix / times[2 * i], raster_mpix / times[2 * i + 1])
              for i, p in enumerate(precisions)}  # fmt: skip
    classes = {}
    for precision in precisions:
        with rasterio.open(work / f"e2e_{precision}" / f"{rgb.stem}_classes.tif") as src:
            classes[precision] = src.read(1)
    fast = precisions[-1]
    for precision in precisions:
        note = ""
        if precision == "bf16":
            note = f"{speeds['bf16'][0] / speeds['fp32'][0]:.2f}x fp32 (goal >= 2)"
        rows.append((f"model only, {precision}", f"{speeds[precision][0]:.3f} MPix/s", note))
    for precision in precisions:
        model, e2e = speeds[precision]
        rows.append((f"end-to-end, {precision}", f"{e2e:.3f} MPix/s",
                     f"{e2e / model:.2f} of model only (goal >= 0.85)"))  # fmt: skip
    if "bf16" in classes:
        equal = float((classes["bf16"] == classes["fp32"]).mean())
        rows.append(("bf16 vs fp32 pixels", f"{100 * equal:.2f} % equal", "goal >= 99.5 %"))

    # peak RSS in fresh processes
    rss = {}
    for size in args.rss_sizes:
        a, b = write_pair(work, size)
        start = time.perf_counter()
        rss[size] = peak_rss(args.ckpt, a, b, work / f"rss_{size}", args.window, args.batch_size)
        rows.append((f"peak RSS {size}x{size}", f"{rss[size]:.0f} MiB",
                     f"{time.perf_counter() - start:.0f} s"))  # fmt: skip
    if len(rss) >= 2:
        small, big = min(rss), max(rss)
        rows.append((f"RSS ratio {big}^2 / {small}^2", f"{rss[big] / rss[small]:.2f}",
                     "goal <= 1.3"))  # fmt: skip

    print(f"\n{cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.size}^2 raster, window {args.window}, "
          f"overlap {args.overlap}, batch {args.batch_size}, {len(wins)} windows, "
          f"{args.readers} reader threads, {args.content} content, checkpoint {args.ckpt}, "
          f"fast precision {fast}, freed memory kept: {kept}")  # fmt: skip
    print(f"| {'measure':<28} | {'value':>16} | {'note':<36} |")
    print(f"|{'-' * 30}|{'-' * 18}|{'-' * 38}|")
    for name, value, note in rows:
        print(f"| {name:<28} | {value:>16} | {note:<36} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
