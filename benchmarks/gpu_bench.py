"""GPU-grade speed in one table: prediction, training loop overhead, bf16 agreement and MFU.

Rows (sizes on a GPU; ``--small``, automatic without CUDA, runs every row with tiny backbones,
128-256 px rasters and a few steps, so it finishes in minutes on a CPU):

* **predict end-to-end / model only**, U-Net-R18 on a 4096^2 raster: ``predict_pair`` (reads,
  normalisation, model, blending, GeoTIFF writing) versus the model alone on the same pre-read
  windows (goal >= 0.85).
* **ViT-L MoBaNet predict, model only vs the bare forward** on 2048^2: the prediction runner on
  the windows versus ``model(rgb, x)`` under autocast on the same windows (goal >= 0.9).
* **bf16 vs fp32 equal pixels**: class maps of the two precisions on the same windows, on the
  checkpoint given by ``--ckpt`` (else a random-init U-Net-R18, labelled so; goal >= 99.5 %).
* **training loop / bare step**, ViT-L MoBaNet batch 24: Lightning ``fit`` of the training task
  on in-memory batches (the data path left out) versus forward, loss, backward and optimiser
  step in a plain loop (goal >= 0.9).
* **MFU** of a KTB Swin-B and a MoBaNet ViT-L training step: FLOPs counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over one step, divided by the step time and the
  device's dense bf16 peak (H100, H200, A100 by name; 'n/a' elsewhere).

Models have random weights (no download). Not a test: run it by hand on a quiet machine, e.g.

    python benchmarks/gpu_bench.py            # a GPU: full sizes
    python benchmarks/gpu_bench.py --small    # any machine: tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # predict_bench, predict_memory
from predict_bench import _interleaved, cpu_name  # noqa: E402
from predict_memory import write_pair  # noqa: E402

from rsfusion.data.windows import batched, plan_windows  # noqa: E402
from rsfusion.inference.predict import (  # noqa: E402
    PredictOptions,
    device_plan,
    load_predictor,
    pair_spec,
    predict_pair,
)
from rsfusion.inference.reader import WindowReader  # noqa: E402
from rsfusion.inference.runner import ModelRunner  # noqa: E402
from rsfusion.models import ModelSpec, build_model  # noqa: E402
from rsfusion.models.checkpoint import CheckpointMeta  # noqa: E402

#: Dense bf16 tensor-core peaks (FLOP/s) by device name, most specific first.
BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
)

Row = tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size the rows use; :data:`FULL` on a GPU, :data:`SMALL` elsewhere."""

    unet_raster: int
    vit_raster: int
    window: int
    overlap: int
    predict_batch: int
    vit: str
    vit_kwargs: dict[str, Any]
    train_batch: int
    train_px: int
    train_steps: int
    swin: str
    swin_kwargs: dict[str, Any]
    ktb_batch: int
    ktb_px: int
    repeats: int


FULL = Sizes(
    unet_raster=4096, vit_raster=2048, window=256, overlap=64, predict_batch=24,
    vit="vit_large_patch14_dinov2", vit_kwargs={"proj_dim": 256, "head_channels": 64},
    train_batch=24, train_px=256, train_steps=30, swin="swin_base_patch4_window12_384",
    swin_kwargs={"image_size": 256, "dscf_bias_table": [119, 159]}, ktb_batch=4, ktb_px=256,
    repeats=3,
)  # fmt: skip
SMALL = Sizes(
    unet_raster=256, vit_raster=128, window=64, overlap=16, predict_batch=4,
    vit="vit_small_patch14_dinov2",
    vit_kwargs={"backbone_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 56},
                "proj_dim": 16, "head_channels": 8},
    train_batch=2, train_px=56, train_steps=4, swin="swin_tiny_patch4_window7_224",
    swin_kwargs={"backbone_kwargs": {"embed_dim": 16, "depths": [1, 1, 2, 1],
                                     "num_heads": [1, 2, 2, 4]},
                 "head_dim": 16, "aux_head_dim": 8, "image_size": 64},
    ktb_batch=2, ktb_px=64, repeats=2,
)  # fmt: skip


def bf16_peak(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None (CPU, an unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAKS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ---------------------------------------------------------------- checkpoints and inputs
def write_checkpoint(folder: Path, spec: ModelSpec, window: int) -> Path:
    """A random-init checkpoint of ``spec`` for an RGB (nir, red, green) + DSM raster pair."""
    spec = dataclasses.replace(spec, seed=0)  # the frozen backbone rebuilds the same on load
    model = build_model(spec).eval()
    meta = CheckpointMeta.from_dict({
        "card": "vaihingen", "rgb_modality": "rgb", "rgb_bands": ["nir", "red", "green"],
        "x_modality": "dsm", "x_bands": ["elevation"],
        "rgb_norm": {"mean": [120.0, 81.0, 82.5], "std": [55.0, 39.0, 37.5], "x_mean": None,
                     "x_std": None},
        "x_norm": {"mode": "raster_minmax", "scale": 1.0, "mean": None, "std": None},
        "classes": [f"class{i}" for i in range(spec.num_classes)],
        "palette": [[40 * i % 256, 90 * i % 256, 10 * i] for i in range(spec.num_classes)],
        "ignore_index": 255, "window": window, "model": dataclasses.asdict(spec),
        "config": {"seed": 0}, "frozen_sha256": None,
    }).with_frozen(model)  # fmt: skip
    path = folder / f"{spec.name}_{spec.backbone}.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "rsfusion": meta.to_dict()}, path)
    return path


def unet_spec() -> ModelSpec:
    return ModelSpec("early_fusion", 6, 3, 1, arch="Unet", backbone="resnet18")


def windows(ckpt: Path, rgb: Path, dsm: Path, size: int, s: Sizes) -> tuple[Any, Any, list]:
    """The predictor, its metadata and the raw windows of the raster (read once)."""
    model, meta = load_predictor(ckpt)
    spec = pair_spec(meta, rgb, dsm)
    plan = plan_windows(size, size, s.window, s.window - s.overlap)
    batches = list(batched(plan, s.predict_batch))
    read = [(r, x) for _, r, x in WindowReader(spec, batches, s.window, threads=0)]
    return model, (meta, spec), read


# ---------------------------------------------------------------- rows
def predict_rows(s: Sizes, device: torch.device, work: Path, precision: str) -> list[Row]:
    """End-to-end / model-only ratio of a U-Net-R18 on the U-Net raster: blended on the device
    (a GPU's default) and on the host (the CPU's default, and the GPU path before), and with
    the batch chosen from the GPU's free memory."""
    ckpt = write_checkpoint(work, unet_spec(), s.window)
    rgb, dsm = write_pair(work, s.unet_raster)
    model, (meta, spec), read = windows(ckpt, rgb, dsm, s.unet_raster, s)
    runner = ModelRunner(model, device=str(device), precision=precision)
    runner(*read[0], spec.norm)  # warm-up
    opts = PredictOptions(window=s.window, overlap=s.overlap, batch_size=s.predict_batch,
                          precision=precision, device=str(device))  # fmt: skip

    def model_only() -> None:  # the logits stay on the device
        for r, x in read:
            runner.run(r, x, spec.norm)
        sync(device)

    def end_to_end(where: str, batch: int | None = s.predict_batch) -> Callable[[], None]:
        options = dataclasses.replace(opts, blend_on=where, batch_size=batch)
        return lambda: predict_pair(runner, meta, rgb, dsm, work / f"e2e_{where}", options)

    timed = (model_only, end_to_end("device"), end_to_end("host"))
    t_model, t_device, t_host = _interleaved(timed, s.repeats)
    mpix = s.unet_raster**2 / 1e6
    name = f"U-Net-R18, {s.unet_raster}^2, {precision}, batch {s.predict_batch}"
    rows = [(
        f"predict e2e / model only, {name}, blended on the {where}",
        f"{t_model / t:.2f}",
        f"{mpix / t:.2f} vs {mpix / t_model:.2f} MPix/s (goal >= 0.85)",
    ) for where, t in (("device", t_device), ("host", t_host))]  # fmt: skip
    if device.type == "cuda":  # the batch a user who gives none gets
        auto_opts = dataclasses.replace(opts, batch_size=None)
        size = (s.unet_raster, s.unet_raster)
        n = len(plan_windows(*size, s.window, s.window - s.overlap))
        batch, _ = device_plan(auto_opts, runner, meta, s.window, s.overlap, size, n)
        (t_auto,) = _interleaved((end_to_end("auto", None),), s.repeats)
        rows.append((
            f"predict e2e / model only, U-Net-R18, {s.unet_raster}^2, {precision}, auto batch",
            f"{t_model / t_auto:.2f}",
            f"batch {batch} from free GPU memory: {mpix / t_auto:.2f} MPix/s",
        ))  # fmt: skip
    return rows


def vit_predict_rows(s: Sizes, device: torch.device, work: Path, precision: str) -> list[Row]:
    """MoBaNet ViT: the prediction runner versus the bare autocast forward, same windows."""
    spec = ModelSpec("mobanet", 6, 3, 1, backbone=s.vit, kwargs=s.vit_kwargs)
    ckpt = write_checkpoint(work, spec, s.window)
    rgb, dsm = write_pair(work, s.vit_raster)
    model, (_, pair), read = windows(ckpt, rgb, dsm, s.vit_raster, s)
    runner = ModelRunner(model, device=str(device), precision=precision)
    tensors = [tuple(t.to(device) for t in runner.inputs(r, x, pair.norm)) for r, x in read]
    bare_model = load_predictor(ckpt)[0].to(device).eval()
    low = precision == "bf16"

    def model_only() -> None:
        for r, x in read:
            runner(r, x, pair.norm)
        sync(device)

    def bare() -> None:
        with torch.inference_mode(), autocast(device, low):
            for r, x in tensors:
                bare_model(r, x)
        sync(device)

    model_only()
    bare()
    t_model, t_bare = _interleaved((model_only, bare), s.repeats)
    mpix = s.vit_raster**2 / 1e6
    return [(
        f"predict model only / bare forward, MoBaNet {s.vit}, {s.vit_raster}^2, {precision}",
        f"{t_bare / t_model:.2f}",
        f"{mpix / t_model:.2f} vs {mpix / t_bare:.2f} MPix/s (goal >= 0.9)",
    )]  # fmt: skip


def agreement_rows(
    s: Sizes, device: torch.device, work: Path, ckpt: str | None, bf16: bool
) -> list[Row]:
    """Share of equal class pixels, bf16 versus fp32, on the same windows, and the bf16 speed.

    For a dual-stream engine model (the ViT MoBaNet, or a ``--ckpt`` of one) once with its
    first stage in float32 (prediction's default) and once without: whether that float32
    stage is needed on this device type. Decide it on a trained checkpoint (``--ckpt``): a
    random-init model's logits are near ties, so its agreement is a floor.
    """
    if ckpt:
        models = [(Path(ckpt), ckpt, s.unet_raster)]
    else:
        vit = ModelSpec("mobanet", 6, 3, 1, backbone=s.vit, kwargs=s.vit_kwargs)
        models = [
            (write_checkpoint(work, unet_spec(), s.window), "random-init U-Net-R18", s.unet_raster),
            (write_checkpoint(work, vit, s.window), f"random-init MoBaNet {s.vit}", s.vit_raster),
        ]
    if not bf16:
        return [("bf16 vs fp32 equal pixels", "n/a", f"{label}: no bf16 on this device")
                for _, label, _ in models]  # fmt: skip
    rows = []
    for path, label, size in models:
        rgb, dsm = write_pair(work, size)
        probe, _ = load_predictor(path)
        stages = (1, 0) if getattr(probe, "has_fp32_stages", False) else (1,)
        maps, times = {}, {}
        for precision, fp32_stages in [("fp32", 0)] + [("bf16", n) for n in stages]:
            model, (_, pair), read = windows(path, rgb, dsm, size, s)
            runner = ModelRunner(model, device=str(device), precision=precision,
                                 fp32_stages=fp32_stages)  # fmt: skip
            runner(*read[0], pair.norm)  # warm-up, BatchNorms folded

            def classes(runner: ModelRunner = runner, read: list = read, pair: Any = pair) -> Any:
                out = [runner.run(r, x, pair.norm).argmax(1) for r, x in read]
                sync(device)
                return out

            (t,) = _interleaved((classes,), s.repeats)
            maps[precision, fp32_stages] = torch.cat(classes()).cpu().numpy()
            times[precision, fp32_stages] = t
        for n in stages:
            equal = float((maps["bf16", n] == maps["fp32", 0]).mean())
            speed = times["fp32", 0] / times["bf16", n]
            name = "bf16 vs fp32 equal pixels" + (f", fp32 stages {n}" if len(stages) > 1 else "")
            rows.append(
                (
                    name,
                    f"{100 * equal:.2f} %",
                    f"{label}, {size}^2; bf16 {speed:.2f}x fp32's speed (goal >= 99.5 %)",
                )
            )
    return rows


def _batch(n: int, px: int, device: torch.device, classes: int = 6) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randn(n, 3, px, px, generator=g).to(device),
        "image_x": torch.rand(n, 1, px, px, generator=g).to(device),
        "mask": torch.randint(0, classes, (n, px, px), generator=g).to(device),
    }


def _task(spec: ModelSpec) -> Any:
    from rsfusion.training.task import SegmentationTask

    torch.manual_seed(0)
    return SegmentationTask(model=spec.__dict__, optim={"name": "adamw", "lr": 1e-4},
                            ignore_index=255, metric_classes=list(range(spec.num_classes)),
                            class_names=[f"c{i}" for i in range(spec.num_classes)])  # fmt: skip


def bare_step(task: Any, device: torch.device, low: bool) -> Callable[[dict], None]:
    """One plain training step of ``task``'s model: forward, loss, backward, optimiser step."""
    from rsfusion.training.optim import build_optimizer

    task.to(device)  # module modes as built (a frozen backbone stays in eval), as in fit
    opt = build_optimizer(task.model, task.optim_cfg)

    def step(batch: dict[str, Tensor]) -> None:
        with autocast(device, low):
            out = task.model(batch["image"], batch["image_x"])
            loss = task.criterion(task.logits(out), batch["mask"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_time(step: Callable[[dict], None], batch: dict, steps: int, device: torch.device) -> float:
    """Seconds per step after three warm-up steps (best half-run of two)."""
    for _ in range(3):
        step(batch)
    sync(device)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(max(1, steps // 2)):
            step(batch)
        sync(device)
        best = min(best, (time.perf_counter() - start) / max(1, steps // 2))
    return best


def train_loop_rows(s: Sizes, device: torch.device, low: bool) -> list[Row]:
    """Lightning fit of the training task versus the bare step, same model and batch."""
    import lightning as L

    spec = ModelSpec("mobanet", 6, 3, 1, backbone=s.vit, kwargs=s.vit_kwargs)
    batch = _batch(s.train_batch, s.train_px, torch.device("cpu"))
    stamps: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            sync(device)
            stamps.append(time.perf_counter())

    loader = torch.utils.data.DataLoader([{k: v[i] for k, v in batch.items()}
                                          for i in range(s.train_batch)] * (s.train_steps + 3),
                                         batch_size=s.train_batch)  # fmt: skip
    trainer = L.Trainer(
        max_steps=s.train_steps + 3, accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1, precision="bf16-mixed" if low else "32-true", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Clock()],
    )  # fmt: skip
    trainer.fit(_task(spec), loader)
    bare = step_time(bare_step(_task(spec), device, low), _batch(s.train_batch, s.train_px,
                     device), s.train_steps, device)  # fmt: skip
    loop = (stamps[-1] - stamps[2]) / (len(stamps) - 3)  # steps 3.. (after warm-up)
    return [(
        f"training loop / bare step, MoBaNet {s.vit}, batch {s.train_batch}",
        f"{bare / loop:.2f}",
        f"{1 / loop:.2f} vs {1 / bare:.2f} it/s; in-memory batches (goal >= 0.9)",
    )]  # fmt: skip


def mfu_row(name: str, spec: ModelSpec, n: int, px: int, s: Sizes, device: torch.device,
            low: bool, compiled: bool = False) -> Row:  # fmt: skip
    """FLOPs of one training step over its time and the device's bf16 peak, and the operators
    (kernel launches on a GPU) the eager step runs; ``compiled``: the step time with the model
    compiled (``model.compile: true``; GPUs only: on a CPU it needs a C++ compiler)."""
    from dscf_bench import kernel_ops

    label = f"MFU, {name} training step, batch {n}, {px}^2" + (", compiled" if compiled else "")
    if compiled and device.type != "cuda":
        return (label, "n/a", "torch.compile rows run on GPUs")
    task = _task(spec)
    step = bare_step(task, device, low)
    batch = _batch(n, px, device)
    with FlopCounterMode(display=False) as counter:
        step(batch)
    flops = counter.get_total_flops()
    with torch.profiler.profile() as prof:
        step(batch)
    ops = kernel_ops(prof.events())
    if compiled:
        task.model.compile()
    seconds = step_time(step, batch, s.train_steps, device)
    peak = bf16_peak(device)
    achieved = flops / seconds
    value = f"{100 * achieved / peak:.1f} %" if peak else "n/a"
    return (label, value, f"{flops / 1e9:.1f} GFLOP/step, {achieved / 1e12:.3f} TFLOP/s, "
            f"{ops} operators per eager step")  # fmt: skip


def data_path_rows(s: Sizes, small: bool, work: Path) -> list[Row]:
    """train.py's data path: steps/s of a fit of the MoBaNet ViT fed by the real datamodule
    (demo scene of 4 tiles, in memory and through torchgeo) over the same fit on pre-made
    batches (:mod:`data_bench`)."""
    import data_bench

    from rsfusion.data.datamodule import auto_workers

    model = {"name": "mobanet", "backbone": s.vit, "kwargs": dict(s.vit_kwargs)}
    sizes = data_bench.Sizes(
        tile=128 if small else 2048, window=s.train_px, batch=s.train_batch,
        batches=2 if small else 20, steps=s.train_steps if small else 20,
        workers=(0,) if small else tuple(sorted({0, auto_workers()})), repeats=1, model=model,
    )  # fmt: skip
    rows = data_bench.run(sizes, work / "data_path")
    return [row for row in rows if row[0].startswith(("data path ratio", "fit on pre-made"))]


def run(small: bool, ckpt: str | None = None, work: Path | None = None) -> list[Row]:
    """Every row of the table, as (measure, value, note)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    s = SMALL if small else FULL
    low = device.type == "cuda"  # bf16 training and prediction on GPUs, fp32 on CPUs
    precision = "bf16" if low else "fp32"
    rows: list[Row] = []
    with work_folder(work) as folder:
        rows += predict_rows(s, device, folder, precision)
        rows += vit_predict_rows(s, device, folder, precision)
        rows += agreement_rows(s, device, folder, ckpt, bf16=low or small)
    rows += train_loop_rows(s, device, low)
    with work_folder(work) as folder:
        rows += data_path_rows(s, small, folder)
    ktb = ModelSpec("ktb", 6, 3, 1, backbone=s.swin, kwargs=s.swin_kwargs,
                    backbone_mode="stochastic_depth", drop_path_rate=0.3)  # fmt: skip
    rows.append(mfu_row(f"KTB {s.swin}", ktb, s.ktb_batch, s.ktb_px, s, device, low))
    rows.append(mfu_row(f"KTB {s.swin}", ktb, s.ktb_batch, s.ktb_px, s, device, low, True))
    vit = ModelSpec("mobanet", 6, 3, 1, backbone=s.vit, kwargs=s.vit_kwargs)
    rows.append(mfu_row(f"MoBaNet {s.vit}", vit, s.train_batch, s.train_px, s, device, low))
    return rows


@contextlib.contextmanager
def work_folder(work: Path | None, prefix: str = "rsfusion_gpu_bench_") -> Iterator[Path]:
    """``work`` (made if missing), or a temporary folder removed afterwards."""
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def device_line() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def format_table(rows: list[Row]) -> str:
    lines = [f"| {'measure':<70} | {'value':>9} | note |", f"|{'-' * 72}|{'-' * 11}|------|"]
    lines += [f"| {name:<70} | {value:>9} | {note} |" for name, value, note in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="tiny sizes (automatic without CUDA)")  # fmt: skip
    parser.add_argument("--ckpt", help="checkpoint for the bf16 vs fp32 row (default: random)")
    parser.add_argument("--work", type=Path, help="folder for rasters (default: a temporary one)")
    args = parser.parse_args(argv)
    small = args.small or not torch.cuda.is_available()
    start = time.perf_counter()
    rows = run(small, args.ckpt, args.work)
    print(f"\n{device_line()}; {'small' if small else 'full'} sizes, random-init models, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
