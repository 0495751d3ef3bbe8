"""Train a model from a config (a name in configs/ or a YAML path).

--set overrides config values (dotted keys, e.g. data.root=/data/vaihingen).
--resume continues a run (optimiser, schedule, epoch); --init-from starts a new
run from another run's weights, e.g. SegRGB-X's per-dataset fine-tuning from the
generalist checkpoint (the model, its classes and frozen parts must be the same;
the data may differ). --dry-run builds the model, prints its parameters, checks
the data root and exits.

Before training, a training step is measured on the device that trains, at
batch 1 (and 2 when batch 1 times data.batch_size does not clearly fit), and
extrapolated to data.batch_size; a run that would not fit in the free memory
stops before training, and before any run folder is made, with the numbers and
the data.batch_size (or trainer.accumulate_grad_batches) that fits. It costs
one or two training steps; --no-memory-check skips it.

Example:
  python scripts/train.py --cfg vaihingen_mobanet --set data.root=/data/vaihingen
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rsfusion.allocator import keep_freed_memory
from rsfusion.cli import USER_ERRORS, check_out_folder, make_folder, show_messages
from rsfusion.config import ConfigError, ExperimentConfig, load_config, save_config
from rsfusion.data.tiles import TileError, find_tiles
from rsfusion.errors import NonFiniteError
from rsfusion.models.base import ModelSpec, count_parameters
from rsfusion.models.checkpoint import CheckpointMeta, read_checkpoint

#: a checkpoint as :func:`read_checkpoint` returns it: (the saved dict, its metadata)
Loaded = tuple[dict[str, Any], CheckpointMeta]
#: what :func:`prepare` builds: (the lightning.Trainer, the datamodule, the task)
Built = tuple[Any, Any, Any]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsfusion-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cfg", required=True, help="config name in configs/ or a YAML path")
    parser.add_argument(
        "--set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set trainer.max_steps=3 data.root=/data/vaihingen",
    )
    parser.add_argument("--resume", metavar="CKPT", help="continue a run from a checkpoint")
    parser.add_argument(
        "--init-from", metavar="CKPT", help="start from a checkpoint's weights (fine-tuning)"
    )
    parser.add_argument("--dry-run", action="store_true", help="build the model, check, exit")
    parser.add_argument(
        "--no-memory-check",
        action="store_true",
        help="train without first measuring whether a training step fits in memory",
    )
    parser.add_argument("--out", metavar="DIR", help="run folder (default runs/<cfg>/<time>/)")
    return parser


def dry_run(cfg: ExperimentConfig) -> int:
    """Build the model (random init, no weights), print its parameters, check the data root."""
    from rsfusion.data.factory import make_datamodule, model_card
    from rsfusion.models.base import build_model
    from rsfusion.training.task import model_spec

    card = model_card(cfg.data)
    spec = model_spec(cfg, card)
    model = build_model(ModelSpec(**{**spec.__dict__, "weights": None}))
    print(f"config {cfg.name}: model {spec.name} ({spec.arch}/{spec.backbone}), card {card.name}")
    print(f"{'module':<40} {'total':>14} {'trainable':>14}")
    for name, child in model.named_children():
        total, trainable = count_parameters(child)
        print(f"{name:<40} {total:>14,} {trainable:>14,}")
        if name == "recipe":  # a method's parts, one level down (engine models)
            for part, module in child.named_children():
                total, trainable = count_parameters(module)
                print(f"  {part:<38} {total:>14,} {trainable:>14,}")
    total, trainable = count_parameters(model)
    print(f"params: total={total} trainable={trainable}")
    if card.kind == "joint":
        from rsfusion.data.joint import joint_sources

        for name, data, ratio in joint_sources(cfg.data):
            print(f"data {name}: card {data.card}, X {data.x}, ratio {ratio}, root {data.root}")
        return 0
    if cfg.data.root is not None:
        dm = make_datamodule(cfg.data, cfg.seed)
        if card.kind == "natural":
            print("\n".join(dm.sample_report()))
            return 0
        for split in ("train", "val", "test"):
            wanted = dm.tiles_of(split)
            found, missing = find_tiles(
                card, cfg.data.root, wanted, cfg.data.rgb, cfg.data.x, align_x=cfg.data.align_x
            )
            note = f", missing {missing}" if missing else ""
            print(f"data {split}: {len(found)} of {len(wanted)} tiles under {cfg.data.root}{note}")
            if split != "test" and not found:
                raise TileError(f"no {split} tile under {cfg.data.root}; check data.root")
    return 0


def run_folder(cfg: ExperimentConfig, out: str | None) -> Path:
    """The run's folder, checked but not yet made (:func:`check_out_folder`); DDP ranks
    started by Lightning inherit rank 0's via RSFUSION_RUN_DIR."""
    inherited = os.environ.get("RSFUSION_RUN_DIR")
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(inherited)
    if out:
        folder = Path(out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = Path.cwd() / "runs" / cfg.name / stamp
        n = 1
        while folder.exists():
            folder = Path.cwd() / "runs" / cfg.name / f"{stamp}-{n}"
            n += 1
    check_out_folder(folder, "--out" if out else "run folder")
    return folder


def check_devices(trainer: dict[str, Any]) -> None:
    """Refuse, before anything is built, a GPU accelerator on a machine without one."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator}, but torch sees no CUDA GPU on this machine: "
            "set trainer.accelerator=cpu (or auto), or run where a GPU is visible"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.accelerator=mps, but this machine has no Apple GPU: set "
            "trainer.accelerator=cpu (or auto)"
        )


def build_task(cfg: ExperimentConfig) -> tuple[Any, Any]:
    """The datamodule and the LightningModule of a config (seed first for a stable init);
    backbone weights that cannot be had are reported as training on a random backbone."""
    from rsfusion.data.factory import make_datamodule
    from rsfusion.models.backbones.factory import building_for
    from rsfusion.training.task import SegmentationTask

    dm = make_datamodule(cfg.data, cfg.seed)
    with building_for("training"):
        return dm, SegmentationTask.from_config(cfg, dm)


def prepare(cfg: ExperimentConfig, folder: Path, memory_check: bool = True) -> Built:
    """Seed, then the trainer (writing under ``folder``, not made yet), the datamodule and the
    task; with ``memory_check`` a run whose training step does not fit in memory is refused
    here (:func:`rsfusion.training.memory.check_training_memory`), before anything is written.
    DDP ranks other than 0 skip the check (rank 0 made it)."""
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    trainer = make_trainer(cfg, folder)
    dm, task = build_task(cfg)
    if memory_check and os.environ.get("LOCAL_RANK", "0") == "0":
        from rsfusion.training.memory import check_training_memory

        check_training_memory(cfg, task, dm, trainer)
    return trainer, dm, task


def init_from(task: Any, path: str, checkpoint: Loaded | None = None) -> int:
    """Load the trainable weights of checkpoint ``path`` (``checkpoint``: already read) into
    ``task``'s model (a new run: optimiser and schedule start afresh); returns how many tensors
    were loaded."""
    from rsfusion.errors import CheckpointMismatchError
    from rsfusion.models.checkpoint import check_frozen
    from rsfusion.models.engine import migrate_state_dict

    saved, old = checkpoint or read_checkpoint(path, "--init-from")
    source = f"--init-from {path}"
    new = CheckpointMeta.from_dict(task.hparams.meta, "config")
    if old.spec.name != new.spec.name or old.spec.num_classes != new.spec.num_classes:
        raise CheckpointMismatchError(
            f"{source}: a {old.spec.name} model with {old.spec.num_classes} classes, this config "
            f"builds {new.spec.name} with {new.spec.num_classes}: fine-tune with the config's model"
        )
    check_frozen(old, task.model, source)
    state = dict(saved["state_dict"])
    migrate_state_dict(task.model, state, prefix="model.")
    own = task.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state) - task.frozen_names())
    if bad or missing:
        raise CheckpointMismatchError(
            f"{source} does not fit this config's model: "
            + (f"shapes differ for {bad[:3]}" if bad else f"it lacks {missing[:3]}")
        )
    task.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return len(state)


def make_trainer(cfg: ExperimentConfig, folder: Path) -> Any:
    """The ``lightning.Trainer`` of a config, writing under ``folder`` (nothing is written
    yet); trainer settings Lightning refuses become a :class:`ConfigError`."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from rsfusion.training.checkpoints import LastCheckpoint

    ckpt_dir = folder / "checkpoints"
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-{step}",
            monitor="val/mIoU",
            mode="max",
            save_top_k=1,
        ),
        LastCheckpoint(ckpt_dir),
        LearningRateMonitor(logging_interval="step"),
    ]
    trainer_args: dict[str, Any] = {
        "default_root_dir": str(folder),
        "logger": [
            CSVLogger(str(folder), name="logs", version=""),
            TensorBoardLogger(str(folder), name="logs", version="", default_hp_metric=False),
        ],
        "callbacks": callbacks,
        "deterministic": False,
        **cfg.trainer,
    }
    try:
        return L.Trainer(**trainer_args)
    except (MisconfigurationException, ValueError, TypeError, ImportError) as err:
        # built from the trainer section alone: what Lightning refuses is a setting there
        settings = ", ".join(f"trainer.{k}={v}" for k, v in cfg.trainer.items()) or "defaults"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"Lightning refuses the trainer settings ({settings}): {reason}"
        ) from None


def train(
    cfg: ExperimentConfig,
    folder: Path,
    resume: str | None = None,
    init: str | None = None,
    checkpoint: Loaded | None = None,
    built: Built | None = None,
) -> Path:
    """Train as configured; returns the path of ``last.ckpt`` (written even mid-epoch).

    ``checkpoint``: the ``--resume`` / ``--init-from`` file, already read (else read here).
    ``built``: what :func:`prepare` returned (else prepared here, without the memory check).
    The config is written to ``folder`` once the model and data are built; a loss or weights
    turning NaN/inf stop training (:class:`NonFiniteError`) with ``last.ckpt`` left finite.
    """
    from rsfusion.models.backbones.weights import tensors_digest

    trainer, dm, task = built or prepare(cfg, folder, memory_check=False)
    meta = task.hparams.meta
    if resume:
        _, old = checkpoint or read_checkpoint(resume, "--resume")
        old.check_fits(CheckpointMeta.from_dict(meta, "config"), f"--resume {resume}")
    if init:
        print(f"initialised from {init}: {init_from(task, init, checkpoint)} tensors")
    save_config(cfg, folder / "config.yaml")
    last = folder / "checkpoints" / "last.ckpt"
    try:
        # the file was read as data above; Lightning reads it as data too (weights_only)
        trainer.fit(task, datamodule=dm, ckpt_path=resume, weights_only=True)
    except NonFiniteError as err:
        kept = (
            f"the last finite checkpoint is {last}"
            if last.is_file()
            else "no checkpoint was written"
        )
        raise NonFiniteError(f"{err}; {kept}") from None
    # parameters only: DDP ranks agree on them; BN running statistics stay rank-local
    digest = tensors_digest(dict(task.model.named_parameters()))
    # one write with its newline: the ranks share stdout, and print() may write the text and
    # the newline separately (another rank's line then lands in between)
    sys.stdout.write(f"rank {trainer.global_rank} weights sha256={digest}\n")
    sys.stdout.flush()
    return last


def first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (None: it exists)."""
    missing = None
    for candidate in (folder, *folder.absolute().parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing = candidate
    return missing


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` and its subfolders if no file was written in them (a refused run)."""
    if not folder.is_dir() or any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
        return
    for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    folder.rmdir()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    show_messages()
    keep_freed_memory()  # no page faults for every batch's tensors (rsfusion/allocator.py)
    made: Path | None = None  # the outermost folder this run made
    try:
        cfg = load_config(args.cfg, args.set)
        if args.dry_run:
            return dry_run(cfg)
        # refused before anything is built or written: options, devices, folder, checkpoint
        if args.resume and args.init_from:
            raise ConfigError("--resume and --init-from exclude each other: pick one")
        check_devices(cfg.trainer)
        folder = run_folder(cfg, args.out)
        checkpoint: Loaded | None = None
        if args.resume:  # only its metadata is needed here; Lightning reads it again
            checkpoint = ({}, read_checkpoint(args.resume, "--resume")[1])
        elif args.init_from:
            checkpoint = read_checkpoint(args.init_from, "--init-from")
        # built (and the memory measured) before the run folder exists: a refusal leaves none
        built = prepare(cfg, folder, memory_check=not args.no_memory_check)
        made = first_missing(folder)
        make_folder(folder, "--out" if args.out else "run folder")
        os.environ["RSFUSION_RUN_DIR"] = str(folder)
        print(f"run folder: {folder}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # frozen backbones stay in eval mode on purpose (Backbone.train)
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            last = train(cfg, folder, args.resume, args.init_from, checkpoint, built)
        print(f"last checkpoint: {last}")
        return 0
    except USER_ERRORS as err:
        if made is not None:
            remove_if_empty(made)  # a refused run leaves no empty run folder behind
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
