"""PyTorch's own x86 int8 path (PT2E + Inductor) against ONNX Runtime int8, model only.

The alternative to ONNX Runtime that the int8 work was asked to measure: the checkpoint's model
is captured with ``torch.export``, quantised by torchao's PT2E flow with the X86 Inductor
quantiser (int8 weights per output channel, uint8 activations, static ranges), calibrated on
the same windows of its training tiles as ``scripts/quantize.py`` uses, then compiled by
Inductor with freezing (the path that turns the quantised graph into oneDNN int8 kernels).
It is timed on the same windows as torch bf16 (the default prediction path) and the cached
ONNX Runtime int8 model, in rounds that run the paths in turn; pixels equal to torch fp32 are
counted on the check windows.

Needs torchao, which rsfusion does not depend on (``pip install torchao`` into the
environment, or ``--torchao-path`` to a folder it was installed into with ``pip install
--target``), a C++ compiler for Inductor, and the ONNX extra. Example:

    python benchmarks/int8_pt2e.py --ckpt runs/demo_mobanet/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_bench import cpu_name, rounds  # noqa: E402  (the sibling benchmark's helpers)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--batch", type=int, default=8, help="windows per batch (default 8)")
    p.add_argument("--calib-windows", type=int, default=64, help="calibration windows")
    p.add_argument("--check-windows", type=int, default=32, help="windows timed and checked")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--torchao-path", help="a folder torchao was installed into (pip --target)")
    return p.parse_args(argv)


def pt2e_int8(model: torch.nn.Module, example: tuple, calib: list[tuple]) -> torch.nn.Module:
    """The model quantised by PT2E (X86 Inductor quantiser) and compiled by Inductor."""
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    graph = torch.export.export(model, example).module()  # a fixed batch, as ONNX's int8 model
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for inputs in calib:
            prepared(*inputs)
    converted = convert_pt2e(prepared)
    inductor_config.freezing = True
    return torch.compile(converted)


def _torchao_version() -> str:
    try:
        import torchao

        return str(torchao.__version__)
    except ImportError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.torchao_path:
        sys.path.insert(0, args.torchao_path)
    import logging

    logging.getLogger("rsfusion").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    from rsfusion.deploy.calibration import config_pairs, sample_windows
    from rsfusion.deploy.onnx import OnnxModel
    from rsfusion.deploy.quantize import QuantSettings, quantize
    from rsfusion.inference.predict import load_predictor
    from rsfusion.inference.runner import ModelRunner

    model, meta = load_predictor(args.ckpt)
    window = int(meta.window)
    calib_pairs, check_pairs, _ = config_pairs(meta)
    cal, held, _ = sample_windows(
        meta, calib_pairs, check_pairs, window, args.calib_windows, args.check_windows
    )

    def tensors(w, i: int, j: int) -> tuple:
        x = None if w.x is None else torch.from_numpy(w.x[i:j])
        return (torch.from_numpy(w.rgb[i:j]), x)

    def arrays(batch: tuple) -> tuple:
        return tuple(None if t is None else t.numpy() for t in batch)

    calib = [tensors(cal, i, i + args.batch) for i in range(0, len(cal), args.batch)]
    calib = [b for b in calib if len(b[0]) == args.batch]
    batches = [tensors(held, i, i + args.batch) for i in range(0, len(held), args.batch)]
    batches = [b for b in batches if len(b[0]) == args.batch]

    start = time.perf_counter()
    ort = quantize(args.ckpt, settings=QuantSettings(threshold=0.0), reuse_any=True)
    ort_s = time.perf_counter() - start
    fp32 = ModelRunner(load_predictor(args.ckpt)[0], device="cpu", precision="fp32")
    bf16 = ModelRunner(load_predictor(args.ckpt)[0], device="cpu", precision="bf16")
    ort_int8 = ModelRunner(OnnxModel(ort.path, args.threads), device="cpu", precision="fp32")
    base = load_predictor(args.ckpt)[0].eval()
    start = time.perf_counter()
    failure = None
    try:
        pt2e = pt2e_int8(base, batches[0], calib)
        with torch.no_grad():
            pt2e(*batches[0])  # Inductor compiles on the first call
    except Exception as err:  # the measured outcome: printed, and the other paths still timed
        failure = f"{type(err).__name__}: {err}".splitlines()[0]
    pt2e_s = time.perf_counter() - start

    def run_pt2e(rgb: np.ndarray, x: np.ndarray | None) -> np.ndarray:
        with torch.no_grad():
            out = pt2e(torch.from_numpy(rgb), None if x is None else torch.from_numpy(x))
        return out.float().numpy()

    paths = {
        "torch fp32": fp32,
        "torch bf16 (default)": bf16,
        "ORT int8": ort_int8,
    }
    if failure is None:
        paths["PT2E int8 (Inductor)"] = run_pt2e
    batches = [arrays(b) for b in batches]
    classes = {
        name: np.concatenate([fn(r, x).argmax(1) for r, x in batches]) for name, fn in paths.items()
    }
    times = rounds(
        [lambda fn=fn: [fn(r, x) for r, x in batches] for fn in paths.values()], args.repeats
    )
    mpix = args.batch * window**2 / 1e6
    print(f"command: python benchmarks/int8_pt2e.py {' '.join(argv or sys.argv[1:])}")
    print(
        f"{cpu_name()}; {args.threads} threads; torch {torch.__version__}; model "
        f"{meta.spec.name} ({meta.spec.backbone}); window {window}, batch {args.batch}, "
        f"{len(batches)} batches x {args.repeats} rounds; ORT int8 quantised in {ort_s:.1f} s "
        f"(or reused); PT2E (torchao {_torchao_version()}) "
        + (f"prepared, calibrated and compiled in {pt2e_s:.1f} s" if failure is None else
           f"FAILED after {pt2e_s:.1f} s: {failure}")
    )  # fmt: skip
    print("| path | ms / batch: best | median | MPix/s (best) | vs torch bf16 | pixels equal "
          "to torch fp32 |\n|---|---|---|---|---|---|")  # fmt: skip
    bf16_best = min(times[1]) / len(batches)
    for name, spent in zip(paths, times):
        per = [t / len(batches) for t in spent]
        equal = float((classes[name] == classes["torch fp32"]).mean())
        print(
            f"| {name} | {1000 * min(per):.1f} | {1000 * statistics.median(per):.1f} | "
            f"{mpix / min(per):.3f} | {bf16_best / min(per):.2f}x | {100 * equal:.2f} % |"
        )
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
