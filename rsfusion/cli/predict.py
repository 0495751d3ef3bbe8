"""Predict class rasters from an RGB (+ X) raster pair, or from folders of pairs.

Writes <stem>_classes.tif (colour table and class names) and optionally
<stem>_probs.tif, <stem>_confidence.tif and <stem>.gpkg, on the RGB raster's
grid, CRS and transform. With folders (or --pairs CSV) every pair is predicted in
turn; pairs whose outputs are all complete are skipped, so a rerun resumes. Under
torchrun --nproc-per-node N each rank takes its share of the pairs (on its own
GPU when there are GPUs) and writes its own files.

Before the first prediction every pair is checked against the model and itself:
bands, dtype and value range (a uint16 or 0..1 orthophoto for a model trained on
uint8 ones is refused unless --rgb-scale rescales it), grid (--align), overlap
(an X raster that misses the orthophoto is refused), GSD (a warning past a
factor of 2; --resample-to-gsd reads at the training GSD). All problems are
listed at once and nothing is written. Pixels without X (nodata, outside it)
are nodata in the outputs.

Outputs are named after the whole RGB file name; a run in which two inputs would
write the same outputs is refused before any work. In a folder run a raster that
cannot be read (corrupt, truncated) is reported and the others go on; the run
then ends with an error listing the failures (exit 2). A full disk stops the run. Temporary files live in private staging folders in --out,
removed when a run ends and, after a hard kill, by the next run.

Example:
  python scripts/predict.py --ckpt last.ckpt --rgb top.tif --x dsm.tif --out pred/
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from rsfusion.allocator import keep_freed_memory
from rsfusion.cli import USER_ERRORS, show_messages
from rsfusion.errors import PredictionError
from rsfusion.inference.api import (
    PredictionInterrupted,
    Predictor,
    check_out_dir,
    predict,
)
from rsfusion.inference.compression import COMPRESSIONS, DEFAULT_THREADS
from rsfusion.inference.folder import Pair
from rsfusion.inference.predict import PredictOptions
from rsfusion.inference.runner import resolve_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rsfusion-predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt", required=True, help="checkpoint written by train.py, or a .onnx from export.py"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--rgb", help="orthophoto (GeoTIFF or any GDAL raster), or a folder of them")
    src.add_argument("--pairs", help="CSV with columns rgb,x (paths relative to the CSV)")
    p.add_argument("--x", help="X raster (DSM / nDSM) of the same scene, or a folder of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--dataset",
        help="a generalist (joint) checkpoint's dataset whose classes, normalisation and "
        "modality to use (a source name or card, e.g. deliver)",
    )
    p.add_argument(
        "--modality",
        help="the X modality the model is told (SegRGB-X picks its LoRA by it; default: the "
        "checkpoint's, e.g. depth, thermal, event, dsm)",
    )
    p.add_argument("--window", type=int, help="window size (default: the training window)")
    p.add_argument("--overlap", type=int, help="overlap in pixels (default: window / 4)")
    p.add_argument(
        "--blend", choices=("cosine", "linear", "none", "sum"), default="cosine",
        help="how overlapping windows are merged: cosine (default) or linear weight ramps over "
        "the overlap, none (each window's centre only), sum (logits summed, the ISPRS protocol)",
    )  # fmt: skip
    p.add_argument(
        "--compress", choices=COMPRESSIONS, default="deflate",
        help="lossless compression of the output GeoTIFFs: deflate (default: every GIS tool "
        "reads it), zstd (faster, files as small; older GDALs and many tools cannot read it), "
        "lzw or none",
    )  # fmt: skip
    p.add_argument(
        "--compress-level", type=int, default=None,
        help="deflate 1-9 or zstd 1-22 (default 1: the fastest; 6 saves about 3 %% of the size "
        "at half the speed)",
    )  # fmt: skip
    p.add_argument(
        "--write-threads", default=str(DEFAULT_THREADS),
        help="GDAL threads compressing the outputs: a count or ALL_CPUS (default)",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=int, default=None,
        help="windows per forward pass (default: on a GPU the most that fit in its free "
        "memory, measured once, up to 64; 4 on a CPU)",
    )  # fmt: skip
    p.add_argument("--probs", action="store_true", help="also write per-class probabilities")
    p.add_argument("--confidence", action="store_true", help="also write max probability")
    p.add_argument("--cog", action="store_true", help="write Cloud Optimized GeoTIFFs")
    p.add_argument("--vector", action="store_true", help="also write <stem>.gpkg polygons")
    p.add_argument("--min-area", type=float, default=0.0, help="polygon area filter (CRS units²)")
    p.add_argument("--simplify", type=float, default=0.0, help="polygon simplification tolerance")
    p.add_argument("--align", action="store_true", help="resample X onto the RGB grid")
    p.add_argument(
        "--rgb-scale", metavar="FACTOR",
        help="multiply the orthophoto's values by FACTOR while reading, for one on another "
        "scale than the training rasters: 255/65535 (uint16 onto 0..255), 255 (0..1 onto "
        "0..255), 255/4095 (12-bit), or auto (from its dtype and values and the checkpoint)",
    )  # fmt: skip
    p.add_argument(
        "--resample-to-gsd", action="store_true",
        help="read the pair at the model's training GSD (outputs stay on the orthophoto's grid)",
    )  # fmt: skip
    p.add_argument(
        "--x-missing", choices=("nodata", "predict"), default="nodata",
        help="pixels without X (nodata, NaN, outside the X raster): nodata in the outputs "
        "(default), or predicted with X as 0 as training treats missing X",
    )  # fmt: skip
    p.add_argument("--memory-mb", type=int, default=64, help="GDAL block cache (GDAL_CACHEMAX)")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU, else CPU), cpu, cuda")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16", "int8"), default="auto",
        help="autocast precision (auto: bf16 on GPUs and on CPUs with AMX/AVX512-BF16, else "
        "fp32; on CPUs the checkpoint's int8 model instead where scripts/quantize.py made one "
        "that passed its check); int8: the int8 model in ONNX Runtime on the CPU (quantised, "
        "checked and cached beside the checkpoint on first use)",
    )  # fmt: skip
    p.add_argument(
        "--fp32-stages", type=int, default=1,
        help="with bf16/fp16: first stages (and embeddings) of MoBaNet/KTB run in float32",
    )  # fmt: skip
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    p.add_argument("--readers", type=int, default=1, help="background reader threads (0: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--redo", action="store_true", help="predict pairs whose outputs exist too")
    return p


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class _StderrLines(logging.Handler):
    """Log records as plain lines on the current ``sys.stderr`` (looked up at each record)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def show_input_notes() -> None:
    """Print the input checks' warnings and notes (``rsfusion.inference`` logger) on stderr."""
    logger = logging.getLogger("rsfusion.inference")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _print_outputs(pair: Pair, written: dict[str, Path]) -> None:
    """Each output of a finished pair as ``NAME: PATH`` on stdout."""
    for name, path in written.items():
        print(f"{name}: {path}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C: temporary files are removed and no
    # output is left half-written under its final name; rerunning completes the job.
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C too, also when a shell started it in the background (with SIGINT ignored, so
    # Python installed no KeyboardInterrupt handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    show_messages()
    show_input_notes()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    options = PredictOptions(
        window=args.window, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
        compress=args.compress, compress_level=args.compress_level,
        write_threads=int(args.write_threads) if args.write_threads.isdigit()
        else args.write_threads,
        probs=args.probs, confidence=args.confidence, cog=args.cog, vector=args.vector,
        align=args.align, min_area=args.min_area, simplify=args.simplify, device=args.device,
        precision=args.precision, fp32_stages=args.fp32_stages, flip=args.flip,
        readers=args.readers, progress=not args.no_progress
        and (sys.stderr.isatty() or os.environ.get("RSFUSION_PROGRESS") == "1"),
        progress_position=int(os.environ.get("LOCAL_RANK", "0")),
        rgb_scale=args.rgb_scale, resample_to_gsd=args.resample_to_gsd,
        x_missing=args.x_missing,
    )  # fmt: skip
    out = Path(args.out)
    try:
        # everything the command line alone decides is checked before the model loads
        options.check()
        if args.memory_mb < 1:
            raise PredictionError(f"--memory-mb {args.memory_mb}: must be at least 1")
        os.environ["GDAL_CACHEMAX"] = str(args.memory_mb)
        resolve_device(args.device)  # before the output folder is made
        check_out_dir(out)
        keep_freed_memory()  # no page faults for every batch's tensors (rsfusion/allocator.py)
        predictor = Predictor.load(
            args.ckpt, args.dataset, args.modality, args.precision, args.device, args.window
        )
        predict(
            predictor, args.rgb, args.x, out=out, pairs=args.pairs,
            options=options, redo=args.redo, rank=rank, world=world, on_outputs=_print_outputs,
        )  # fmt: skip
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        what = err.description if isinstance(err, PredictionInterrupted) else "nothing was written"
        print(f"interrupted: {what}; rerun to complete", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
