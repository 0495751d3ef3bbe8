"""ONNX export of any rsfusion model, its metadata, and an ONNX Runtime model like the torch one.

:func:`export_onnx` traces a model (TorchScript-based ``torch.onnx.export``) for windows of a
fixed size, checks ONNX Runtime's logits against PyTorch's (float32) on random windows, and
writes the file with its metadata under its final name only when complete:

* inputs are normalised as the model takes them (the normalisation is not in the graph): one
  input ``rgb`` (RGB-only models), ``rgb_x`` (RGB bands then X bands, the layer Deepness reads)
  or, for an RGB+X model Deepness cannot run, ``rgb`` and ``x``. The batch is dynamic where the
  traced graph allows it (else 1); the output is ``logits`` (B, K, N, N), float32;
* ``metadata_props``: ``rsfusion`` (the checkpoint's metadata, JSON: prediction from the
  ``.onnx`` preprocesses exactly as from the checkpoint), ``rsfusion_export`` (window, layout,
  batch, opset, the parity figures, what was changed to export), ``deepness_compatible`` and
  ``deepness_note``, and the Deepness keys of :mod:`rsfusion.deploy.deepness`.

:class:`OnnxModel` runs the file with ONNX Runtime (CPU) and is called like the torch model
(``model(rgb, x)``, torch tensors in, torch logits out), so the prediction runner's windows,
blending and writers serve it unchanged; :func:`load_onnx_predictor` is
:func:`~rsfusion.inference.predict.load_predictor` for a ``.onnx`` file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rsfusion.data.writers import staging_dir
from rsfusion.deploy.deepness import DeepnessPlan, XFixed, deepness_metadata, deepness_plan
from rsfusion.deploy.exportable import exportable
from rsfusion.errors import (
    CheckpointMismatchError,
    ConfigError,
    ExportError,
    MissingFileError,
    PredictionError,
    UnknownNameError,
)
from rsfusion.models.checkpoint import META_KEY, CheckpointMeta

__all__ = [
    "EXPORT_KEY",
    "INT8_KEY",
    "ExportResult",
    "OnnxModel",
    "export_onnx",
    "load_onnx_predictor",
    "onnx_options",
    "read_onnx_export",
    "read_onnx_meta",
    "require_onnx",
    "takes_x",
]

#: the metadata key with the export's facts (window, layout, batch, opset, parity)
EXPORT_KEY = "rsfusion_export"
#: the metadata key of an int8 model's provenance and check (:mod:`rsfusion.deploy.quantize`)
INT8_KEY = "rsfusion_int8"
#: default ONNX opset (GridSample for InternImage's DCNv3, LayerNormalization)
DEFAULT_OPSET = 17
#: models whose files would exceed this keep their weights in ``<name>.onnx.data`` beside them
#: (a protobuf file holds at most 2 GiB)
EXTERNAL_DATA_BYTES = 1_800_000_000
#: parity the export must reach: argmax equal on this share of pixels, and logits within
#: ``TOLERANCE * max(1, max |logit|)``
MIN_AGREEMENT = 0.999
TOLERANCE = 1e-3
_FIX = "pip install 'rsfusion[onnx]' (onnx and onnxruntime)"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ConfigError(f"ONNX export needs the onnx package ({err}): {_FIX}") from None
    return onnx


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError(f"ONNX models run with onnxruntime ({err}): {_FIX}") from None
    return onnxruntime


def require_onnx() -> None:
    """Refuse, with the install command, when onnx or onnxruntime is missing."""
    _onnx()
    _ort()


def takes_x(meta: CheckpointMeta) -> bool:
    """Whether the checkpoint's model reads X (an ``rgb_only`` model of an RGB+X run does not)."""
    return bool(meta.x_bands) and meta.spec.name != "rgb_only" and meta.spec.x_channels > 0


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: the ``.onnx`` file (with ``external`` also ``<path>.data``).
        inputs: input names and shapes (batch as ``"batch"`` when dynamic).
        batch: ``"dynamic"`` or 1.
        max_abs_diff, agreement: ONNX Runtime vs PyTorch float32 on the check windows: largest
            absolute logit difference and share of pixels with the same argmax.
        windows: how many random windows that was.
        plan: Deepness compatibility and standardisation.
        changes: what was changed in the model to export it (:func:`exportable`).
    """

    path: Path
    inputs: dict[str, list[int | str]]
    batch: str | int
    max_abs_diff: float
    agreement: float
    windows: int
    plan: DeepnessPlan
    bytes: int = 0
    external: bool = False
    changes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class _Graph(nn.Module):
    """The exported function: normalised inputs in one of three layouts -> float32 logits."""

    def __init__(self, model: nn.Module, rgb_channels: int, layout: str) -> None:
        super().__init__()
        self.model, self.rgb_channels, self.layout = model, rgb_channels, layout

    def forward(self, *inputs: Tensor) -> Tensor:
        if self.layout == "separate":
            rgb, x = inputs
        elif self.layout == "stacked":
            rgb, x = inputs[0][:, : self.rgb_channels], inputs[0][:, self.rgb_channels :]
        else:
            rgb, x = inputs[0], None
        out = self.model(rgb, x)
        return (out["out"] if isinstance(out, dict) else out).float()


def _layout(meta: CheckpointMeta, plan: DeepnessPlan) -> tuple[str, dict[str, int]]:
    """The input layout and the channels of each input."""
    rgb, x = meta.spec.rgb_channels, meta.spec.x_channels
    if not takes_x(meta):
        return "rgb", {"rgb": rgb}
    if plan.compatible:
        return "stacked", {"rgb_x": rgb + x}
    return "separate", {"rgb": rgb, "x": x}


def _check_inputs(channels: dict[str, int], batch: int, window: int, seed: int) -> list[Tensor]:
    """Random windows like normalised inputs: RGB ~ N(0, 1), X in [0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for name, c in channels.items():
        if name == "x":
            out.append(torch.rand(batch, c, window, window, generator=gen))
        else:
            out.append(torch.randn(batch, c, window, window, generator=gen))
    return out


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 into a temporary file while the block runs: the exporter's C++ log
    dumps the whole TorchScript graph on an error (the error itself is raised and reported)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _trace(
    graph: _Graph, args: list[Tensor], path: Path, names: list[str], opset: int, dynamic: bool
) -> None:
    axes = {n: {0: "batch"} for n in [*names, "logits"]} if dynamic else None
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_stderr():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(
                graph, tuple(args), str(path), dynamo=False, input_names=names,
                output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                do_constant_folding=True,
            )  # fmt: skip
    except Exception as err:  # the exporter's errors have no common class
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(
            f"the TorchScript-based ONNX exporter (torch {torch.__version__}, opset {opset}) "
            f"cannot export this model: {type(err).__name__}: {first[:300]}. Try another --opset "
            f"(default {DEFAULT_OPSET}); the dynamo-based exporter needs the onnxscript package"
        ) from err


def _compare(
    path: Path, graph: _Graph, names: list[str], args: list[Tensor], per_sample: bool
) -> tuple[float, float, float]:
    """(max |ORT - torch|, argmax agreement, max |torch|) on ``args``."""
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a batch size the graph refuses is reported by the caller
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = graph(*args).numpy()
    if per_sample:
        outs = [
            session.run(["logits"], {n: a[i : i + 1].numpy() for n, a in zip(names, args)})[0]
            for i in range(len(args[0]))
        ]
        got = np.concatenate(outs)
    else:
        got = session.run(["logits"], {n: a.numpy() for n, a in zip(names, args)})[0]
    if got.shape != ref.shape:
        raise ValueError(f"ONNX Runtime gave logits {got.shape}, PyTorch {ref.shape}")
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    return diff, agree, float(np.abs(ref).max())


def _fits(diff: float, agree: float, scale: float) -> bool:
    return agree >= MIN_AGREEMENT and diff <= TOLERANCE * max(1.0, scale)


def _traced_and_checked(
    graph: _Graph, channels: dict[str, int], window: int, opset: int, seed: int, tmp: Path
) -> tuple[bool, tuple[float, float, float], int, list[str]]:
    """Trace ``graph`` to ``tmp`` with a dynamic batch, checked by ONNX Runtime on a batch of
    another size; where that fails, again with a batch of one. Returns whether the batch is
    dynamic, the check's (max |difference|, argmax agreement, max |logit|), its window count
    and notes."""
    names = list(channels)
    sample = _check_inputs(channels, 2, window, seed)
    with torch.no_grad():  # a first call outside the trace: constants (NMF bases, ...) are made
        graph(*[a[:1] for a in sample])
    _trace(graph, sample, tmp, names, opset, dynamic=True)
    check = _check_inputs(channels, 3, window, seed + 1)
    try:
        figures = _compare(tmp, graph, names, check, per_sample=False)
        if _fits(*figures):
            return True, figures, len(check[0]), []
        note = (
            f"a dynamic batch gave logits off by {figures[0]:.3g} (argmax equal on "
            f"{100 * figures[1]:.2f} %) at another batch size: exported with a batch of 1"
        )
    except Exception as err:  # ONNX Runtime refused the other batch size
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        note = (
            f"a dynamic batch does not run at another batch size in ONNX Runtime ({reason}): "
            "exported with a batch of 1"
        )
    for old in tmp.parent.iterdir():  # the traced file (and any external weights)
        old.unlink()
    _trace(graph, [a[:1] for a in sample], tmp, names, opset, dynamic=False)
    return False, _compare(tmp, graph, names, check, per_sample=True), len(check[0]), [note]


def export_onnx(
    model: nn.Module,
    meta: CheckpointMeta,
    path: str | Path,
    *,
    window: int | None = None,
    overlap: int | None = None,
    opset: int = DEFAULT_OPSET,
    x: XFixed | None = None,
    export: dict[str, Any] | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` (its checkpoint's ``meta``) to ``path`` for windows of ``window`` px.

    Args:
        model: the model as :func:`~rsfusion.inference.predict.load_predictor` returns it.
        window: the fixed window (default: the checkpoint's training window).
        overlap: Deepness's default tile overlap, in pixels (default: window / 4, as predict).
        opset: ONNX opset.
        x: a fixed X normalisation for Deepness (:func:`~rsfusion.deploy.deepness.fixed_x`).
        export: further facts stored under ``rsfusion_export`` (dataset, modality, source).
        seed: seed of the check windows and of the fixed NMF bases (CPAL's Hamburger head).

    The model is changed only while it is traced (:func:`~rsfusion.deploy.exportable.exportable`)
    and is restored after. ONNX Runtime must reproduce PyTorch's float32 logits on random
    windows (argmax equal on 99.9 % of pixels, logits within 1e-3 of their scale): first with a
    dynamic batch (checked on a batch of another size), else with a batch of 1.

    Raises:
        ExportError: the exporter cannot export the model, or ONNX Runtime's logits differ.
        PredictionError: the output cannot be written (``.output`` names it).
    """
    onnx = _onnx()
    path = Path(path)
    window = int(meta.window if window is None else window)
    overlap = window // 4 if overlap is None else int(overlap)
    if window < 1 or not 0 <= overlap < window:
        raise ConfigError(
            f"window {window}, overlap {overlap}: need window >= 1, 0 <= overlap < window"
        )
    plan = deepness_plan(meta, takes_x(meta), x)
    layout, channels = _layout(meta, plan)
    graph = _Graph(model, meta.spec.rgb_channels, layout).eval()
    try:
        staging = staging_dir(path.parent, path.name)
    except OSError as err:
        raise PredictionError(f"--onnx {path}: cannot write there ({err.strerror or err})") from err
    try:
        tmp = staging / "traced.onnx"
        with exportable(model, seed) as changed:
            dynamic, (diff, agree, scale), windows, notes = _traced_and_checked(
                graph, channels, window, opset, seed, tmp
            )
            changes = {
                k: len(v) if isinstance(v, dict) and k.startswith("constant") else v
                for k, v in changed.items()
            }
        if not _fits(diff, agree, scale):
            raise ExportError(
                f"ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g} (logits up to "
                f"{scale:.3g}; argmax equal on {100 * agree:.3f} % of pixels) on random windows: "
                f"the exported model would not predict like the checkpoint. Try another --opset "
                f"(this one: {opset})"
            )
        batch: str | int = "dynamic" if dynamic else 1
        facts = {
            "format": 1,
            "window": window,
            "training_window": int(meta.window),
            "overlap": overlap,
            "layout": layout,
            "inputs": {
                n: [batch if dynamic else 1, c, window, window] for n, c in channels.items()
            },
            "batch": batch,
            "normalised_inputs": True,
            "opset": opset,
            "exporter": "torch.onnx.export (TorchScript-based, dynamo=False)",
            "torch": torch.__version__,
            "parity": {"max_abs_diff": diff, "argmax_equal": agree, "windows": windows},
            "changes": changes,
            "notes": notes,
            **(export or {}),
        }
        stored = CheckpointMeta.from_dict({**meta.to_dict(), "window": window})
        props = {
            META_KEY: json.dumps(stored.to_dict()),
            EXPORT_KEY: json.dumps(facts),
            "deepness_compatible": json.dumps(plan.compatible),
            "deepness_note": json.dumps(plan.note),
            **deepness_metadata(stored, window, overlap, plan),
        }
        external = _finish(onnx, tmp, staging, path, props)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = path.stat().st_size + (Path(f"{path}.data").stat().st_size if external else 0)
    return ExportResult(
        path=path, inputs=facts["inputs"], batch=batch, max_abs_diff=diff, agreement=agree,
        windows=windows, plan=plan, bytes=size, external=external, changes=changes,
        notes=notes,
    )  # fmt: skip


def _finish(onnx: Any, tmp: Path, staging: Path, path: Path, props: dict[str, str]) -> bool:
    """Add the metadata, write the file in ``staging`` and move it onto ``path`` (the weights
    first when they go to ``<path>.data``); returns whether they did."""
    traced = sum(p.stat().st_size for p in staging.iterdir())
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "rsfusion segmentation model: normalised inputs -> logits (B, K, N, N)"
    final = staging / "final"
    final.mkdir()
    external = traced > EXTERNAL_DATA_BYTES
    out = final / path.name
    try:
        if external:
            onnx.save(
                proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                location=f"{path.name}.data", size_threshold=1024,
            )  # fmt: skip
            os.replace(final / f"{path.name}.data", f"{path}.data")
        else:
            onnx.save(proto, str(out))
        os.replace(out, path)
    except OSError as err:
        error = PredictionError(f"--onnx {path}: cannot be written ({err.strerror or err})")
        error.output = path  # type: ignore[attr-defined]
        raise error from err
    return external


# ------------------------------------------------------------------------------ reading back
def _props(path: Path) -> dict[str, str]:
    onnx = _onnx()
    if not path.is_file():
        raise MissingFileError(f"ONNX model {path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends
        raise CheckpointMismatchError(
            f"ONNX model {path} cannot be read ({type(err).__name__}): it is truncated or not "
            "an ONNX file; export it again with scripts/export.py"
        ) from None
    return {p.key: p.value for p in proto.metadata_props}


def _meta_from(props: dict[str, str], source: str) -> CheckpointMeta:
    if META_KEY not in props:
        raise CheckpointMismatchError(
            f"{source} carries no rsfusion metadata: export it with scripts/export.py (an ONNX "
            "model from elsewhere does not say its bands, normalisation and classes)"
        )
    try:
        data = json.loads(props[META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointMismatchError(
            f"{source}: its rsfusion metadata is not JSON ({err})"
        ) from None
    return CheckpointMeta.from_dict(data, source)


def read_onnx_meta(path: str | Path) -> CheckpointMeta:
    """The :class:`CheckpointMeta` stored in an exported model (window: the exported one).

    Raises:
        MissingFileError: no such file.
        CheckpointMismatchError: not an ONNX file, or one without rsfusion metadata.
    """
    path = Path(path)
    return _meta_from(_props(path), f"ONNX model {path}")


def read_onnx_export(path: str | Path) -> dict[str, Any]:
    """The export's facts (``rsfusion_export``: window, layout, batch, opset, parity, ...)."""
    path = Path(path)
    props = _props(path)
    _meta_from(props, f"ONNX model {path}")
    return json.loads(props.get(EXPORT_KEY, "{}"))


class OnnxModel(nn.Module):
    """An exported model run by ONNX Runtime (CPU), called like the torch model.

    ``model(rgb, x)``: normalised float tensors (B, C, N, N) in, float32 logits (B, K, N, N)
    out, on the inputs' device. ``N`` is the exported window; a batch of any size is run (in
    batches of one where the file's batch is fixed). It holds no parameters: moving it or
    changing its memory format (as the prediction runner does) changes nothing.

    Args:
        path: the ``.onnx`` file written by :func:`export_onnx`.
        threads: ONNX Runtime's intra-op threads (default: torch's thread count).

    Raises:
        MissingFileError, CheckpointMismatchError: as :func:`read_onnx_meta`.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"ONNX model {self.path}: no such file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's own exception classes
            raise CheckpointMismatchError(
                f"ONNX model {self.path} cannot be loaded by ONNX Runtime "
                f"{ort.__version__}: {str(err).splitlines()[0][:300]}"
            ) from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        source = f"ONNX model {self.path}"
        self.meta = _meta_from(props, source)
        self.export = json.loads(props.get(EXPORT_KEY, "{}"))
        #: an int8 model's provenance and check (None: float32)
        self.int8: dict[str, Any] | None = (
            json.loads(props[INT8_KEY]) if INT8_KEY in props else None
        )
        self.names = [i.name for i in self.session.get_inputs()]
        shape = self.session.get_inputs()[0].shape
        self.window = int(shape[-1])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.threads = options.intra_op_num_threads

    @property
    def precision(self) -> str:
        """``int8`` for a quantised model, else ``fp32``."""
        return "int8" if self.int8 is not None else "fp32"

    def describe(self) -> str:
        batch = "dynamic batch" if self.fixed_batch is None else f"batch {self.fixed_batch}"
        if self.int8 is not None:
            check = self.int8.get("check", {})
            precision = (
                f"int8 ({100 * float(check.get('equal', 0.0)):.2f} % of pixels equal to float32 "
                f"on {check.get('windows')} check windows"
            )
            if check.get("miou_change") is not None:
                precision += f", mIoU {float(check['miou_change']):+.2f} points"
            precision += ")"
        else:
            precision = "fp32"
        return (
            f"ONNX Runtime {_ort().__version__} CPU {precision}, {self.threads} thread(s), "
            f"{self.window} px windows, {batch}"
        )

    def _feeds(self, rgb: Tensor, x: Tensor | None) -> list[dict[str, np.ndarray]]:
        def array(t: Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).contiguous().numpy()

        if self.names != ["rgb"] and x is None:
            raise PredictionError(
                f"ONNX model {self.path} needs the X input ({self.meta.x_bands}): add --x"
            )
        if self.names == ["rgb_x"]:
            arrays = [array(torch.cat([rgb.float(), x.float()], dim=1))]  # type: ignore[union-attr]
        elif self.names == ["rgb", "x"]:
            arrays = [array(rgb), array(x)]  # type: ignore[arg-type]
        else:
            arrays = [array(rgb)]
        if self.fixed_batch is None:
            return [dict(zip(self.names, arrays))]
        step = self.fixed_batch
        return [
            {n: a[i : i + step] for n, a in zip(self.names, arrays)}
            for i in range(0, len(arrays[0]), step)
        ]

    def forward(self, rgb: Tensor, x: Tensor | None = None) -> Tensor:
        """Logits (B, K, N, N) float32 on ``rgb``'s device."""
        size = tuple(rgb.shape[-2:])
        if size != (self.window, self.window):
            raise PredictionError(
                f"ONNX model {self.path} was exported for windows of {self.window} x "
                f"{self.window} px, got {size[0]} x {size[1]}: predict with --window "
                f"{self.window} and no multi-scale test-time augmentation, or export again "
                f"with --window {size[-1]}"
            )
        outs = [self.session.run(["logits"], feed)[0] for feed in self._feeds(rgb, x)]
        logits = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return torch.from_numpy(logits).to(rgb.device)


def onnx_options(options: Any, source: str | Path, model: OnnxModel | None = None) -> Any:
    """Prediction options (a :class:`~rsfusion.inference.predict.PredictOptions`) for an ONNX
    model: ONNX Runtime runs it on the CPU in its own precision (float32, or int8 for a
    quantised ``model``), so ``device`` and ``precision`` become ``cpu`` and ``fp32`` (the
    runner adds no autocast); asking for another is refused.

    Raises:
        PredictionError: an explicit GPU device, bf16 / fp16 precision, int8 for a float32
            ``model`` or fp32 for an int8 one.
    """
    own = model.precision if model is not None else None
    allowed = ("auto", own) if own is not None else ("auto", "fp32", "int8")
    if options.precision not in allowed:
        kind = "int8" if own == "int8" else "float32"
        fix = (
            f"quantise it first: python scripts/quantize.py --ckpt {source}"
            if options.precision == "int8"
            else "predict from the checkpoint"
        )
        raise PredictionError(
            f"--precision {options.precision}: {source} is an ONNX model, run by ONNX Runtime in "
            f"{kind}; leave --precision out, or {fix}"
        )
    if options.device not in ("auto", "cpu"):
        raise PredictionError(
            f"--device {options.device}: {source} is an ONNX model, run by ONNX Runtime on the "
            "CPU; leave --device out, or predict from the checkpoint on the GPU"
        )
    return dataclasses.replace(options, device="cpu", precision="fp32")


def load_onnx_predictor(
    path: str | Path,
    dataset: str | None = None,
    modality: str | None = None,
    threads: int | None = None,
) -> tuple[OnnxModel, CheckpointMeta]:
    """:func:`~rsfusion.inference.predict.load_predictor` for an exported ``.onnx`` file.

    The file is one dataset's model with its X modality fixed at export: ``dataset`` and
    ``modality`` may only repeat them.

    Raises:
        UnknownNameError: another dataset or modality than the export's.
    """
    model = OnnxModel(path, threads)
    meta, facts = model.meta, model.export
    known = {meta.card, facts.get("dataset"), meta.get("source_dataset")} - {None}
    if dataset is not None and dataset not in known:
        raise UnknownNameError(
            f"--dataset {dataset}: ONNX model {path} was exported for '{meta.card}'; drop "
            "--dataset, or export the checkpoint again with --dataset " + dataset
        )
    fixed = facts.get("modality") or meta.x_modality
    if modality is not None and modality != fixed:
        raise UnknownNameError(
            f"--modality {modality}: ONNX model {path} was exported with X modality '{fixed}'; "
            f"drop --modality, or export the checkpoint again with --modality {modality}"
        )
    return model, meta
