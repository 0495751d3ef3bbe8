"""``python scripts/predict.py --ckpt CKPT --rgb PATH [--x PATH] --out DIR [options]``.

Writes ``<stem>_classes.tif`` (colour table and class names), optionally ``<stem>_probs.tif``,
``<stem>_confidence.tif`` and ``<stem>.gpkg``, on the RGB raster's grid, CRS and transform.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from rsfusion.inference.predict import PredictionError, PredictOptions, load_predictor, predict_pair


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rsfusion-predict", description=__doc__)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--rgb", required=True, help="orthophoto (GeoTIFF or any GDAL raster)")
    p.add_argument("--x", help="X raster (DSM / nDSM) of the same scene")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--window", type=int, help="window size (default: the training window)")
    p.add_argument("--overlap", type=int, help="overlap in pixels (default: window / 4)")
    p.add_argument("--blend", choices=("cosine", "linear", "none"), default="cosine")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--probs", action="store_true", help="also write per-class probabilities")
    p.add_argument("--confidence", action="store_true", help="also write max probability")
    p.add_argument("--cog", action="store_true", help="write Cloud Optimized GeoTIFFs")
    p.add_argument("--vector", action="store_true", help="also write <stem>.gpkg polygons")
    p.add_argument("--min-area", type=float, default=0.0, help="polygon area filter (CRS units²)")
    p.add_argument("--simplify", type=float, default=0.0, help="polygon simplification tolerance")
    p.add_argument("--align", action="store_true", help="resample X onto the RGB grid")
    p.add_argument("--memory-mb", type=int, default=64, help="GDAL block cache (GDAL_CACHEMAX)")
    return p


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler's kill) unwinds like Ctrl-C: temporary files are removed and no
    # output is left under its final name; rerunning completes the job.
    signal.signal(signal.SIGTERM, _terminate)
    os.environ["GDAL_CACHEMAX"] = str(args.memory_mb)
    options = PredictOptions(
        window=args.window, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
        probs=args.probs, confidence=args.confidence, cog=args.cog, vector=args.vector,
        align=args.align, min_area=args.min_area, simplify=args.simplify,
    )  # fmt: skip
    try:
        model, meta = load_predictor(args.ckpt)
        written = predict_pair(model, meta, args.rgb, args.x, args.out, options)
    except (PredictionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: nothing was left under a final name; rerun to complete", file=sys.stderr
        )
        return 130
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
