"""Where an ONNX model's CPU time goes, per operator type: ONNX Runtime's own profiler.

Used to explain the int8 figures of ``benchmarks/int8_bench.py``: each model given is run on
the same random batches with profiling on, and the node times are summed by operator type
(the int8 kernels: ``QLinearConv`` / ``ConvInteger`` / ``MatMulInteger``..., the conversions
``QuantizeLinear`` / ``DequantizeLinear``, and the operators left in float32). Example, the demo
MoBaNet's float32 export and its int8 model (written by ``scripts/export.py`` and
``scripts/quantize.py``):

    python benchmarks/int8_profile.py runs/demo_mobanet/checkpoints/last.int8.onnx model.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def profile(path: Path, batch: int, runs: int, threads: int) -> dict[str, float]:
    """Milliseconds per run of each operator type of the model at ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        gen = np.random.default_rng(0)
        feeds = {}
        for inp in session.get_inputs():
            shape = [batch if not isinstance(d, int) else d for d in inp.shape]
            feeds[inp.name] = gen.standard_normal(shape, dtype=np.float32)
        session.run(None, feeds)  # warm-up, not counted below
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    calls = 0
    for event in events:
        if event.get("cat") == "Session" and event.get("name") == "model_run":
            calls += 1
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"].get("op_name", "?")] += event["dur"] / 1000.0
    return {op: ms / max(1, calls) for op, ms in per_op.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path, help=".onnx files to profile")
    p.add_argument("--batch", type=int, default=8, help="windows per run (dynamic batch)")
    p.add_argument("--runs", type=int, default=5, help="profiled runs (after one warm-up)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--top", type=int, default=12, help="operator types listed per model")
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    print(f"command: python benchmarks/int8_profile.py {' '.join(map(str, given))}")
    for path in args.models:
        times = profile(path, args.batch, args.runs, args.threads)
        total = sum(times.values())
        print(f"\n{path.name}: {total:.1f} ms of node time per run of batch {args.batch}")
        print("| operator | ms / run | share |\n|---|---|---|")
        for op, ms in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"| {op} | {ms:.1f} | {100 * ms / total:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
