"""ONNX Runtime's static quantisation of a float32 ONNX graph (QDQ format), and the nodes kept
in float32: the plumbing under :mod:`rsfusion.deploy.quantize`.

The graph is pre-processed first (shape inference, BatchNorm folded into convolutions), then
quantised with ONNX Runtime's ``quantize_static``: int8 weights (per output channel unless asked
otherwise), uint8 activations whose ranges come from the calibration windows, fed one window at
a time. Nodes are kept in float32 by name or shell-style pattern (:func:`matching_nodes`), or as
the layers next to the inputs and the logits (:func:`first_last_nodes`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rsfusion.deploy.onnx import _onnx
from rsfusion.errors import ConfigError

if TYPE_CHECKING:
    from rsfusion.deploy.calibration import Windows
    from rsfusion.deploy.quantize import QuantSettings

__all__ = [
    "COMPUTE_OPS",
    "DEFAULT_OPS",
    "METHODS",
    "CalibrationReader",
    "feeds",
    "first_last_nodes",
    "matching_nodes",
    "quantize_graph",
]

#: ONNX Runtime's calibration methods by the names the command line uses
METHODS = ("minmax", "percentile", "entropy")
#: the operators quantised by default: where the int8 kernels are, and the ReLU / ReLU6 (Clip)
#: after them, whose ranges the convolutions' outputs then take (on the demo MoBaNet-Lite0:
#: 98.93 -> 99.61 % of check pixels equal to float32); the rest stays float32
DEFAULT_OPS = ("Conv", "MatMul", "Gemm", "Relu", "Clip")
#: the operators that compute (the layers :func:`first_last_nodes` looks for)
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


def first_last_nodes(model: Any, ops: Sequence[str] = COMPUTE_OPS) -> list[str]:
    """Names of the first node of type ``ops`` reached from each graph input, and of the last
    one(s) before each output: the layers that see raw inputs and give the logits.

    ``model`` is an ``onnx.ModelProto``.
    """
    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    producer: dict[str, Any] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    found: list[str] = []

    def walk(starts: list[Any], forward: bool) -> None:
        seen: set[str] = set()
        queue = list(starts)
        while queue:
            node = queue.pop(0)
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ops:
                if node.name not in found:
                    found.append(node.name)
                continue
            names = node.output if forward else node.input
            for name in names:
                queue.extend(consumers.get(name, []) if forward else
                             [producer[name]] if name in producer else [])  # fmt: skip

    for inp in graph.input:
        walk(list(consumers.get(inp.name, [])), forward=True)
    for out in graph.output:
        walk([producer[out.name]] if out.name in producer else [], forward=False)
    return found


def matching_nodes(model: Any, patterns: Sequence[str]) -> list[str]:
    """Names of the nodes of ``model`` (an ``onnx.ModelProto``) that ``patterns`` name, exactly
    or as shell-style patterns (``/model/blocks.0/*``), in graph order.

    Raises:
        ConfigError: a pattern that names no node.
    """
    import fnmatch

    names = [n.name for n in model.graph.node]
    found: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(first_last_nodes(model)[:3])
            raise ConfigError(
                f"--exclude {pattern}: names no node of the model (node names are module paths "
                f"such as {sample}; patterns like '/model/head/*' name several)"
            )
        found += [n for n in hits if n not in found]
    return found


class CalibrationReader:
    """ONNX Runtime's calibration data reader: one window per call, as the graph's inputs."""

    def __init__(self, names: list[str], windows: Windows) -> None:
        self.feeds = iter(feeds(names, windows, batch=1))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.feeds

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self.feeds)


def feeds(names: list[str], windows: Windows, batch: int) -> Iterator[dict[str, np.ndarray]]:
    if names == ["rgb_x"]:
        assert windows.x is not None
        arrays = [np.concatenate([windows.rgb, windows.x], axis=1)]
    elif names == ["rgb", "x"]:
        assert windows.x is not None
        arrays = [windows.rgb, windows.x]
    else:
        arrays = [windows.rgb]
    for i in range(0, len(windows), batch):
        yield {n: np.ascontiguousarray(a[i : i + batch], np.float32) for n, a in zip(names, arrays)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantisation tools log through the root logger (pre-processing advice,
    per-tensor notes) and print histogram progress: kept off the user's terminal."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    saved, sys.stdout = sys.stdout, io.StringIO()
    try:
        yield
    finally:
        sys.stdout = saved
        root.setLevel(level)


def quantize_graph(
    fp32: Path, out: Path, names: list[str], calib: Windows, settings: QuantSettings, tmp: Path
) -> list[str]:
    """ONNX Runtime's static quantisation of ``fp32`` into ``out``; returns the nodes kept in
    float32 by request."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    onnx = _onnx()
    fp32, pre = Path(fp32).resolve(), (tmp / "pre.onnx").resolve()
    # ONNX Runtime's symbolic shape inference saves what it inferred, when incomplete, to
    # "sym_shape_infer_temp.onnx" (+ external data) in the working folder: run it in tmp
    with _quiet(), contextlib.chdir(tmp):
        try:  # shape inference and graph fusions (BatchNorm into Conv) ahead of quantisation
            quant_pre_process(str(fp32), str(pre))
        except Exception:  # symbolic shape inference fails on some graphs: ONNX's own then
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    excluded = matching_nodes(model, settings.exclude)
    if settings.exclude_first_last:
        excluded += [n for n in first_last_nodes(model) if n not in excluded]
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[settings.method]
    # (not CalibMaxIntermediateOutputs: ONNX Runtime 1.32 drops the ranges of every full
    # chunk instead of merging them; min-max keeps two numbers per tensor and window anyway)
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    with _quiet():
        quantize_static(
            str(pre), str(out), CalibrationReader(names, calib), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(settings.ops), per_channel=settings.per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded, calibrate_method=method, extra_options=extra,
        )  # fmt: skip
    return excluded
