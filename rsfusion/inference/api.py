"""Predict from Python: :func:`predict`, what ``scripts/predict.py`` runs for a raster pair, two
folders of pairs or a CSV of pairs.

Everything is checked before the first output is written: the options and the output folder
before the model loads, then every pair to predict against the model and itself (bands, dtype
and value range, grid, overlap, GSD; :func:`rsfusion.inference.inputs.check_pairs`). Pairs whose
outputs are all complete are skipped, so a rerun resumes. In a run of several pairs a raster
that cannot be read is reported and the others go on; the call then raises, listing the
failures. Under ``torchrun`` (``RANK`` / ``WORLD_SIZE``) each rank takes its share of the pairs.

Progress lines (pairs, skipped, failed, MPix/s) are logged on the ``rsfusion.inference``
logger, as the input checks' notes are; the command-line tool prints them on stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rsfusion.data.writers import staging_dir
from rsfusion.errors import MissingFileError, PairingError, PredictionError, UserError
from rsfusion.inference.folder import (
    Pair,
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
from rsfusion.inference.runner import ModelRunner, resolve_device
from rsfusion.models.checkpoint import CheckpointMeta

log = logging.getLogger(__name__)

#: the errors a pair can fail with while the others go on (a bad input; not a bug)
PAIR_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)
OnOutputs = Callable[[Pair, dict[str, Path]], None]


@dataclass(frozen=True, eq=False)
class Predictor:
    """A loaded model with its checkpoint's metadata, to predict many times without reloading.

    Attributes:
        model: the model (a view of one dataset for a generalist checkpoint), or an ONNX model.
        meta: the checkpoint's metadata (bands, normalisation, classes, palette, window).
        source: the checkpoint's path, named in messages.
    """

    model: nn.Module
    meta: CheckpointMeta
    source: str

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        dataset: str | None = None,
        modality: str | None = None,
        precision: str = "auto",
        device: str = "auto",
        window: int | None = None,
    ) -> Predictor:
        """Load a checkpoint (or an ``.onnx`` export); ``dataset`` and ``modality`` as for
        :func:`~rsfusion.inference.predict.load_predictor`.

        ``precision="int8"`` loads the checkpoint's int8 model for ONNX Runtime on the CPU
        (quantised, checked and cached beside it on first use:
        :func:`~rsfusion.deploy.quantize.load_int8_predictor`); ``"auto"`` on the CPU picks the
        cached int8 model of this very checkpoint where one passed its check, and says so in
        the log. ``window`` is the window the int8 model is made for (default: training's).
        """
        from rsfusion.deploy.quantize import int8_source, load_int8_predictor

        int8 = int8_source(checkpoint, precision, device, dataset, modality, window)
        if int8 is not None:
            if precision == "auto":
                log.info(f"--precision auto: the checked int8 model {int8} (--precision bf16 or "
                         "fp32 predicts with the checkpoint itself)")  # fmt: skip
            model, meta = load_int8_predictor(int8, dataset, modality, window)
        else:
            model, meta = load_predictor(checkpoint, dataset, modality)
        return cls(model, meta, str(checkpoint))


@dataclass
class PredictionResult:
    """What a :func:`predict` call did.

    Attributes:
        outputs: per RGB raster predicted, the files written: ``classes``, and ``probs``,
            ``confidence``, ``vector`` when asked for.
        skipped: the pairs whose outputs were complete already (nothing written).
        failed: the pairs that could not be predicted, with their errors (raised at the end).
        device: the device, precision and test-time augmentation the model ran with.
    """

    outputs: dict[Path, dict[str, Path]] = field(default_factory=dict)
    skipped: list[Pair] = field(default_factory=list)
    failed: list[tuple[Pair, BaseException]] = field(default_factory=list)
    device: str = ""

    @property
    def paths(self) -> list[Path]:
        """Every file written, pair by pair."""
        return [path for written in self.outputs.values() for path in written.values()]


class PredictionInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM turned into one) during :func:`predict`: ``str()`` says which outputs
    are complete under their final names (nothing is left half-written under one); ``result``
    holds what was finished. Rerunning completes the job."""

    def __init__(self, description: str, result: PredictionResult) -> None:
        super().__init__(description)
        self.description = description
        self.result = result


def predict(
    checkpoint: str | Path | Predictor,
    rgb: str | Path | None = None,
    x: str | Path | None = None,
    *,
    out: str | Path,
    pairs: str | Path | None = None,
    dataset: str | None = None,
    modality: str | None = None,
    options: PredictOptions | None = None,
    redo: bool = False,
    rank: int | None = None,
    world: int | None = None,
    on_outputs: OnOutputs | None = None,
    **settings: Any,
) -> PredictionResult:
    """Predict class rasters of a raster pair, two folders of pairs or a CSV, as
    ``scripts/predict.py`` does: ``<stem>_classes.tif`` (+ ``_probs``, ``_confidence``,
    ``.gpkg`` as asked) in ``out`` on each orthophoto's grid.

    Args:
        checkpoint: a checkpoint (or ``.onnx``) path, or a :class:`Predictor` loaded once.
        rgb: an orthophoto, or a folder of them (paired with the rasters of the folder ``x``
            by the dataset card's file names, else by identical names).
        x: the X raster (DSM, depth, ...) of the same scene, or a folder of them.
        out: the output folder (made if missing).
        pairs: instead of ``rgb`` / ``x``: a CSV with columns ``rgb,x`` (paths relative to it).
        dataset: a generalist checkpoint's dataset (its classes, normalisation, modality).
        modality: the X modality the model is told (default: the checkpoint's).
        options: :class:`~rsfusion.inference.predict.PredictOptions`; ``settings`` (its field
            names, e.g. ``window=256``, ``probs=True``, ``device="cpu"``) replace single
            fields.
        redo: predict pairs whose outputs are complete too.
        rank: this process's share of the pairs (default: ``RANK``, 0).
        world: the number of shares (default: ``WORLD_SIZE``, 1).
        on_outputs: called with each pair and its files as soon as they are complete.

    Returns:
        The files written per RGB raster, the pairs skipped, the device used.

    Raises:
        PredictionError: options, output folder, checkpoint or inputs unfit (before any
            output is written: every problem is logged), an output that cannot be written;
            after a run of several pairs some of which failed (``.result`` holds the rest).
        PairingError: folders whose files do not pair, a bad CSV, two inputs with one output.
        MissingFileError: an input or checkpoint that does not exist.
        UserError: a device name torch does not know, or a GPU that is not there.
        PredictionInterrupted: Ctrl-C; the message says what is complete.

    Example (the quick start's demo scene and MoBaNet run)::

        import rsfusion

        ckpt = "runs/demo_mobanet/latest/checkpoints/last.ckpt"
        result = rsfusion.predict(ckpt, "demo_data/top/top_mosaic_09cm_area2.tif",
                                  "demo_data/dsm/dsm_09cm_matching_area2.tif",
                                  out="predictions", probs=True)
        result.paths  # [.../top_mosaic_09cm_area2_classes.tif, ..._probs.tif]
    """
    opts = options if options is not None else PredictOptions()
    if settings:
        opts = dataclasses.replace(opts, **settings)
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    tag = f"rank {rank}/{world}: " if world > 1 else ""
    run = _Run(tag)
    try:
        # everything the arguments alone decide is checked before the model loads
        if (rgb is None) == (pairs is None):
            raise PredictionError(
                "give the inputs as rgb (a raster or a folder of them, with x) or as pairs (a "
                "CSV with columns rgb,x), one of the two"
            )
        opts.check()
        out = Path(out)
        resolve_device(opts.device)  # before the output folder is made
        check_out_dir(out)
        if isinstance(checkpoint, Predictor):
            if dataset is not None or modality is not None:
                raise PredictionError(
                    f"dataset / modality are chosen when the checkpoint loads: give them to "
                    f"Predictor.load (checkpoint {checkpoint.source})"
                )
            predictor = checkpoint
        else:
            predictor = Predictor.load(
                checkpoint, dataset, modality, opts.precision, opts.device, opts.window
            )
        _predict(predictor, rgb, x, pairs, out, opts, redo, rank, world, run, on_outputs)
    except KeyboardInterrupt as err:
        raise PredictionInterrupted(run.describe_interruption(), run.result) from err
    if run.result.failed:
        listed = "; ".join(f"{pair.rgb}" for pair, _ in run.result.failed)
        failure = PredictionError(
            f"{len(run.result.failed)} of {run.todo} pair(s) failed (each reported above): "
            f"{listed}. Fix or remove them and rerun: the pairs that are complete are skipped"
        )
        failure.result = run.result  # type: ignore[attr-defined]
        raise failure
    return run.result


def _predict(
    predictor: Predictor,
    rgb: str | Path | None,
    x: str | Path | None,
    pairs_csv: str | Path | None,
    out: Path,
    options: PredictOptions,
    redo: bool,
    rank: int,
    world: int,
    run: _Run,
    on_outputs: OnOutputs | None,
) -> None:
    """The part of :func:`predict` after the model is loaded."""
    from rsfusion.deploy.onnx import OnnxModel, onnx_options

    model, meta, source = predictor.model, predictor.meta, predictor.source
    if isinstance(model, OnnxModel):  # ONNX Runtime: CPU, in the model's float32 or int8
        options = onnx_options(options, source, model)
    elif options.precision == "int8":
        raise PredictionError(
            f"precision int8: {source} was loaded as a PyTorch model; load it with "
            "Predictor.load(..., precision='int8') (its int8 model runs in ONNX Runtime)"
        )
    window = int(meta.window) if options.window is None else options.window
    overlap = window // 4 if options.overlap is None else options.overlap
    if window < 1:
        raise PredictionError(f"checkpoint {source}: window {window}; give --window")
    if not 0 <= overlap < window:
        raise PredictionError(f"--overlap {overlap}: must lie in [0, window={window})")
    bands, k = len(meta.rgb_bands) + len(meta.x_bands), len(meta.classes)
    check_memory(  # the window's share, whatever the rasters (they are checked one by one)
        options.memory(window, window, window, overlap, bands, k),
        f"a window of {window} px (batch {options.batch_size or 'auto'}, {k} classes)",
        "use a smaller --window or --batch-size",
    )
    runner = options.runner(model)
    if options.batch_size is not None:  # an automatic one is measured to fit, per raster
        check_device_memory(runner, window, bands, k, options.batch_size)
    run.result.device = runner.describe()
    pairs = collect_pairs(rgb, x, pairs_csv, meta)
    check_unique_outputs(pairs)  # all of them: every rank refuses the same run
    # every pair to predict (on every rank: all refuse the same run), before any output
    plans = check_all(meta, pairs, out, options, redo, run.tag)
    remove_stale_partials(out)  # what killed runs left; a live run's files stay
    mine = shard(pairs, rank, world)
    run.todo = len(mine)
    log.info(f"{run.tag}{len(mine)} pair(s), {runner.describe()}")
    for pair in mine:
        written = run.predict(
            pair, out, runner, meta, options, redo, len(mine) > 1, plans.get(pair)
        )
        if written is not None:
            if on_outputs is not None:
                on_outputs(pair, written)
            run.report_speed(pair)


def collect_pairs(
    rgb: str | Path | None,
    x: str | Path | None,
    pairs_csv: str | Path | None,
    meta: CheckpointMeta,
) -> list[Pair]:
    """The pairs asked for: one file pair, two folders (paired by the card ``meta`` names) or
    a CSV.

    Raises:
        MissingFileError: a raster that does not exist.
        PairingError: a folder with a file for ``x``, files that do not pair, a bad CSV.
    """
    if pairs_csv is not None:
        return read_pairs_csv(Path(pairs_csv))
    assert rgb is not None
    rgb_path, x_path = Path(rgb), Path(x) if x else None
    if rgb_path.is_dir():
        if x_path is not None and not x_path.is_dir():
            raise PairingError(
                f"--rgb {rgb_path} is a folder, so --x must be one too (got {x_path})"
            )
        return pair_folders(rgb_path, x_path, meta.card, meta.rgb_modality, meta.x_modality)
    if not rgb_path.is_file():
        raise MissingFileError(f"--rgb {rgb_path}: no such file or folder")
    if x_path is not None and not x_path.is_file():
        raise MissingFileError(f"--x {x_path}: no such file")
    return [Pair(rgb_path, x_path)]


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that is a file or cannot be written, before the model loads:
    make it (with its parents) and create and remove a private staging folder in it.

    Raises:
        PredictionError: naming ``--out``, the folder and the fix.
    """
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


def output_names(options: PredictOptions) -> list[str]:
    """The outputs a pair gets with ``options``, ``{stem}`` standing for its output stem.

    Example:
        >>> output_names(PredictOptions(probs=True, vector=True))
        ['{stem}_classes.tif', '{stem}_probs.tif', '{stem}.gpkg']
    """
    names = ["{stem}_classes.tif"]
    names += ["{stem}_probs.tif"] if options.probs else []
    names += ["{stem}_confidence.tif"] if options.confidence else []
    names += ["{stem}.gpkg"] if options.vector else []
    return names


def check_all(
    meta: CheckpointMeta,
    pairs: list[Pair],
    out: Path,
    options: PredictOptions,
    redo: bool,
    tag: str = "",
) -> dict[Pair, PairPlan]:
    """Check every pair still to predict (bands, dtype and values, grid, overlap, GSD) before
    the first prediction; their notes are logged once each.

    Raises:
        PredictionError: one pair's problem as it is, or, with several, a summary after
            each problem is logged on its own line: nothing has been written.
    """
    names = output_names(options)
    todo = [p for p in pairs if redo or not outputs_done(out, output_stem(p.rgb), names)]
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
            log.warning(f"{tag}problem: {err}")
        raise PredictionError(
            f"{len(problems)} of {len(todo)} pair(s) cannot be predicted as given (each "
            "problem is listed above); nothing was written: fix them or leave them out, and "
            "rerun"
        )
    return plans


class _Run:
    """A run's progress: the pair being predicted, what of it landed, what is done or failed."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.result = PredictionResult()
        self.todo = 0
        self.current: Pair | None = None
        self.expected: list[str] = []
        self.landed: dict[str, Path] = {}
        self.seconds: dict[Path, float] = {}

    def predict(
        self,
        pair: Pair,
        out: Path,
        runner: ModelRunner,
        meta: CheckpointMeta,
        options: PredictOptions,
        redo: bool,
        keep_going: bool,
        plan: PairPlan | None = None,
    ) -> dict[str, Path] | None:
        """Predict one pair and return its files; None when it was skipped (complete) or,
        with ``keep_going``, failed on a bad input (reported and recorded). An output that
        cannot be written (disk full) stops the run."""
        stem = output_stem(pair.rgb)
        names = [n.format(stem=stem) for n in output_names(options)]
        if not redo and outputs_done(out, stem, output_names(options)):
            log.info(f"{self.tag}{stem}: outputs complete, skipped")
            self.result.skipped.append(pair)
            return None
        self.current, self.expected, self.landed = pair, names, {}
        start = time.perf_counter()
        try:
            written = predict_pair(
                runner, meta, pair.rgb, pair.x, out, options, stem=stem, landed=self.landed,
                plan=plan,
            )  # fmt: skip
        except PAIR_ERRORS as err:
            if not keep_going or getattr(err, "output", None) is not None:
                raise  # one pair, or an output the next pair would fail to write as well
            log.warning(f"{self.tag}{stem}: failed, going on with the others: {err}")
            self.result.failed.append((pair, err))
            self.current = None
            return None
        self.seconds[pair.rgb] = time.perf_counter() - start
        self.current = None
        self.result.outputs[pair.rgb] = written
        return written

    def report_speed(self, pair: Pair) -> None:
        """Log a predicted pair's size and speed (MPix, seconds, MPix/s)."""
        import rasterio

        written, seconds = self.result.outputs[pair.rgb], self.seconds[pair.rgb]
        with rasterio.open(written["classes"]) as done:
            mpix = done.width * done.height / 1e6
        stem = output_stem(pair.rgb)
        log.info(
            f"{self.tag}{stem}: {mpix:.1f} MPix in {seconds:.1f} s, {mpix / seconds:.2f} MPix/s"
        )

    def describe_interruption(self) -> str:
        """What an interruption left: complete outputs under final names, and the rest."""
        done = len(self.result.outputs)
        parts = [f"the {done} pair(s) finished before are complete"] if done else []
        if self.current is not None:
            landed = [p.name for p in self.landed.values()]
            missing = [n for n in self.expected if n not in landed]
            if landed:
                parts.append(
                    f"of {self.current.rgb}, {', '.join(landed)} are complete under their final "
                    f"names and {', '.join(missing)} was not written (no half-written file is "
                    "left under a final name)"
                )
            else:
                parts.append(
                    f"of {self.current.rgb} nothing was left under a final name "
                    f"({', '.join(missing)} not written)"
                )
        return "; ".join(parts) or "nothing was written"
