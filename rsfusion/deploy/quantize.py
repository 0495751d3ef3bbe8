"""int8 models for CPUs: ONNX Runtime static quantisation, checked against float32 and cached.

:func:`quantize` turns a checkpoint (or a float32 ``.onnx`` written by ``scripts/export.py``)
into an int8 ONNX model run by :class:`~rsfusion.deploy.onnx.OnnxModel`:

* the model is exported to ONNX (float32), then quantised statically by ONNX Runtime: QDQ
  format, int8 weights (per output channel by default), uint8 activations whose ranges come from
  calibration windows of the checkpoint's own training tiles (or of rasters the user names,
  :mod:`rsfusion.deploy.calibration`), read and normalised exactly as prediction reads them;
* accuracy is measured, never assumed: the int8 model's class maps are compared with the
  float32 model's on check windows not used for calibration (share of equal pixels, and the
  mIoU of both where the windows have labels). Below the threshold (default 99.5 % equal
  pixels) nothing is written and the error gives the figure and what to try;
* the file lands beside its source, ``NAME.int8.onnx`` (:func:`cache_path`), with the float32
  export's metadata (so prediction preprocesses as from the checkpoint) and, under
  ``rsfusion_int8``, the provenance: the source's size and SHA-256, the scheme, the calibration
  data, the check's figures. :func:`cached` reuses it only for the very file it was made from:
  a changed checkpoint is quantised again.

:func:`load_int8_predictor` is :func:`~rsfusion.inference.predict.load_predictor` for int8
(quantising once when there is no current cached model); :func:`auto_int8` says whether
``--precision auto`` may pick the cached model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rsfusion.deploy.calibration import Windows, config_pairs, folder_pairs, sample_windows
from rsfusion.deploy.onnx import INT8_KEY, OnnxModel, _onnx, _ort, read_onnx_meta
from rsfusion.deploy.qdq import (
    DEFAULT_OPS,
    METHODS,
    first_last_nodes,
    matching_nodes,
    quantize_graph,
)
from rsfusion.errors import ConfigError, ExportError, PredictionError
from rsfusion.models.checkpoint import CheckpointMeta

__all__ = [
    "DEFAULT_THRESHOLD",
    "INT8_KEY",
    "Agreement",
    "QuantResult",
    "QuantSettings",
    "agreement",
    "auto_int8",
    "cache_path",
    "cached",
    "file_digest",
    "first_last_nodes",
    "int8_source",
    "load_int8_predictor",
    "matching_nodes",
    "quantize",
    "quantize_onnx",
    "read_int8",
]

log = logging.getLogger(__name__)

#: share of check pixels whose class must equal the float32 model's
DEFAULT_THRESHOLD = 0.995


@dataclass(frozen=True)
class QuantSettings:
    """How to quantise and check.

    Attributes:
        per_channel: int8 weights with one scale per output channel (else one per tensor).
        exclude_first_last: keep the first quantisable node after each input and the last
            before the logits in float32 (:func:`first_last_nodes`).
        exclude: further nodes kept in float32: names, or shell-style patterns
            (``/model/blocks.0/*``).
        ops: operator types quantised (default: convolutions, matrix products and the ReLU /
            ReLU6 after them).
        method: activation ranges: ``minmax``, ``percentile`` (99.999th) or ``entropy``.
        calib_windows, check_windows: windows to calibrate on, and to check on.
        threshold: share of check pixels that must keep their float32 class.
        max_miou_drop: where the check windows have labels, the largest mIoU drop allowed, in
            points (None: not checked).
        seed: order of the windows drawn.
    """

    per_channel: bool = True
    exclude_first_last: bool = False
    exclude: tuple[str, ...] = ()
    ops: tuple[str, ...] = DEFAULT_OPS
    method: str = "minmax"
    calib_windows: int = 64
    check_windows: int = 32
    threshold: float = DEFAULT_THRESHOLD
    max_miou_drop: float | None = None
    seed: int = 0

    def check(self) -> None:
        """Refuse settings that cannot work, naming the command-line option.

        Raises:
            ConfigError: a window count below 1, a threshold outside [0, 1], an unknown method.
        """
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method}: use one of {', '.join(METHODS)}")
        for flag, value in (("--calib-windows", self.calib_windows),
                            ("--check-windows", self.check_windows)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"{flag} {value}: must be at least 1")
        if self.max_miou_drop is not None and not self.max_miou_drop >= 0:
            raise ConfigError(f"--max-miou-drop {self.max_miou_drop:g}: must be 0 or more")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(
                f"--threshold {100 * self.threshold:g}: a percentage of pixels, 0 to 100"
            )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "exclude": list(self.exclude), "ops": list(self.ops)}


@dataclass(frozen=True)
class Agreement:
    """The int8 model against the float32 one on the check windows.

    Attributes:
        equal: share of pixels with the same class.
        windows, pixels: how many windows and pixels that is.
        miou_fp32, miou_int8: mIoU of each on the labelled pixels (None without labels).
        labelled: labelled pixels.
    """

    equal: float
    windows: int
    pixels: int
    miou_fp32: float | None = None
    miou_int8: float | None = None
    labelled: int = 0

    @property
    def miou_change(self) -> float | None:
        """int8 minus float32 mIoU, in points (None without labels)."""
        if self.miou_fp32 is None or self.miou_int8 is None:
            return None
        return 100.0 * (self.miou_int8 - self.miou_fp32)

    def describe(self) -> str:
        text = (
            f"{100 * self.equal:.2f} % of pixels keep their float32 class on {self.windows} "
            "check windows"
        )
        if self.miou_change is not None:
            assert self.miou_fp32 is not None and self.miou_int8 is not None
            text += (
                f"; mIoU {100 * self.miou_fp32:.2f} (float32) -> {100 * self.miou_int8:.2f} "
                f"(int8), {self.miou_change:+.2f} points"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "miou_change": self.miou_change}


@dataclass
class QuantResult:
    """An int8 model written (or reused) and its provenance (``rsfusion_int8``)."""

    path: Path
    agreement: Agreement
    provenance: dict[str, Any]
    reused: bool = False
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ the cache
def file_digest(path: str | Path) -> dict[str, Any]:
    """Name, size and SHA-256 of a file: what ties an int8 model to its source."""
    path = Path(path)
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def cache_path(
    source: str | Path,
    dataset: str | None = None,
    modality: str | None = None,
    window: int | None = None,
) -> Path:
    """Where the int8 model of ``source`` lives: beside it, ``NAME[.DATASET][.MODALITY]
    [.wWINDOW].int8.onnx`` (the parts only where given).

    Example:
        >>> cache_path("runs/a/last.ckpt")
        PosixPath('runs/a/last.int8.onnx')
        >>> cache_path("model.onnx", window=256)
        PosixPath('model.w256.int8.onnx')
    """
    source = Path(source)
    parts = [source.stem, dataset, modality, None if window is None else f"w{int(window)}"]
    return source.with_name(".".join(p for p in parts if p) + ".int8.onnx")


def read_int8(path: str | Path) -> dict[str, Any] | None:
    """The provenance stored in an int8 model (None for a float32 one or an unreadable file)."""
    try:
        proto = _onnx().load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: not an int8 model of ours
        return None
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        return json.loads(props[INT8_KEY]) if INT8_KEY in props else None
    except json.JSONDecodeError:
        return None


def cached(path: str | Path, source: str | Path, digest: dict[str, Any] | None = None) -> bool:
    """Whether ``path`` is an int8 model of exactly ``source`` (same bytes) that passed its
    check. ``digest`` (:func:`file_digest` of ``source``) saves hashing it again."""
    path = Path(path)
    if not path.is_file():
        return False
    facts = read_int8(path)
    if not facts:
        return False
    digest = digest or file_digest(source)
    stored = facts.get("source", {})
    same = (stored.get("sha256"), stored.get("bytes")) == (digest["sha256"], digest["bytes"])
    return same and bool(facts.get("check", {}).get("passed"))


# ------------------------------------------------------------------------------ the check
def agreement(
    fp32: OnnxModel, int8: OnnxModel, check: Windows, meta: CheckpointMeta, batch: int = 4
) -> Agreement:
    """Class maps of ``int8`` against ``fp32`` on ``check`` (and both against its labels)."""
    from rsfusion.catalog import load_card
    from rsfusion.training.metrics import confusion_from_arrays, scores_from_confusion

    k, ignore = len(meta.classes), int(meta.ignore_index)
    equal = pixels = 0
    cms = [torch.zeros(k, k, dtype=torch.long) for _ in range(2)]
    for i in range(0, len(check), batch):
        rgb = torch.from_numpy(check.rgb[i : i + batch])
        x = None if check.x is None else torch.from_numpy(check.x[i : i + batch])
        ref = fp32(rgb, x).argmax(1)
        got = int8(rgb, x).argmax(1)
        equal += int((ref == got).sum())
        pixels += ref.numel()
        if check.labels is not None:
            target = torch.from_numpy(check.labels[i : i + batch])
            for cm, pred in zip(cms, (ref, got)):
                cm += confusion_from_arrays(pred, target, k, ignore)
    miou: list[float | None] = [None, None]
    labelled = int(cms[0].sum())
    if check.labels is not None and labelled:
        try:
            classes = list(load_card(meta.card).metric_classes)
        except Exception:  # a card this install does not know: every class
            classes = list(range(k))
        miou = [float(scores_from_confusion(cm, classes)["mIoU"]) for cm in cms]
    return Agreement(equal / max(pixels, 1), len(check), pixels, miou[0], miou[1], labelled)


def _refusal(found: Agreement, settings: QuantSettings, source: str) -> ExportError:
    tries = []
    if not settings.per_channel:
        tries.append("per-channel weights (leave --per-tensor out)")
    if not settings.exclude_first_last:
        tries.append("the first and last layers kept in float32 (--exclude-first-last)")
    tries.append(f"more calibration windows (--calib-windows {2 * settings.calib_windows})")
    if settings.method == "minmax":
        tries.append("another range method (--method percentile)")
    tries.append(
        "parts kept in float32 (--exclude NODE or pattern, e.g. --exclude '/model/blocks.0/*': "
        "the early layers are often the most sensitive)"
    )
    if found.equal >= settings.threshold:
        limit = f"an mIoU drop of at most {settings.max_miou_drop:g} points (--max-miou-drop)"
    else:
        limit = f"the threshold of {100 * settings.threshold:g} % of pixels"
    return ExportError(
        f"{source}: int8 against float32: {found.describe()}: short of {limit}; nothing was "
        "written. Try " + "; ".join(tries) + ", or predict in float32 / bf16"
    )


# ------------------------------------------------------------------------------ quantising
def quantize_onnx(
    fp32: str | Path,
    out: str | Path,
    calib: Windows,
    check: Windows,
    settings: QuantSettings | None = None,
    provenance: dict[str, Any] | None = None,
    source: str | None = None,
    threads: int | None = None,
) -> QuantResult:
    """Quantise the float32 ONNX model ``fp32`` (written by
    :func:`~rsfusion.deploy.onnx.export_onnx`) on ``calib``, check it on ``check`` and write it
    to ``out`` with ``provenance`` (under ``rsfusion_int8``, with the scheme and the check).

    Raises:
        ExportError: the int8 model keeps the float32 class on fewer pixels than the threshold
            (nothing is written), or ONNX Runtime cannot quantise the graph.
        PredictionError: ``out`` cannot be written.
    """
    from rsfusion.data.writers import staging_dir

    settings = settings or QuantSettings()
    settings.check()
    onnx, ort = _onnx(), _ort()
    fp32, out = Path(fp32), Path(out)
    source = source or f"ONNX model {fp32}"
    meta = read_onnx_meta(fp32)
    start = time.perf_counter()
    try:
        staging = staging_dir(out.parent, out.name)
    except OSError as err:
        raise PredictionError(f"{out}: cannot write there ({err.strerror or err})") from err
    try:
        reference = OnnxModel(fp32, threads)
        tmp = staging / "int8.onnx"
        try:
            excluded = quantize_graph(fp32, tmp, reference.names, calib, settings, staging)
        except (ConfigError, ExportError):
            raise
        except Exception as err:  # ONNX Runtime's quantisation raises plain exceptions
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise ExportError(
                f"{source}: ONNX Runtime {ort.__version__} cannot quantise this model "
                f"({type(err).__name__}: {first}); keep the failing nodes in float32 with "
                "--exclude NODE, or predict in float32 / bf16"
            ) from err
        proto = onnx.load(str(fp32), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        found = agreement(reference, _bare_session_model(tmp, props, staging, threads), check, meta)
        change = found.miou_change
        passed = found.equal >= settings.threshold and not (
            settings.max_miou_drop is not None
            and change is not None
            and -change > settings.max_miou_drop
        )
        if not passed:
            raise _refusal(found, settings, source)
        facts = {
            "format": 1,
            "precision": "int8",
            "scheme": {
                "format": "QDQ (static)",
                "weights": f"int8, symmetric, {'per channel' if settings.per_channel else 'per tensor'}",
                "activations": "uint8, asymmetric",
                "ranges": settings.method,
                "ops": list(settings.ops),
                "float32_nodes": excluded,
                "onnxruntime": ort.__version__,
            },
            **(provenance or {}),
            "settings": settings.to_dict(),
            "check": {**found.to_dict(), "threshold": settings.threshold, "passed": passed},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - start, 1),
        }
        _write(onnx, tmp, out, {**props, INT8_KEY: json.dumps(facts)}, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return QuantResult(out, found, facts)


def _bare_session_model(
    path: Path, props: dict[str, str], staging: Path, threads: int | None
) -> OnnxModel:
    """An :class:`OnnxModel` of the freshly quantised graph (given the float32 metadata)."""
    onnx = _onnx()
    proto = onnx.load(str(path))
    _set_props(proto, props)
    checked = staging / "checked.onnx"
    onnx.save(proto, str(checked))
    return OnnxModel(checked, threads)


def _set_props(proto: Any, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _write(onnx: Any, tmp: Path, out: Path, props: dict[str, str], staging: Path) -> None:
    """The model with ``props`` written in ``staging`` and moved onto ``out``."""
    proto = onnx.load(str(tmp))
    _set_props(proto, props)
    proto.doc_string = "rsfusion segmentation model, int8 (ONNX Runtime static quantisation)"
    final = staging / out.name
    try:
        onnx.save(proto, str(final))
        os.replace(final, out)
    except OSError as err:
        error = PredictionError(f"{out}: cannot be written ({err.strerror or err})")
        error.output = out  # type: ignore[attr-defined]
        raise error from err


def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


def _request(window: int, settings: QuantSettings, calibration: dict[str, Any]) -> dict[str, Any]:
    """What a quantisation was asked: a cached model made otherwise is not reused by
    :func:`quantize` (prediction reuses any current one)."""
    keep = ("source", "card", "root", "tiles", "rgb", "x", "files")
    return {
        "window": window,
        "settings": settings.to_dict(),
        "calibration": {k: calibration.get(k) for k in keep},
    }


def _same_request(stored: dict[str, Any], window: int, settings: QuantSettings) -> bool:
    """Made for ``window`` with ``settings``, calibrated on the training tiles."""
    return (
        stored.get("window") == window
        and stored.get("settings") == settings.to_dict()
        and stored.get("calibration", {}).get("source") == "training tiles"
    )


def _reused(path: Path, facts: dict[str, Any]) -> QuantResult:
    names = {f.name for f in dataclasses.fields(Agreement)}
    found = Agreement(**{k: v for k, v in facts["check"].items() if k in names})
    return QuantResult(path, found, facts, reused=True)


def quantize(
    source: str | Path,
    out: str | Path | None = None,
    *,
    dataset: str | None = None,
    modality: str | None = None,
    window: int | None = None,
    data_root: str | Path | None = None,
    calib_rgb: str | Path | None = None,
    calib_x: str | Path | None = None,
    settings: QuantSettings | None = None,
    force: bool = False,
    reuse_any: bool = False,
    threads: int | None = None,
) -> QuantResult:
    """The int8 model of a checkpoint or a float32 ``.onnx``: the cached one when it is current,
    else quantised now (:func:`quantize_onnx`) and written to ``out`` (default
    :func:`cache_path`).

    Args:
        source: a checkpoint (exported to ONNX first) or a ``.onnx`` from ``scripts/export.py``.
        dataset, modality: a generalist checkpoint's dataset and the X modality (as predict).
        window: the fixed window (default: the training window).
        data_root: the training data root, where the config's has moved.
        calib_rgb, calib_x: rasters to calibrate on instead of the training tiles.
        force: quantise again even when a current model is cached.
        reuse_any: reuse a cached model of this source whatever it was asked with (prediction);
            else only one made with the same settings and calibration data.

    Raises:
        ExportError: below the threshold (nothing written), or the model cannot be quantised.
        ConfigError, MissingFileError, TileError: no calibration data.
    """
    settings = settings or QuantSettings()
    settings.check()
    source = Path(source)
    if not source.is_file():
        from rsfusion.errors import MissingFileError

        raise MissingFileError(f"--ckpt {source}: no such file")
    if _is_onnx(source) and read_int8(source) is not None:
        raise ConfigError(f"--ckpt {source} is an int8 model already: predict with it")
    if _is_onnx(source):
        meta = read_onnx_meta(source)
        exported = int(meta.window)
        if window is not None and int(window) != exported:
            raise ConfigError(
                f"--window {window}: {source} was exported for {exported} px windows; leave "
                "--window out, or quantise the checkpoint itself"
            )
        window = exported
        meta_window = exported
    else:
        from rsfusion.models.checkpoint import read_checkpoint

        _, meta = read_checkpoint(source, "checkpoint")
        meta_window = int(meta.window)
        window = meta_window if window is None else int(window)
    out = (
        Path(out)
        if out is not None
        else cache_path(source, dataset, modality, None if window == meta_window else window)
    )
    digest = file_digest(source)
    label = f"{'ONNX model' if _is_onnx(source) else 'checkpoint'} {source}"
    if calib_x is not None and calib_rgb is None:
        raise ConfigError("--calib-x: give the RGB rasters with --calib-rgb as well")
    current = None if force or not cached(out, source, digest) else read_int8(out)
    # a current model asked with the same settings (or by prediction, with any) is reused
    # before the calibration data is looked for: it need not be on this machine any more
    if current is not None and (reuse_any or (
        calib_rgb is None and data_root is None
        and _same_request(current.get("request", {}), window, settings)
    )):  # fmt: skip
        return _reused(out, current)
    if calib_rgb is not None:
        pairs, calibration = folder_pairs(meta, calib_rgb, calib_x)
        check_pairs: list = []
    else:
        pairs, check_pairs, calibration = config_pairs(meta, data_root, label)
    request = _request(window, settings, calibration)
    if current is not None and current.get("request") == request:
        return _reused(out, current)
    cal, check, sampled = sample_windows(
        meta, pairs, check_pairs, window, settings.calib_windows, settings.check_windows,
        settings.seed,
    )  # fmt: skip
    provenance = {
        "source": {**digest, "path": str(source.absolute()),
                   "kind": "onnx" if _is_onnx(source) else "checkpoint"},
        "calibration": {**calibration, **sampled},
        "request": request,
    }  # fmt: skip
    with _fp32_model(source, dataset, modality, window, out.parent) as fp32:
        return quantize_onnx(fp32, out, cal, check, settings, provenance, label, threads)


@contextlib.contextmanager
def _fp32_model(
    source: Path, dataset: str | None, modality: str | None, window: int, near: Path
) -> Iterator[Path]:
    """The float32 ONNX model of ``source``: itself, or the checkpoint exported to a private
    folder beside the output (removed after)."""
    if _is_onnx(source):
        yield source
        return
    from rsfusion.data.writers import staging_dir
    from rsfusion.deploy.onnx import export_onnx
    from rsfusion.inference.predict import load_predictor

    model, meta = load_predictor(source, dataset, modality)
    try:
        staging = staging_dir(near, f"{source.name}.fp32")
    except OSError as err:
        raise PredictionError(f"{near}: cannot write there ({err.strerror or err})") from err
    try:
        facts = {"source": source.name, "dataset": dataset,
                 "modality": modality or meta.x_modality}  # fmt: skip
        log.info(f"exporting {meta.spec.name} ({meta.spec.backbone}) to ONNX for {window} px ...")
        result = export_onnx(model, meta, staging / "fp32.onnx", window=window, export=facts)
        yield result.path
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------ prediction
def auto_int8(
    source: str | Path,
    dataset: str | None = None,
    modality: str | None = None,
    window: int | None = None,
) -> Path | None:
    """The int8 model ``--precision auto`` may pick for the checkpoint ``source``: one cached
    beside it (:func:`cache_path`), made from this very file, for ``window`` (default: the
    training window), that passed its check at the default threshold (99.5 %) or above; else
    None. Cheap where there is none: no file, no hashing.
    """
    source = Path(source)
    if _is_onnx(source) or not source.is_file():
        return None
    names = [cache_path(source, dataset, modality)]
    if window is not None:
        names.insert(0, cache_path(source, dataset, modality, window))
    for path in names:
        if not path.is_file():
            continue
        facts = read_int8(path) or {}
        made_for = facts.get("calibration", {}).get("window")
        if window is not None and made_for != int(window):
            continue
        if float(facts.get("check", {}).get("equal", 0.0)) < DEFAULT_THRESHOLD:
            continue
        if cached(path, source):
            return path
    return None


def load_int8_predictor(
    source: str | Path,
    dataset: str | None = None,
    modality: str | None = None,
    window: int | None = None,
    threads: int | None = None,
) -> tuple[OnnxModel, CheckpointMeta]:
    """:func:`~rsfusion.inference.predict.load_predictor` for ``--precision int8``.

    ``source`` is an int8 ``.onnx`` (run as it is), or a checkpoint / float32 ``.onnx`` whose
    cached int8 model is used when current, else made now with the default settings from the
    training tiles (:func:`quantize`) and cached beside it.

    Raises:
        ExportError: the int8 model falls below the threshold (the message gives the figure and
            scripts/quantize.py's options).
        ConfigError, MissingFileError: nothing to calibrate on (the message says what to give).
    """
    from rsfusion.deploy.onnx import load_onnx_predictor

    source = Path(source)
    if _is_onnx(source) and read_int8(source) is not None:
        return load_onnx_predictor(source, dataset, modality, threads)
    try:
        result = quantize(
            source, dataset=dataset, modality=modality, window=window, reuse_any=True,
            threads=threads, settings=QuantSettings(threshold=DEFAULT_THRESHOLD),
        )  # fmt: skip
    except ExportError as err:
        raise ExportError(
            f"{err} (scripts/quantize.py --ckpt {source} takes these options)"
        ) from None
    if not result.reused:
        log.info(f"int8 model cached: {result.path} ({result.agreement.describe()})")
    model, meta = load_onnx_predictor(result.path, dataset, modality, threads)
    return model, meta


def int8_source(
    source: str | Path,
    precision: str = "auto",
    device: str = "auto",
    dataset: str | None = None,
    modality: str | None = None,
    window: int | None = None,
) -> Path | None:
    """What prediction hands to :func:`load_int8_predictor` for ``--precision``: ``source``
    itself for ``int8``, the checked cached int8 model for ``auto`` on the CPU where
    :func:`auto_int8` finds one (the caller says so where it names the precision); None where
    the model loads as usual (torch, or ONNX Runtime for a ``.onnx``).

    Raises:
        PredictionError: ``int8`` with a GPU device (ONNX Runtime runs it on the CPU).
    """
    from rsfusion.inference.runner import resolve_device

    if precision == "int8":
        if device not in ("auto", "cpu"):
            raise PredictionError(
                f"--precision int8 --device {device}: int8 models run on the CPU (ONNX Runtime); "
                "leave --device out, or predict in bf16 / fp16 on the GPU"
            )
        return Path(source)
    if precision != "auto" or resolve_device(device).type != "cpu":
        return None
    return auto_int8(source, dataset, modality, window)
