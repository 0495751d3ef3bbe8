"""The training data path: DataLoader samples/s and the data path ratio of a Lightning fit.

Rows, on a demo scene (by default demo_baseline's data: 4 training tiles of 320 px, window 128,
batch 8; ``--large``: 4 tiles of 2048 px):

* **train loader samples/s**, torchgeo path (a spatial index query, GDAL reads, a merge and a
  palette decoding per window) versus the tiles held in memory (``data.in_memory``), with 0 and
  1 workers: ``batches`` batches of ``ISPRSDataModule.train_dataloader()`` after one warm-up
  batch (same sampler, same windows), the best of ``repeats`` epochs; the setup time (the one
  full read per raster included) is in the note.
* **data path ratio** (goal >= 0.9): steps/s of a short Lightning fit of a tiny U-Net
  (:data:`TINY_BACKBONE`: a fast step, so that the data path weighs) fed by the real datamodule
  (reading, collation, transfer, the augmentation and normalisation on the device) over steps/s
  of the same fit fed batches made beforehand (already augmented and normalised, in memory;
  that fit runs first and last, the faster counts). Timed as ``gpu_bench.py`` times a
  fit, by ``on_train_batch_start`` stamps, after two warm-up steps (the median step).

On a CPU shared with other jobs, pass ``--threads 1``: torch's intra-op threads then do not wait
for each other (with 2 threads on 2 busy cores a batch's collation took 1 to 37 ms).

Not a test: run it by hand on a quiet machine, e.g.

    python benchmarks/data_bench.py            # the demo scene
    python benchmarks/data_bench.py --large    # 4 tiles of 2048 px
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_bench
from gpu_bench import device_line, format_table, sync, work_folder  # noqa: E402

from rsfusion.config import load_config  # noqa: E402
from rsfusion.data.datamodule import ISPRSDataModule  # noqa: E402
from rsfusion.data.demo import DEMO_TRAIN_AREAS, make_demo_scene  # noqa: E402

Row = tuple[str, str, str]
#: The tiny model of the fit rows: a U-Net on 3 stages of timm's MobileNetV3-small (x0.5),
#: about 0.28 M parameters, random weights.
TINY_BACKBONE = "tu-mobilenetv3_small_050"
TINY_UNET = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Scene and loader sizes."""

    tile: int = 320
    window: int = 128
    batch: int = 8
    batches: int = 20  # timed loader batches
    steps: int = 20  # timed fit steps
    workers: tuple[int, ...] = (0, 1)
    repeats: int = 3  # loader epochs, the best counts
    model: dict[str, Any] | None = None  # ModelConfig fields instead of the tiny U-Net's


def scene(work: Path, tile: int) -> Path:
    """The demo's training areas at ``tile`` px (written once per size under ``work``)."""
    root = work / f"scene_{tile}"
    if not (root / "top").is_dir():
        make_demo_scene(root, areas=DEMO_TRAIN_AREAS, size=tile)
    return root


def config(root: Path, s: Sizes, in_memory: bool, workers: int, batches: int) -> Any:
    """demo_baseline's data on ``root`` (validation on area 1) and the tiny U-Net."""
    cfg = load_config(
        "demo_baseline",
        [
            f"data.root={root}",
            "data.val_tiles=[1]",
            f"data.window={s.window}",
            f"data.batch_size={s.batch}",
            f"data.samples_per_epoch={s.batch * batches}",
            f"data.in_memory={str(in_memory).lower()}",
            f"data.num_workers={workers}",
        ],
    )
    fields = s.model or {"backbone": TINY_BACKBONE, "kwargs": dict(TINY_UNET)}
    model = dataclasses.replace(cfg.model, **fields)
    return dataclasses.replace(cfg, model=model)


def _module(cfg: Any) -> ISPRSDataModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ISPRSDataModule(cfg.data, seed=cfg.seed)


def _workers(n: int) -> str:
    return f"{n} worker{'s' * (n != 1)}"


def loader_row(root: Path, s: Sizes, in_memory: bool, workers: int) -> tuple[Row, float]:
    """Samples/s of the training loader (after one warm-up batch)."""
    dm = _module(config(root, s, in_memory, workers, s.batches + 1))
    start = time.perf_counter()
    dm.setup("fit")
    setup = time.perf_counter() - start
    loader = dm.train_dataloader()
    rate = 0.0
    for _ in range(s.repeats):
        batches = iter(loader)
        next(batches)  # warm-up: workers start, first reads
        start = time.perf_counter()
        for _ in range(s.batches):
            next(batches)
        rate = max(rate, s.batches * s.batch / (time.perf_counter() - start))
    del batches, loader
    path = "in memory" if in_memory else "torchgeo path"
    held = dm.train_dataset.store
    note = f"setup {setup:.2f} s" + (f" (reads {held.nbytes / 2**20:.1f} MiB)" if held else "")
    name = f"train loader, {path}, {_workers(workers)}"
    return (name, f"{rate:.1f}", f"samples/s; {note}"), rate


class Clock(L.Callback):
    """Time stamps of ``on_train_batch_start``."""

    def __init__(self, stamps: list[float], device: torch.device) -> None:
        self.stamps, self.device = stamps, device

    def on_train_batch_start(self, *args: Any) -> None:
        sync(self.device)
        self.stamps.append(time.perf_counter())


def _trainer(steps: int, stamps: list[float], device: torch.device) -> L.Trainer:
    return L.Trainer(
        max_steps=steps + 3, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[Clock(stamps, device)],
    )  # fmt: skip


def _task(cfg: Any, dm: ISPRSDataModule) -> Any:
    from rsfusion.training.task import SegmentationTask

    L.seed_everything(0, verbose=False)
    return SegmentationTask.from_config(cfg, dm)


def _step_time(stamps: list[float]) -> float:
    """The median step after two warm-up steps."""
    return statistics.median(b - a for a, b in zip(stamps[2:], stamps[3:]))


def fit_step(root: Path, s: Sizes, in_memory: bool, workers: int, device: torch.device) -> float:
    """Seconds per step of a fit fed by the datamodule."""
    cfg = config(root, s, in_memory, workers, s.steps + 3)
    dm = _module(cfg)
    stamps: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(s.steps, stamps, device).fit(_task(cfg, dm), datamodule=dm)
    return _step_time(stamps)


def premade_step(root: Path, s: Sizes, device: torch.device) -> float:
    """Seconds per step of the same fit fed batches made beforehand (augmented, normalised)."""
    cfg = config(root, s, True, 0, s.steps + 3)
    dm = _module(cfg)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batch = {k: v for k, v in batch.items() if k not in ("crs", "bounds")}
        batch = dm.train_aug({k: v.to(device) if torch.is_tensor(v) else v
                              for k, v in batch.items()})  # fmt: skip
        batches.append(batch)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    stamps: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(s.steps, stamps, device).fit(_task(cfg, dm), loader)
    return _step_time(stamps)


def run(s: Sizes, work: Path) -> list[Row]:
    """Every row of the table, as (measure, value, note)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = scene(work, s.tile)
    rows: list[Row] = []
    rates: dict[tuple[bool, int], float] = {}
    for workers in s.workers:
        for in_memory in (False, True):
            row, rates[in_memory, workers] = loader_row(root, s, in_memory, workers)
            rows.append(row)
        ratio = rates[True, workers] / rates[False, workers]
        name = f"train loader, in memory / torchgeo path, {_workers(workers)}"
        rows.append((name, f"{ratio:.1f}x", "samples/s ratio"))
    ideal = premade_step(root, s, device)
    steps = {}
    for workers in s.workers:
        for in_memory in (False, True):
            steps[in_memory, workers] = fit_step(root, s, in_memory, workers, device)
    ideal = min(ideal, premade_step(root, s, device))  # again after the other fits: the faster
    name = s.model["name"] + " " + s.model["backbone"] if s.model else "tiny U-Net"
    where = f"{name}, batch {s.batch}, {s.window}^2, {s.tile} px tiles"
    rows.append(("fit on pre-made batches", f"{1 / ideal:.2f}", f"it/s; {where}"))
    for (in_memory, workers), step in steps.items():
        path = "in memory" if in_memory else "torchgeo path"
        rows.append((
            f"data path ratio, {path}, {_workers(workers)}",
            f"{ideal / step:.2f}",
            f"{1 / step:.2f} vs {1 / ideal:.2f} it/s (pre-made batches)",
        ))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="4 training tiles of 2048 px")
    parser.add_argument("--tile", type=int, help="tile size in px (default 320; --large 2048)")
    parser.add_argument("--window", type=int, default=Sizes.window)
    parser.add_argument("--batch", type=int, default=Sizes.batch)
    parser.add_argument("--batches", type=int, default=Sizes.batches, help="timed loader batches")
    parser.add_argument("--steps", type=int, default=Sizes.steps, help="timed fit steps")
    parser.add_argument("--workers", default="0,1", help="worker counts, e.g. 0,1,4")
    parser.add_argument("--repeats", type=int, default=Sizes.repeats, help="loader epochs")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--work", type=Path, help="folder for the scene (default: a temporary one)")
    args = parser.parse_args(argv)
    tile = args.tile or (2048 if args.large else Sizes.tile)
    workers = tuple(int(w) for w in args.workers.split(","))
    s = Sizes(tile, args.window, args.batch, args.batches, args.steps, workers, args.repeats)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        with work_folder(args.work, "data_bench_") as work:
            rows = run(s, work)
        device = device_line()
    finally:
        torch.set_num_threads(threads)
    print(f"{datetime.date.today()}  {device}")
    print(f"command: python benchmarks/data_bench.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
