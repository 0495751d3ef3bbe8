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
import shutil
import signal
import sys
import time
from pathlib import Path

from rsfusion.allocator import keep_freed_memory
from rsfusion.cli import USER_ERRORS, show_messages
from rsfusion.data.writers import staging_dir
from rsfusion.deploy.onnx import OnnxModel, onnx_options
from rsfusion.errors import MissingFileError, PredictionError, UserError
from rsfusion.inference.folder import (
    Pair,
    PairingError,
    check_unique_outputs,
    output_stem,
    outputs_done,
    pair_folders,
    read_pairs_csv,
    remove_stale_partials,
    shard,
)
from rsfusion.inference.inputs import PairPlan, check_pairs, report
from rsfusion.inference.memory import check_memory
from rsfusion.inference.predict import (
    PredictOptions,
    check_device_memory,
    load_predictor,
    predict_pair,
)
from rsfusion.inference.runner import resolve_device
from rsfusion.models.checkpoint import CheckpointMeta


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
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (4)")
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


def check_out_dir(out: Path) -> None:
    """Refuse an --out that is a file or cannot be written, before the model loads: make it
    (with its parents) and create and remove a private staging folder in it."""
    if out.exists() and not out.is_dir():
        raise PredictionError(f"--out {out} is a file, not a folder: give a folder for outputs")
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging_dir(out, "write-test"))
    except OSError as err:
        raise PredictionError(
            f"--out {out} cannot be written ({err.strerror or err}): give a folder you can "
            "write to (on a disk with room for the outputs)"
        ) from err


def _names(options: PredictOptions) -> list[str]:
    names = ["{stem}_classes.tif"]
    names += ["{stem}_probs.tif"] if options.probs else []
    names += ["{stem}_confidence.tif"] if options.confidence else []
    names += ["{stem}.gpkg"] if options.vector else []
    return names


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


def check_all(
    meta: CheckpointMeta,
    pairs: list[Pair],
    out: Path,
    options: PredictOptions,
    redo: bool,
    tag: str = "",
) -> dict[Pair, PairPlan]:
    """Check every pair still to predict (bands, dtype and values, grid, overlap, GSD) before
    the first prediction; their notes are printed once each.

    Raises:
        PredictionError: one pair's problem as it is, or, with several, a summary after
            each problem is printed on its own line: nothing has been written.
    """
    todo = [p for p in pairs if redo or not outputs_done(out, output_stem(p.rgb), _names(options))]
    plans, problems = check_pairs(
        meta, todo, align=options.align, rgb_scale=options.rgb_scale,
        resample_to_gsd=options.resample_to_gsd,
    )  # fmt: skip
    said: set[str] = set()
    for plan in plans.values():
        report(plan.notes, said)
    if len(problems) == 1 and len(todo) == 1:
        raise problems[0][1]
    if problems:
        for _, err in problems:
            print(f"{tag}problem: {err}", file=sys.stderr)
        raise PredictionError(
            f"{len(problems)} of {len(todo)} pair(s) cannot be predicted as given (each "
            "problem is listed above); nothing was written: fix them or leave them out, and "
            "rerun"
        )
    return plans


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
    tag = f"rank {rank}/{world}: " if world > 1 else ""
    run = _Run()
    try:
        # everything the command line alone decides is checked before the model loads
        options.check()
        if args.memory_mb < 1:
            raise PredictionError(f"--memory-mb {args.memory_mb}: must be at least 1")
        os.environ["GDAL_CACHEMAX"] = str(args.memory_mb)
        check_out_dir(out)
        resolve_device(args.device)
        keep_freed_memory()  # no page faults for every batch's tensors (rsfusion/allocator.py)
        model, meta = load_predictor(args.ckpt, args.dataset, args.modality)
        if isinstance(model, OnnxModel):  # ONNX Runtime: CPU, float32
            options = onnx_options(options, args.ckpt)
        window = int(meta.window) if options.window is None else options.window
        overlap = window // 4 if options.overlap is None else options.overlap
        if window < 1:
            raise PredictionError(f"checkpoint {args.ckpt}: window {window}; give --window")
        if not 0 <= overlap < window:
            raise PredictionError(f"--overlap {overlap}: must lie in [0, window={window})")
        bands, k = len(meta.rgb_bands) + len(meta.x_bands), len(meta.classes)
        check_memory(  # the window's share, whatever the rasters (they are checked one by one)
            options.memory(window, window, window, overlap, bands, k),
            f"a window of {window} px (batch {options.batch_size}, {k} classes)",
            "use a smaller --window or --batch-size",
        )
        runner = options.runner(model)
        check_device_memory(runner, window, bands, k, options.batch_size)
        pairs = collect_pairs(args, meta)
        check_unique_outputs(pairs)  # all of them: every rank refuses the same run
        # every pair to predict (on every rank: all refuse the same run), before any output
        plans = check_all(meta, pairs, out, options, args.redo, tag)
        remove_stale_partials(out)  # what killed runs left; a live run's files stay
        mine = shard(pairs, rank, world)
        print(f"{tag}{len(mine)} pair(s), {runner.describe()}", file=sys.stderr)
        for pair in mine:
            run.predict(
                pair, out, runner, meta, options, args.redo, tag, len(mine) > 1, plans.get(pair)
            )
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {run.describe_interruption()}; rerun to complete", file=sys.stderr)
        return 130
    if run.failed:
        listed = "; ".join(f"{pair.rgb}" for pair, _ in run.failed)
        print(
            f"error: {len(run.failed)} of {len(mine)} pair(s) failed (each reported above): "
            f"{listed}. Fix or remove them and rerun: the pairs that are complete are skipped",
            file=sys.stderr,
        )
        return 2
    return 0


class _Run:
    """A folder run's progress: the pair being predicted, what of it landed, what failed."""

    def __init__(self) -> None:
        self.current: Pair | None = None
        self.expected: list[str] = []
        self.landed: dict[str, Path] = {}
        self.done = 0
        self.failed: list[tuple[Pair, UserError | FileNotFoundError]] = []

    def predict(
        self,
        pair: Pair,
        out: Path,
        runner: object,
        meta: CheckpointMeta,
        options: PredictOptions,
        redo: bool,
        tag: str,
        keep_going: bool,
        plan: PairPlan | None = None,
    ) -> None:
        """Predict one pair (skipped when complete). With ``keep_going`` a bad input is
        reported and recorded; an output that cannot be written (disk full) stops the run."""
        stem = output_stem(pair.rgb)
        names = [n.format(stem=stem) for n in _names(options)]
        if not redo and outputs_done(out, stem, _names(options)):
            print(f"{tag}{stem}: outputs complete, skipped", file=sys.stderr)
            return
        self.current, self.expected, self.landed = pair, names, {}
        start = time.perf_counter()
        try:
            written = predict_pair(
                runner,
                meta,
                pair.rgb,
                pair.x,
                out,
                options,
                stem=stem,
                landed=self.landed,
                plan=plan,
            )  # type: ignore[arg-type]
        except USER_ERRORS as err:
            if not keep_going or getattr(err, "output", None) is not None:
                raise  # one pair, or an output the next pair would fail to write as well
            print(f"{tag}{stem}: failed, going on with the others: {err}", file=sys.stderr)
            self.failed.append((pair, err))
            self.current = None
            return
        seconds = time.perf_counter() - start
        self.current = None
        self.done += 1
        for name, path in written.items():
            print(f"{name}: {path}")
        mpix = self._mpix(written["classes"])
        print(f"{tag}{stem}: {mpix:.1f} MPix in {seconds:.1f} s, {mpix / seconds:.2f} MPix/s",
              file=sys.stderr)  # fmt: skip

    @staticmethod
    def _mpix(path: Path) -> float:
        import rasterio

        with rasterio.open(path) as done:
            return done.width * done.height / 1e6

    def describe_interruption(self) -> str:
        """What an interruption left: complete outputs under final names, and the rest."""
        parts = [f"the {self.done} pair(s) finished before are complete"] if self.done else []
        if self.current is not None:
            done = [p.name for p in self.landed.values()]
            missing = [n for n in self.expected if n not in done]
            if done:
                parts.append(
                    f"of {self.current.rgb}, {', '.join(done)} are complete under their final "
                    f"names and {', '.join(missing)} was not written (no half-written file is "
                    "left under a final name)"
                )
            else:
                parts.append(
                    f"of {self.current.rgb} nothing was left under a final name "
                    f"({', '.join(missing)} not written)"
                )
        return "; ".join(parts) or "nothing was written"


if __name__ == "__main__":
    raise SystemExit(main())
