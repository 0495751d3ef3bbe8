"""Streaming sliding-window prediction of one RGB (+ X) raster pair to georeferenced outputs.

Everything the model needs comes from the checkpoint's ``rsfusion`` metadata (bands, RGB and X
normalisation, classes, palette, window, model spec, frozen-backbone hash). Windows are read
with rasterio windowed reads by background threads (:mod:`rsfusion.inference.reader`), batched
to the model (:mod:`rsfusion.inference.runner`: bf16/fp16 autocast, channels_last, flip and
multi-scale test-time augmentation), and their logits blended with a smooth weight map (or
summed: ``blend="sum"``, the ISPRS protocol) into a row-band accumulator whose memory does not
grow with the raster; completed rows are written to tiled GeoTIFFs under temporary names and
renamed when complete.

Hostile or broken inputs end in a :class:`~rsfusion.errors.PredictionError` naming the file:
a raster GDAL cannot read, a raster or window too large for the memory there is (checked before
any work, :mod:`rsfusion.inference.memory`; the window plan itself is lazy), a disk that fills
up. Temporaries live in private staging folders (:func:`rsfusion.data.writers.staging_dir`).

Before any work the pair is checked against itself and the checkpoint
(:func:`rsfusion.inference.inputs.check_pair`: bands, overlap, grid, dtype and value range, GSD).
Pixels without data (RGB nodata, and by default pixels without X) are nodata in the outputs.
With ``resample_to_gsd`` the pair is read at the training GSD and the finished outputs are
warped back onto the orthophoto's grid (:func:`rsfusion.inference.writer.regrid`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from rsfusion.data.normalise import XNorm
from rsfusion.data.windows import batched, window_grid
from rsfusion.data.writers import staging_dir
from rsfusion.errors import PredictionError, UserError
from rsfusion.inference.accumulator import RowBandAccumulator
from rsfusion.inference.background import Background
from rsfusion.inference.blending import edge_aware, weight_map
from rsfusion.inference.compression import DEFAULT_THREADS, compression_options
from rsfusion.inference.device_blend import (
    DeviceBandAccumulator,
    HostCopies,
    check_device_memory,
    device_plan,
    out_of_memory,
    run_on_device,
)
from rsfusion.inference.folder import output_stem
from rsfusion.inference.inputs import PairPlan, check_pair, parse_rgb_scale, report
from rsfusion.inference.memory import DEFAULT_BATCH, check_memory, prediction_memory
from rsfusion.inference.reader import (
    InputNorm,
    PairSpec,
    ValidPixels,
    WindowReader,
    open_pair,
    open_raster,
)
from rsfusion.inference.runner import ModelRunner
from rsfusion.inference.writer import (
    WRITE_ERRORS,
    StreamingGeoTIFF,
    class_dtype,
    regrid,
    to_cog,
    write_error,
)
from rsfusion.models.backbones.factory import building_for
from rsfusion.models.base import build_model
from rsfusion.models.checkpoint import CheckpointMeta, check_frozen, read_checkpoint
from rsfusion.models.engine import migrate_state_dict


@dataclass
class PredictOptions:
    """Prediction settings; window/overlap default to the checkpoint's training window.

    ``rgb_scale`` (a factor such as ``"255/65535"``, or ``"auto"``) rescales an orthophoto on
    another scale than the training rasters'; ``resample_to_gsd`` reads the pair at the
    training GSD (outputs stay on the orthophoto's grid); ``x_missing``: ``"nodata"`` (pixels
    without X, i.e. X nodata, NaN, +-inf or outside the X raster, are nodata in every output)
    or ``"predict"`` (the model sees X as 0 there, as training does with missing X; the
    evaluation protocol scores every labelled pixel so). See :mod:`rsfusion.inference.inputs`.

    ``batch_size`` None: on a GPU, the most windows that fit in its free memory (measured once
    per window size, :func:`device_plan`), else :data:`DEFAULT_BATCH`. ``blend_on``: where the
    windows are blended and turned into classes and probabilities: ``"device"`` (the model's
    device; only the uint8 outputs come back, :mod:`rsfusion.inference.device_blend`),
    ``"host"`` (numpy, in the writing thread, overlapping the model) or ``"auto"`` (the device
    when it is a GPU with room for the band of rows, else the host).
    """

    window: int | None = None
    overlap: int | None = None
    blend: str = "cosine"
    batch_size: int | None = None
    probs: bool = False
    confidence: bool = False
    cog: bool = False
    vector: bool = False
    align: bool = False
    min_area: float = 0.0
    simplify: float = 0.0
    device: str = "auto"
    precision: str = "auto"
    fp32_stages: int = 1
    channels_last: bool | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    drop: str | None = None
    readers: int = 1
    prefetch: int | None = None
    progress: bool = False
    progress_position: int = 0
    rgb_scale: str | None = None
    resample_to_gsd: bool = False
    x_missing: str = "nodata"
    blend_on: str = "auto"
    compress: str = "deflate"
    compress_level: int | None = None
    write_threads: int | str = DEFAULT_THREADS

    @property
    def compression(self) -> dict[str, Any]:
        """The outputs' compression as writer arguments (``compress``, ``level``, ``threads``)."""
        return {"compress": self.compress, "level": self.compress_level,
                "threads": self.write_threads}  # fmt: skip

    def check(self) -> None:
        """Refuse values that cannot work (named as the command-line options), before any work.

        Raises:
            PredictionError: a window or batch size below 1, a negative overlap, ...
        """
        positive = {"--window": self.window, "--batch-size": self.batch_size}
        positive |= {"--prefetch": self.prefetch}
        for flag, value in positive.items():
            if value is not None and (isinstance(value, bool) or value < 1):
                raise PredictionError(
                    f"{flag} {value}: must be at least 1"
                    + (" (leave --window out to use the checkpoint's training window)"
                       if flag == "--window" else "")
                )  # fmt: skip
        not_negative = {"--overlap": self.overlap, "--readers": self.readers}
        not_negative |= {"--min-area": self.min_area, "--simplify": self.simplify}
        not_negative |= {"--fp32-stages": self.fp32_stages}
        for flag, value in not_negative.items():
            if value is not None and not value >= 0:  # NaN too
                raise PredictionError(f"{flag} {value}: must be 0 or more")
        if self.blend not in ("cosine", "linear", "none", "sum"):
            raise PredictionError(f"--blend {self.blend}: use cosine, linear, none or sum")
        if self.blend_on not in ("auto", "device", "host"):
            raise PredictionError(f"blend_on {self.blend_on!r}: use auto, device or host")
        if self.x_missing not in ("nodata", "predict"):
            raise PredictionError(f"--x-missing {self.x_missing}: use nodata or predict")
        parse_rgb_scale(self.rgb_scale)
        try:
            compression_options(self.compress, self.compress_level, self.write_threads)
        except UserError as err:
            raise PredictionError(f"{err} (--compress, --compress-level, --write-threads)") from err

    def memory(
        self, width: int, height: int, window: int, overlap: int, bands: int, classes: int
    ) -> dict[str, int]:
        """:func:`~rsfusion.inference.memory.prediction_memory` of a raster with these options
        (an automatic batch counted as :data:`DEFAULT_BATCH` windows)."""
        return prediction_memory(
            width=width, height=height, window=window, stride=window - overlap,
            batch=self.batch_size or DEFAULT_BATCH, bands=bands, classes=classes,
            output_bytes=1 + classes * self.probs + self.confidence,
            prefetch=max(1, self.prefetch or 2 * self.readers),
        )  # fmt: skip

    def runner(self, model: torch.nn.Module) -> ModelRunner:
        """The :class:`ModelRunner` these options describe."""
        return ModelRunner(
            model, device=self.device, precision=self.precision,  # type: ignore[arg-type]
            channels_last=self.channels_last, flip=self.flip, scales=self.scales, drop=self.drop,
            fp32_stages=self.fp32_stages,
        )  # fmt: skip


def load_predictor(
    ckpt_path: str | Path, dataset: str | None = None, modality: str | None = None
) -> tuple[torch.nn.Module, CheckpointMeta]:
    """The model of a checkpoint and its metadata; refuses a different frozen backbone.

    A generalist (joint) checkpoint is seen as the model of ``dataset`` (a source name or
    card), ``modality`` overrides the X modality the model is told (SegRGB-X's LoRA):
    :func:`rsfusion.inference.joint.dataset_view`.
    """
    from rsfusion.inference.joint import dataset_view

    path = Path(ckpt_path)
    if path.suffix.lower() == ".onnx":  # exported by scripts/export.py: run by ONNX Runtime
        from rsfusion.deploy.onnx import load_onnx_predictor

        return load_onnx_predictor(path, dataset, modality)
    saved, meta = read_checkpoint(path, "checkpoint")
    with building_for("checkpoint"):  # offline: worded for a model whose weights come next
        model = build_model(meta.spec)  # the backbone seeded as in training
    check_frozen(meta, model, f"checkpoint {path}")
    state = {k.removeprefix("model."): v for k, v in saved["state_dict"].items()}
    migrate_state_dict(model, state)  # parts renamed since the checkpoint was written
    missing = [k for k in model.state_dict() if k not in state and not _frozen(model, k)]
    if missing:
        raise PredictionError(f"checkpoint {path} lacks tensors of its model, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)
    view, meta = dataset_view(model, meta, dataset, modality, f"checkpoint {path}")
    return view.eval(), meta


def _frozen(model: torch.nn.Module, key: str) -> bool:
    params = dict(model.named_parameters())
    return key in params and not params[key].requires_grad


@contextlib.contextmanager
def open_inputs(
    rgb: str | Path, x: str | Path | None, meta: CheckpointMeta, align: bool
) -> Iterator[tuple[Any, tuple | None]]:
    """Open the RGB raster and check the pair against the checkpoint (:func:`check_pair`).

    Yields the open RGB dataset and the grid X must be warped onto (``None`` when X already
    shares the RGB grid or there is no X). A misaligned X is refused unless ``align``; one
    that does not overlap the RGB at all is refused.
    """
    plan = check_pair(meta, rgb, x, align)
    with open_raster(rgb, "orthophoto") as src:
        yield src, plan.x_grid


def pair_spec(
    meta: CheckpointMeta,
    rgb: str | Path,
    x: str | Path | None,
    x_grid: tuple | None = None,
    rgb_factor: float = 1.0,
    rgb_grid: tuple | None = None,
) -> PairSpec:
    """The pair with its normalisation as in training (RGB mean/std, X affine of its raster).

    ``rgb_factor`` multiplies the RGB values before normalisation (``--rgb-scale``): folded
    into the mean and std, ``(v * f - mean) / std == (v - mean / f) / (std / f)``.
    """
    norm = meta.rgb_norm
    offset, scale = XNorm(**meta.x_norm).affine(str(x)) if x is not None else (0.0, 1.0)
    return PairSpec(
        rgb=rgb, x=x, x_grid=x_grid, rgb_grid=rgb_grid,
        norm=InputNorm(
            rgb_mean=np.asarray(norm["mean"], np.float32).reshape(-1, 1, 1) / rgb_factor,
            rgb_std=np.asarray(norm["std"], np.float32).reshape(-1, 1, 1) / rgb_factor,
            x_offset=float(offset), x_scale=float(scale),
        ),
    )  # fmt: skip


def predict_pair(
    model: torch.nn.Module | ModelRunner,
    meta: CheckpointMeta,
    rgb: str | Path,
    x: str | Path | None,
    out_dir: str | Path,
    options: PredictOptions | None = None,
    stem: str | None = None,
    landed: dict[str, Path] | None = None,
    plan: PairPlan | None = None,
) -> dict[str, Path]:
    """Predict one raster pair; returns the paths written (classes, probs, confidence, ...).

    ``model`` is a model (wrapped in the runner ``options`` describe) or a ready
    :class:`ModelRunner` (folder runs reuse one). ``rgb`` and ``x`` are paths or GDAL dataset
    strings (``vrt://...``); outputs are named ``<stem>_classes.tif`` etc. (default stem: the
    RGB file's name without its extension, :func:`~rsfusion.inference.folder.output_stem`).
    ``landed``, when given, receives each output as it lands complete under its final name, so
    that an interrupted call tells what it finished. ``plan`` is the pair's
    :func:`~rsfusion.inference.inputs.check_pair` (made and its notes logged when None).

    Pixels without data (RGB nodata; with ``x_missing="nodata"`` also pixels without X) are
    nodata in the classes (255, or 65535), 0 in every probability band and 0 (the declared
    nodata) in the confidence.

    Raises:
        PredictionError: options, inputs or memory unfit (before any work), a raster that
            cannot be read, an output that cannot be written (``.output`` names it).
    """
    opts = options or PredictOptions()
    opts.check()
    runner = model if isinstance(model, ModelRunner) else opts.runner(model)
    out_dir = Path(out_dir)
    stem = stem or output_stem(rgb)
    window = int(meta.window) if opts.window is None else opts.window
    overlap = window // 4 if opts.overlap is None else opts.overlap
    if window < 1:
        raise PredictionError(f"window {window} (the checkpoint's data.window): give --window")
    if not 0 <= overlap < window:
        raise PredictionError(f"overlap {overlap} must lie in [0, window={window})")
    classes, palette = meta.classes, meta.palette
    k = len(classes)
    landed = {} if landed is None else landed
    if plan is None:
        plan = check_pair(meta, rgb, x, opts.align, opts.rgb_scale, opts.resample_to_gsd)
        report(plan.notes)
    crs, transform, w, h = plan.model_grid
    bands = len(meta.rgb_bands) + len(meta.x_bands)
    wins = window_grid(h, w, window, window - overlap)  # lazy: rows and columns only
    batch_size, on_device = device_plan(opts, runner, meta, window, overlap, (w, h), len(wins))
    opts = replace(opts, batch_size=batch_size)
    check_memory(
        opts.memory(w, h, window, overlap, bands, k),
        f"predicting {rgb} ({w} x {h} px{' at the training GSD' if plan.resampled else ''}, "
        f"window {window}, batch {opts.batch_size}, {k} classes)",
        "use a smaller --window or --batch-size (or fewer --readers), or cut the raster "
        "into pieces (e.g. gdal_translate -srcwin) and predict those",
    )
    check_device_memory(runner, window, bands, k, batch_size)
    spec = pair_spec(
        meta, rgb, x, plan.x_grid, plan.rgb_factor, plan.model_grid if plan.resampled else None
    )
    reader = WindowReader(spec, batched(wins, batch_size), window, opts.readers, opts.prefetch)
    base_weights = weight_map(window, overlap, opts.blend) if opts.blend != "sum" else None
    acc = RowBandAccumulator(h, w, k, 1 if on_device else window)  # unused on the device
    device_acc = DeviceBandAccumulator(h, w, k, window, runner.device) if on_device else None
    dtype = class_dtype(k)
    nodata = 255 if dtype == "uint8" and k < 255 else 65535
    profile = (crs, transform, w, h)
    outputs = {"classes": (1, dtype, nodata)}
    if opts.probs:
        outputs["probs"] = (k, "uint8", None)
    if opts.confidence:
        outputs["confidence"] = (1, "uint8", 0)  # the top probability is never below 1 / k
    styles = _output_styles(classes, palette)
    finals = {name: out_dir / f"{stem}_{name}.tif" for name in outputs}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # a COG is copied from a finished tiled GeoTIFF, a resampled output warped from the
        # training GSD's: those live in a private folder
        staging = staging_dir(out_dir, stem) if opts.cog or plan.resampled else None
    except WRITE_ERRORS as err:
        raise write_error(out_dir, err) from err
    streamed = {
        name: (staging / path.name if staging is not None else path)
        for name, path in finals.items()
    }
    staged = {path: finals[name] for name, path in streamed.items()}  # for error messages
    valid: ValidPixels | None = None
    try:
        with contextlib.ExitStack() as stack:
            writers = {
                name: stack.enter_context(
                    StreamingGeoTIFF(
                        streamed[name],
                        profile,
                        count,
                        dt,
                        nodata=nd,
                        **styles[name],
                        **opts.compression,
                    )  # fmt: skip
                )
                for name, (count, dt, nd) in outputs.items()
            }
            bar = stack.enter_context(_progress(opts, stem, h * w / 1e6, runner))
            weights: dict[tuple[bool, ...], np.ndarray] = {}  # by the raster sides touched
            device_weights: dict[tuple[bool, ...], torch.Tensor] = {}  # the same, on the device
            # the pixels with data: own handles, read by the writing thread only
            handles = stack.enter_context(open_pair(spec, None))
            valid = ValidPixels(
                handles[0], handles[1] if opts.x_missing == "nodata" else None, (rgb, x)
            )

            def blend_and_write(item: tuple[Sequence[Window], np.ndarray, int]) -> None:
                batch, logits, next_row = item
                for wn, lg in zip(batch, logits):
                    acc.add(wn, lg, _weights(weights, base_weights, wn, window, h, w))
                for row, block, _ in acc.flush(next_row):
                    _write_outputs(row, host_outputs(block, *extra), writers, valid, nodata)

            def write(item: tuple[int, HostCopies]) -> None:
                row, copies = item
                _write_outputs(row, copies.wait(), writers, valid, nodata)

            extra = (opts.probs, opts.confidence)
            # the previous batch is blended and written while the model runs on this one (on
            # a GPU: its outputs are copied back and written); the thread is the only user of
            # the writers (and of the validity handles)
            sink = stack.enter_context(Background(write if on_device else blend_and_write))
            done = 0  # windows consumed; the plan is row-major: wins[done] is the next row
            for batch, rgb_b, x_b in reader:
                done += len(batch)
                next_row = int(wins[done].row_off) if done < len(wins) else h
                if device_acc is None:
                    sink.put((batch, _run(runner, rgb_b, x_b, spec.norm), next_row))
                else:
                    for item in run_on_device(
                        runner, rgb_b, x_b, spec.norm, batch, device_acc, next_row, extra,
                        lambda wn: _weights(
                            device_weights, base_weights, wn, window, h, w, runner.device
                        ),
                    ):  # fmt: skip
                        sink.put(item)
                bar.update(len(batch) / len(wins) * h * w / 1e6)
            sink.close()
        for name, final in finals.items():
            path = streamed[name]
            if plan.resampled:  # back onto the orthophoto's grid
                assert staging is not None
                target = staging / f"grid-{final.name}" if opts.cog else final
                staged[target] = final
                regrid(path, target, plan.grid, _regrid_resampling(name, plan), **styles[name],
                       **opts.compression)  # fmt: skip
                path = target
            if opts.cog:  # tiled GeoTIFF first (bounded memory), then the COG
                to_cog(path, final, **opts.compression)
            landed[name] = final
        write_styles(landed, classes, palette)
    except PredictionError as err:  # name the output, not its staged copy
        if staging is not None and getattr(err, "output", None) in staged:
            cause = err.__cause__ if err.__cause__ is not None else err
            raise write_error(staged[err.output], cause) from cause  # type: ignore[attr-defined]
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if valid is not None and valid.x_missing:
        share = valid.x_missing / (w * h)
        report([
            f"note: X raster {x} has no data (nodata, NaN, +-inf or outside it) for "
            f"{valid.x_missing} px ({share:.1%}) of orthophoto {rgb}: those pixels are nodata "
            "in the outputs (--x-missing predict runs the model with X as 0 there instead)"
        ])  # fmt: skip
    if opts.vector:
        from rsfusion.inference.vectorize import vectorize_classes

        landed["vector"] = vectorize_classes(
            finals["classes"], out_dir / f"{stem}.gpkg", classes, min_area=opts.min_area,
            simplify=opts.simplify, nodata=nodata, palette=palette,
        )  # fmt: skip
    return {name: landed[name] for name in [*outputs, "vector"] if name in landed}


def write_styles(
    landed: dict[str, Path], classes: Sequence[str], palette: Sequence[Sequence[int]]
) -> None:
    """QGIS styles beside the rasters (``NAME.qml``: QGIS loads it as the default style) and
    GDAL category names for the classes raster (``NAME.tif.aux.xml``), each written atomically:
    classes paletted with names, probabilities and confidence as a 0..1 ramp."""
    from rsfusion.inference.styles import (
        category_aux_xml,
        classes_qml,
        probability_qml,
        write_text_atomic,
    )

    for name, path in landed.items():
        try:
            if name == "classes":
                write_text_atomic(path.with_suffix(".qml"), classes_qml(classes, palette))
                write_text_atomic(Path(f"{path}.aux.xml"), category_aux_xml(classes))
            elif name in ("probs", "confidence"):
                write_text_atomic(path.with_suffix(".qml"), probability_qml())
        except WRITE_ERRORS as err:
            raise write_error(path.with_suffix(".qml"), err) from err


def _run(runner: ModelRunner, rgb: np.ndarray, x: np.ndarray | None, norm: InputNorm) -> Any:
    """The runner's logits; running out of GPU memory is a user error with the fix."""
    with out_of_memory(runner, rgb):
        return runner(rgb, x, norm)


def _progress(opts: PredictOptions, stem: str, mpix: float, runner: ModelRunner) -> Any:
    """A tqdm bar in MPix (its rate reads MPix/s), one line per rank; silent unless asked."""
    from tqdm.auto import tqdm

    return tqdm(
        total=round(mpix, 3), unit="MPix", desc=stem, position=opts.progress_position,
        disable=not opts.progress, leave=True, dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} MPix "
        "[{elapsed}<{remaining}, {rate_fmt}]",
        postfix=None,
    )  # fmt: skip


def _weights(
    cache: dict[tuple[bool, ...], Any],
    base: np.ndarray | None,
    win: Window,
    window: int,
    height: int,
    width: int,
    device: torch.device | None = None,
) -> Any:
    """A window's blending weights: they depend only on which raster sides it touches (an
    array, or with ``device`` a tensor copied there once per combination of sides)."""
    r, c = int(win.row_off), int(win.col_off)
    key = (r <= 0, r + window >= height, c <= 0, c + window >= width)
    if key not in cache:
        weights = (
            np.ones((window, window), np.float32) if base is None
            else edge_aware(base, win, height, width)
        )  # fmt: skip
        cache[key] = weights if device is None else torch.from_numpy(weights).to(device)
    return cache[key]


def class_map(logits: np.ndarray) -> np.ndarray:
    """``logits.argmax(0)`` of (K, H, W) logits (the first of tied classes), as uint8/uint16.

    numpy's argmax over the leading axis copies the array to make that axis the last; one
    max-reduction and K comparisons against it take about 60 % of that time (a 6 x 192 x 2048
    block: 13.7 vs 23.1 ms), and this runs for every finished row band.
    """
    best = np.maximum.reduce(logits, axis=0)
    k = logits.shape[0]
    classes = np.full(best.shape, k - 1, np.uint8 if k <= 256 else np.uint16)
    for c in range(k - 2, -1, -1):  # downwards: the lowest tied class is written last
        np.copyto(classes, c, where=logits[c] == best)
    return classes


def host_outputs(logits: np.ndarray, probs: bool, confidence: bool) -> dict[str, np.ndarray]:
    """The written outputs of a blended (K, n, W) block, computed in numpy: ``classes``
    (1, n, W) by :func:`class_map`, ``probs`` (K, n, W) and ``confidence`` (1, n, W) as
    ``rint(255 * softmax)`` and its maximum, uint8. The block is overwritten (no band-sized
    temporaries: the softmax costs as much as the rest of the row band)."""
    out = {"classes": class_map(logits)[None]}
    if not (probs or confidence):
        return out
    p = np.subtract(logits, logits.max(0, keepdims=True), out=logits)
    np.exp(p, out=p)
    p /= p.sum(0, keepdims=True)
    if confidence:
        out["confidence"] = np.rint(p.max(0) * 255).astype(np.uint8)[None]
    if probs:
        out["probs"] = np.rint(np.multiply(p, 255, out=p), out=p).astype(np.uint8)
    return out


def _write_outputs(
    row: int, outs: dict[str, np.ndarray], writers: dict, valid: ValidPixels | None, nodata: int
) -> None:
    """Write one finished band's outputs; pixels ``valid`` says lack data are nodata in the
    classes and 0 in the others (``rint(255 * p) * 0``: as if every probability were 0)."""
    n = outs["classes"].shape[1]
    ok = valid.rows(row, n) if valid is not None else None
    for name, writer in writers.items():
        band = outs[name]
        if ok is not None:
            band = np.where(ok, band, nodata if name == "classes" else 0)
        writer.write_rows(row, band.astype(writer.dtype, copy=False))


def _output_styles(classes: Sequence[str], palette: Sequence[Sequence[int]]) -> dict[str, dict]:
    """The colour table, class names and band descriptions of each output raster."""
    names = list(classes)
    return {
        "classes": {"colormap": {i: tuple(c) for i, c in enumerate(palette)}, "class_names": names},
        "probs": {"class_names": names, "band_descriptions": names},
        "confidence": {"class_names": names, "band_descriptions": ["confidence"]},
    }


def _regrid_resampling(name: str, plan: PairPlan) -> str:
    """How an output on the training GSD's grid goes back onto the orthophoto's: the most
    common class (mode) or the mean (average) where the orthophoto's pixels are coarser, else
    nearest (classes) or bilinear (probabilities, confidence)."""
    model_t, grid_t = plan.model_grid[1], plan.grid[1]
    coarser = abs(grid_t.a * grid_t.e) > abs(model_t.a * model_t.e)
    if name == "classes":
        return "mode" if coarser else "nearest"
    return "average" if coarser else "bilinear"
