"""int8 on this CPU: torch fp32, torch bf16 (the default path), ONNX Runtime fp32 and int8.

Sections (each printed as a table, headed by the command line that produced it):

* **model only**: the same pre-read, normalised windows through each path, in rounds that run
  the paths in turn (a slow spell of a shared machine weighs on all alike); ms per batch, best,
  median and worst over the rounds (the best is the least disturbed by other load: the speeds
  and ratios use it), MPix/s of window pixels, and the share of pixels whose class equals
  torch fp32's;
* **end to end** (``--e2e-sizes``): ``predict_pair`` (reader threads, blending, GeoTIFF writing)
  on a synthetic demo scene of each size, each path in a fresh process, ``--e2e-repeats`` runs
  in turn: seconds (best, median, worst), MPix/s and peak resident memory, and the class maps
  against torch fp32's;
* **test tiles** (``--tiles``): each path predicts the checkpoint's test tiles as predict.py
  does; equal pixels against torch fp32 and mIoU (the config's evaluation labels).

torch fp32 and bf16 run through the prediction runner exactly as predict.py does (BatchNorm
folding, and for bf16 autocast with channels_last); ONNX Runtime runs the model exported by
``scripts/export.py`` and the int8 model of ``scripts/quantize.py`` (cached beside the
checkpoint), both with ``--threads`` intra-op threads.

``--random early_fusion`` (or another registered model name) times a randomly initialised
model at ``--window`` instead of a checkpoint: calibration is then on random windows, so its
int8 figures say nothing about accuracy. Small sizes run in seconds (the smoke test):

    python benchmarks/int8_bench.py --random early_fusion --window 32 --batch 2 --repeats 2

The figures for the README:

    python benchmarks/int8_bench.py --ckpt runs/demo_mobanet/checkpoints/last.ckpt --tiles \\
        --e2e-sizes 2048 8192
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the sibling's helpers
from predict_bench import rounds  # noqa: E402

PATHS = ("torch fp32", "torch bf16", "ORT fp32", "ORT int8")


def cpu_name() -> str:
    """The CPU model and its bf16 / int8 dot-product units."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines()
         if line.startswith("model name")), "cpu",
    )  # fmt: skip
    units = [u for u in ("amx_int8", "amx_bf16", "avx512_vnni", "avx512_bf16") if u in info]
    return f"{model} ({', '.join(units) or 'no VNNI / bf16 units'})"


# ------------------------------------------------------------------------------ the models
def random_model(name: str, window: int) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised registered model (RGB 3 bands + X 1 band, 6 classes) and
    checkpoint metadata for it."""
    from rsfusion.models import ModelSpec, build_model
    from rsfusion.models.checkpoint import CheckpointMeta

    x = 0 if name == "rgb_only" else 1
    spec = ModelSpec(name, 6, 3, x, seed=0)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    meta = CheckpointMeta.from_dict({
        "card": "vaihingen", "rgb_modality": "rgb", "rgb_bands": ["red", "green", "blue"],
        "x_modality": "dsm" if x else None, "x_bands": ["elevation"] * x,
        "rgb_norm": {"mean": [120.0, 81.0, 82.5], "std": [55.0, 39.0, 37.5]},
        "x_norm": {"mode": "raster_minmax"}, "classes": [f"c{i}" for i in range(6)],
        "palette": [[i, i, i] for i in range(1, 7)], "ignore_index": 255, "window": window,
        "model": dataclasses.asdict(spec), "config": {"seed": 0},
    })  # fmt: skip
    return model, meta


def onnx_models(
    args: argparse.Namespace, work: Path, model: torch.nn.Module, meta: Any, windows: Any
) -> tuple[Path, Path, str]:
    """The float32 export and the int8 model (the checkpoint's cached one, or one made now),
    and how the int8 model was calibrated."""
    from rsfusion.deploy.onnx import export_onnx
    from rsfusion.deploy.quantize import QuantSettings, quantize, quantize_onnx

    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        export_onnx(model, meta, fp32, window=args.window)
    if args.int8:
        return fp32, Path(args.int8), f"given: {args.int8}"
    if args.ckpt:
        result = quantize(
            args.ckpt, window=args.window, settings=QuantSettings(threshold=0.0), reuse_any=True
        )
        check = result.agreement.describe()
        return fp32, result.path, f"{result.path.name} (calibrated on training tiles; {check})"
    int8 = work / "random.int8.onnx"
    half = max(1, len(windows) // 2)
    from rsfusion.deploy.calibration import Windows

    cal = Windows(windows.rgb[:half], None if windows.x is None else windows.x[:half])
    chk = Windows(windows.rgb[half:], None if windows.x is None else windows.x[half:])
    quantize_onnx(fp32, int8, cal, chk, QuantSettings(threshold=0.0), {"note": "random"})
    return fp32, int8, "random windows (speed only: random weights, random calibration)"


def runners(
    args: argparse.Namespace, load: Callable[[], torch.nn.Module], fp32: Path, int8: Path
) -> dict[str, Any]:
    """A prediction runner per path (a fresh torch model each: folding changes it in place)."""
    from rsfusion.deploy.onnx import OnnxModel
    from rsfusion.inference.runner import ModelRunner

    return {
        "torch fp32": ModelRunner(load(), device="cpu", precision="fp32"),
        "torch bf16": ModelRunner(load(), device="cpu", precision="bf16"),
        "ORT fp32": ModelRunner(OnnxModel(fp32, args.threads), device="cpu", precision="fp32"),
        "ORT int8": ModelRunner(OnnxModel(int8, args.threads), device="cpu", precision="fp32"),
    }


# ------------------------------------------------------------------------------ sections
def model_only(args: argparse.Namespace, runs: dict[str, Any], windows: Any) -> list[str]:
    batches = [
        (windows.rgb[i : i + args.batch], None if windows.x is None else
         windows.x[i : i + args.batch])
        for i in range(0, len(windows), args.batch)
    ]  # fmt: skip
    batches = [b for b in batches if len(b[0]) == args.batch] or batches[:1]
    classes = {}
    for name, runner in runs.items():  # warm-up: kernel choice, BatchNorm folding, allocations
        classes[name] = np.concatenate([runner(r, x).argmax(1) for r, x in batches])

    def go(runner: Any) -> Callable[[], None]:
        return lambda: [runner(r, x) for r, x in batches]

    times = rounds([go(r) for r in runs.values()], args.repeats)
    mpix = args.batch * args.window**2 / 1e6
    lines = ["| path | ms / batch: best | median | worst | MPix/s (best) | vs torch bf16 (best) | "
             "pixels equal to torch fp32 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    per_path = {name: [t / len(batches) for t in spent] for name, spent in zip(runs, times)}
    bf16 = min(per_path["torch bf16"])
    for name, per in per_path.items():
        equal = float((classes[name] == classes["torch fp32"]).mean())
        lines.append(
            f"| {name} | {1000 * min(per):.1f} | {1000 * statistics.median(per):.1f} | "
            f"{1000 * max(per):.1f} | {mpix / min(per):.3f} | {bf16 / min(per):.2f}x | "
            f"{100 * equal:.2f} % |"
        )
    return lines


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    parent that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> int:
    """One end-to-end prediction in this process (``--child PATH``): JSON on stdout."""
    from rsfusion.allocator import keep_freed_memory
    from rsfusion.deploy.onnx import OnnxModel, onnx_options
    from rsfusion.inference.predict import PredictOptions, load_predictor, predict_pair

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    options = PredictOptions(batch_size=args.batch, window=args.window, readers=1)
    if args.child.startswith("ORT"):
        model: Any = OnnxModel(args.child_model, args.threads)
        meta = model.meta
        options = onnx_options(options, args.child_model, model)
    else:
        model, meta = load_predictor(args.ckpt)
        options = dataclasses.replace(options, precision=args.child.split()[-1], device="cpu")
    start = time.perf_counter()
    predict_pair(model, meta, args.child_rgb, args.child_x, args.child_out, options)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib()}))
    return 0


def end_to_end(
    args: argparse.Namespace, work: Path, fp32: Path, int8: Path, size: int
) -> list[str]:
    import rasterio

    from rsfusion.data.demo import make_demo_scene

    scene = make_demo_scene(work / f"scene{size}", areas=[1], size=size, seed=3)
    rgb = scene / "top" / "top_mosaic_09cm_area1.tif"
    dsm = scene / "dsm" / "dsm_09cm_matching_area1.tif"
    models = {"ORT fp32": fp32, "ORT int8": int8}
    paths = [p for p in PATHS if p in args.e2e_paths]
    seconds: dict[str, list[float]] = {p: [] for p in paths}
    peak: dict[str, float] = {}
    for _ in range(args.e2e_repeats):
        for name in paths:
            out = work / f"e2e{size}" / name.replace(" ", "_")
            cmd = [
                sys.executable, __file__, "--child", name, "--ckpt", str(args.ckpt),
                "--child-model", str(models.get(name, "")), "--child-rgb", str(rgb),
                "--child-x", str(dsm), "--child-out", str(out), "--window", str(args.window),
                "--batch", str(args.batch), "--threads", str(args.threads),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name} end to end failed:\n{proc.stderr[-2000:]}")
            facts = json.loads(proc.stdout.strip().splitlines()[-1])
            seconds[name].append(facts["seconds"])
            peak[name] = max(peak.get(name, 0.0), facts["peak_rss_mib"])
    maps = {}
    for name in paths:
        path = work / f"e2e{size}" / name.replace(" ", "_") / f"{rgb.stem}_classes.tif"
        with rasterio.open(path) as src:
            maps[name] = src.read(1)
    mpix = size * size / 1e6
    ref = "torch fp32" if "torch fp32" in maps else paths[0]
    lines = [f"| path | s: best of {args.e2e_repeats} | median | worst | MPix/s (best) | "
             f"vs torch bf16 (best) | peak RSS MiB | pixels equal to {ref} |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    bf16 = min(seconds.get("torch bf16") or [float("nan")])
    for name in paths:
        best = min(seconds[name])
        equal = float((maps[name] == maps[ref]).mean())
        lines.append(
            f"| {name} | {best:.1f} | {statistics.median(seconds[name]):.1f} | "
            f"{max(seconds[name]):.1f} | {mpix / best:.3f} | {bf16 / best:.2f}x | "
            f"{peak[name]:.0f} | {100 * equal:.2f} % |"
        )
    return lines


def tile_accuracy(
    args: argparse.Namespace, runs: dict[str, Any], meta: Any, work: Path
) -> list[str]:
    """Every path on the checkpoint's test tiles, predicted as predict.py does."""
    import rasterio

    from rsfusion.catalog import load_card
    from rsfusion.deploy.calibration import config_pairs
    from rsfusion.inference.predict import PredictOptions, predict_pair
    from rsfusion.training.metrics import confusion_from_arrays, scores_from_confusion

    data = meta.config["data"]
    test = dataclasses.replace(
        meta, config={**meta.config, "data": {**data, "train_tiles": data["test_tiles"]}}
    )
    tiles, _, facts = config_pairs(test)
    k, ignore = len(meta.classes), int(meta.ignore_index)
    classes = list(load_card(meta.card).metric_classes)
    maps: dict[str, list[np.ndarray]] = {}
    cms: dict[str, torch.Tensor] = {}
    targets = []
    for tile in tiles:
        with rasterio.open(tile.label) as src:
            raw = src.read()
        if raw.shape[0] == 1:
            targets.append(raw[0].astype(np.int64))
        else:
            from rsfusion.data.labels import PaletteDecoder

            decoded = PaletteDecoder(meta.palette, ignore)(torch.from_numpy(raw), tile.label)
            targets.append(decoded.numpy())
    for name, runner in runs.items():
        options = PredictOptions(window=args.window, batch_size=args.batch)
        out = work / "tiles" / name.replace(" ", "_")
        maps[name] = []
        cms[name] = torch.zeros(k, k, dtype=torch.long)
        for tile, target in zip(tiles, targets):
            stem = tile.name.replace(" ", "_")
            written = predict_pair(runner, meta, tile.rgb, tile.x, out, options, stem=stem)
            with rasterio.open(written["classes"]) as src:
                pred = src.read(1).astype(np.int64)
            maps[name].append(pred)
            cms[name] += confusion_from_arrays(pred, target, k, ignore)
    lines = [f"test tiles {facts['tiles']} ({facts['labels']} labels)",
             "| path | pixels equal to torch fp32 | mIoU | change vs torch fp32 |",
             "|---|---|---|---|"]  # fmt: skip
    base = float(scores_from_confusion(cms["torch fp32"], classes)["mIoU"])
    for name in runs:
        equal = np.mean([(a == b).mean() for a, b in zip(maps[name], maps["torch fp32"])])
        miou = float(scores_from_confusion(cms[name], classes)["mIoU"])
        lines.append(
            f"| {name} | {100 * equal:.2f} % | {100 * miou:.2f} | {100 * (miou - base):+.2f} |"
        )
    return lines


# ------------------------------------------------------------------------------ main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint written by train.py")
    source.add_argument("--random", metavar="MODEL", help="a randomly initialised model instead")
    p.add_argument("--int8", help="an int8 model to time (default: the checkpoint's, cached)")
    p.add_argument("--window", type=int, help="window (default: the checkpoint's, or 256)")
    p.add_argument("--batch", type=int, default=8, help="windows per batch (default 8)")
    p.add_argument("--windows", type=int, default=32, help="windows timed per round (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    p.add_argument("--e2e-sizes", type=int, nargs="*", default=[], help="end-to-end raster sides")
    p.add_argument("--e2e-repeats", type=int, default=3, help="end-to-end runs per path")
    p.add_argument(
        "--e2e-paths", nargs="+", choices=PATHS, default=list(PATHS),
        help="the paths run end to end (default: all; torch fp32 comes first when given)",
    )  # fmt: skip
    p.add_argument("--tiles", action="store_true", help="accuracy on the checkpoint's test tiles")
    p.add_argument("--work", help="folder for rasters and models (default: a temporary one)")
    for hidden in ("--child", "--child-model", "--child-rgb", "--child-x", "--child-out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def windows_for(args: argparse.Namespace, meta: Any, work: Path) -> Any:
    """``--windows`` normalised windows: of a synthetic demo scene for a checkpoint (what the
    demo models know), random for a random model."""
    from rsfusion.deploy.calibration import CalibPair, Windows, plan_windows, read_windows_of

    if args.random:
        gen = np.random.default_rng(0)
        n, w = args.windows, args.window
        rgb = gen.standard_normal((n, len(meta.rgb_bands), w, w), dtype=np.float32)
        x = gen.random((n, len(meta.x_bands), w, w), dtype=np.float32) if meta.x_bands else None
        return Windows(rgb, x)
    from rsfusion.data.demo import make_demo_scene

    side = args.window * max(2, int(np.ceil(np.sqrt(args.windows))))
    scene = make_demo_scene(work / "timing_scene", areas=[1], size=side, seed=3)
    pair = CalibPair(
        "scene", str(scene / "top" / "top_mosaic_09cm_area1.tif"),
        str(scene / "dsm" / "dsm_09cm_matching_area1.tif") if meta.x_bands else None,
    )  # fmt: skip
    plan = plan_windows([pair], args.window, 0)[: args.windows]
    return read_windows_of(meta, [pair], plan, args.window, labels=False)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        return child(args)
    import logging

    logging.getLogger("rsfusion").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="rsfusion_int8_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.random:
        args.window = args.window or 256

        def load() -> torch.nn.Module:
            return random_model(args.random, args.window)[0]

        meta = random_model(args.random, args.window)[1]
    else:
        from rsfusion.inference.predict import load_predictor

        def load() -> torch.nn.Module:
            return load_predictor(args.ckpt)[0]

        meta = load_predictor(args.ckpt)[1]
        args.window = args.window or int(meta.window)
    windows = windows_for(args, meta, work)
    fp32, int8, how = onnx_models(args, work, load(), meta, windows)
    runs = runners(args, load, fp32, int8)
    import onnxruntime

    print(f"command: python benchmarks/int8_bench.py {' '.join(argv or sys.argv[1:])}")
    print(
        f"{cpu_name()}; {args.threads} threads; torch {torch.__version__}, ONNX Runtime "
        f"{onnxruntime.__version__}; model {meta.spec.name} ({meta.spec.backbone}); window "
        f"{args.window}, batch {args.batch}, {len(windows)} windows x {args.repeats} rounds; "
        f"int8: {how}"
    )
    print("\nmodel only\n" + "\n".join(model_only(args, runs, windows)))
    if args.tiles:
        if args.random:
            raise SystemExit("--tiles needs --ckpt")
        print("\n" + "\n".join(tile_accuracy(args, runs, meta, work)))
    for size in args.e2e_sizes:
        if args.random:
            raise SystemExit("--e2e-sizes needs --ckpt")
        print(f"\nend to end, {size}^2 demo scene, predict_pair, fresh process per run")
        print("\n".join(end_to_end(args, work, fp32, int8, size)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    raise SystemExit(main())
