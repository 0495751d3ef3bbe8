"""``python scripts/predict.py --ckpt CKPT --rgb PATH|DIR [--x PATH|DIR] --out DIR [options]``.

Writes ``<stem>_classes.tif`` (colour table and class names), optionally ``<stem>_probs.tif``,
``<stem>_confidence.tif`` and ``<stem>.gpkg``, on the RGB raster's grid, CRS and transform.
With folders (or ``--pairs CSV``) every pair is predicted in turn; pairs whose outputs are all
complete are skipped, so a rerun resumes. Under ``torchrun --nproc-per-node N`` each rank takes
its share of the pairs (on its own GPU when there are GPUs) and writes its own files.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import rasterio

from rsfusion.allocator import keep_freed_memory
from rsfusion.cli import USER_ERRORS, show_messages
from rsfusion.errors import MissingFileError
from rsfusion.inference.folder import (
    Pair,
    PairingError,
    outputs_done,
    pair_folders,
    read_pairs_csv,
    remove_stale_partials,
    shard,
)
from rsfusion.inference.predict import PredictOptions, load_predictor, predict_pair
from rsfusion.models.checkpoint import CheckpointMeta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsfusion-predict", description=__doc__)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
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
    p.add_argument("--blend", choices=("cosine", "linear", "none", "sum"), default="cosine")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--probs", action="store_true", help="also write per-class probabilities")
    p.add_argument("--confidence", action="store_true", help="also write max probability")
    p.add_argument("--cog", action="store_true", help="write Cloud Optimized GeoTIFFs")
    p.add_argument("--vector", action="store_true", help="also write <stem>.gpkg polygons")
    p.add_argument("--min-area", type=float, default=0.0, help="polygon area filter (CRS units²)")
    p.add_argument("--simplify", type=float, default=0.0, help="polygon simplification tolerance")
    p.add_argument("--align", action="store_true", help="resample X onto the RGB grid")
    p.add_argument("--memory-mb", type=int, default=64, help="GDAL block cache (GDAL_CACHEMAX)")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU, else CPU), cpu, cuda")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
        help="autocast precision (auto: bf16 on GPUs and on CPUs with AMX/AVX512-BF16, else fp32)",
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


def collect_pairs(args: argparse.Namespace, meta: CheckpointMeta) -> list[Pair]:
    """The pairs named on the command line: one file pair, two folders or a CSV."""
    if args.pairs:
        return read_pairs_csv(Path(args.pairs))
    rgb, x = Path(args.rgb), Path(args.x) if args.x else None
    if rgb.is_dir():
        if x is not None and not x.is_dir():
            raise PairingError(f"--rgb {rgb} is a folder, so --x must be one too (got {x})")
        return pair_folders(rgb, x, meta.card, meta.rgb_modality, meta.x_modality)
    if not rgb.is_file():
        raise MissingFileError(f"--rgb {rgb}: no such file or folder")
    if x is not None and not x.is_file():
        raise MissingFileError(f"--x {x}: no such file")
    return [Pair(rgb, x)]


def _names(options: PredictOptions) -> list[str]:
    names = ["{stem}_classes.tif"]
    names += ["{stem}_probs.tif"] if options.probs else []
    names += ["{stem}_confidence.tif"] if options.confidence else []
    names += ["{stem}.gpkg"] if options.vector else []
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C: temporary files are removed and no
    # output is left under its final name; rerunning completes the job.
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C too, also when a shell started it in the background (with SIGINT ignored, so
    # Python installed no KeyboardInterrupt handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["GDAL_CACHEMAX"] = str(args.memory_mb)
    show_messages()
    keep_freed_memory()  # no page faults for every batch's tensors (rsfusion/allocator.py)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    options = PredictOptions(
        window=args.window, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
        probs=args.probs, confidence=args.confidence, cog=args.cog, vector=args.vector,
        align=args.align, min_area=args.min_area, simplify=args.simplify, device=args.device,
        precision=args.precision, fp32_stages=args.fp32_stages, flip=args.flip,
        readers=args.readers, progress=not args.no_progress and sys.stderr.isatty(),
        progress_position=int(os.environ.get("LOCAL_RANK", "0")),
    )  # fmt: skip
    out = Path(args.out)
    tag = f"rank {rank}/{world}: " if world > 1 else ""
    try:
        model, meta = load_predictor(args.ckpt, args.dataset, args.modality)
        runner = options.runner(model)
        mine = shard(collect_pairs(args, meta), rank, world)
        print(f"{tag}{len(mine)} pair(s), {runner.describe()}", file=sys.stderr)
        for pair in mine:
            stem = pair.rgb.stem
            if not args.redo and outputs_done(out, stem, _names(options)):
                print(f"{tag}{stem}: outputs complete, skipped", file=sys.stderr)
                continue
            if out.is_dir():
                remove_stale_partials(out, stem)
            start = time.perf_counter()
            written = predict_pair(runner, meta, pair.rgb, pair.x, out, options)
            seconds = time.perf_counter() - start
            for name, path in written.items():
                print(f"{name}: {path}")
            with rasterio.open(written["classes"]) as done:
                mpix = done.width * done.height / 1e6
            print(f"{tag}{stem}: {mpix:.1f} MPix in {seconds:.1f} s, {mpix / seconds:.2f} MPix/s",
                  file=sys.stderr)  # fmt: skip
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: nothing was left under a final name; rerun to complete", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
