"""``python scripts/evaluate.py --ckpt CKPT --cfg NAME [--set ...] [--out DIR]``.

Scores a checkpoint on the config's test (or validation) tiles with full-coverage windows and
the dataset's protocol (ISPRS: eroded labels, OA over all classes, mF1/mIoU without clutter),
with both inputs, RGB only and X only (the absent input zeroed after normalisation, as the
training masks do), and prints one table. DIR receives metrics.json and the per-mode reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rsfusion.cli.train import (
    USER_ERRORS,
    CheckpointMismatchError,
    build_task,
    check_fits,
    read_checkpoint,
)
from rsfusion.config import load_config

MODES = {"both": None, "rgb": "x", "x": "rgb"}  # input kept -> input zeroed
LABELS = {"both": "RGB + X", "rgb": "RGB only (X zeroed)", "x": "X only (RGB zeroed)"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsfusion-evaluate", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--cfg", required=True, help="config name in configs/ or a YAML path")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="eval", help="output folder (default ./eval)")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument(
        "--inputs", nargs="+", choices=tuple(MODES), default=None,
        help="input modes to score (default: both, rgb and x for RGB+X models)",
    )  # fmt: skip
    return parser


def load_trained(task: Any, ckpt_path: str) -> dict[str, Any]:
    """Load a (slim) checkpoint into a freshly built task; refuse one that does not fit."""
    from rsfusion.training.task import frozen_digest

    saved = read_checkpoint("--ckpt", ckpt_path)
    check_fits("--ckpt", ckpt_path, saved, task.hparams.meta)
    old = saved.get("rsfusion", {})
    digest = frozen_digest(task.model)
    if old.get("frozen_sha256") != digest:
        raise CheckpointMismatchError(
            f"--ckpt {ckpt_path} was trained on a frozen backbone with sha256 "
            f"{old.get('frozen_sha256')}, but this config builds one with {digest}: load the "
            f"same backbone weights (model.weights of the run's config.yaml: "
            f"{old.get('config', {}).get('model', {}).get('weights')})"
        )
    try:
        task.on_load_checkpoint(saved)
    except KeyError as err:
        raise CheckpointMismatchError(f"--ckpt {ckpt_path}: {err}") from err
    task.load_state_dict(saved["state_dict"], strict=False)
    return old


def format_modality_table(rows: dict[str, dict[str, Any]]) -> str:
    """One line per input mode: OA, mF1, mIoU in percent."""
    lines = [f"{'input':<22} {'OA':>7} {'mF1':>7} {'mIoU':>7}"]
    for mode, s in rows.items():
        lines.append(
            f"{LABELS[mode]:<22} {100 * float(s['OA']):7.2f} {100 * float(s['mF1']):7.2f} "
            f"{100 * float(s['mIoU']):7.2f}"
        )
    return "\n".join(lines)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import lightning as L

    from rsfusion.training.reports import scores_to_json

    cfg = load_config(args.cfg, args.set)
    L.seed_everything(cfg.seed, workers=True)
    dm, task = build_task(cfg)
    load_trained(task, args.ckpt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = args.inputs or (["both", "rgb", "x"] if cfg.data.x else ["both"])
    accelerator = cfg.trainer.get("accelerator", "auto")
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=str(out),
    )  # fmt: skip
    rows: dict[str, Any] = {}
    for mode in modes:
        task.drop = MODES[mode]
        if args.split == "test":
            trainer.test(task, datamodule=dm, verbose=False)
        else:
            trainer.validate(task, datamodule=dm, verbose=False)
        rows[mode] = task.last_scores[args.split]
    names = task.hparams.class_names
    result = {mode: scores_to_json(s, names) for mode, s in rows.items()}
    tmp = out / ".metrics.json.partial"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / "metrics.json")
    print(f"\n{args.split} tiles, checkpoint {args.ckpt}\n{format_modality_table(rows)}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    try:
        evaluate(args)
        return 0
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
