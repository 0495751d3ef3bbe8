"""Score a checkpoint on the config's test tiles or images with the papers' protocols.

The config is handled as by train.py (a name in configs/ or a YAML path; --set
overrides values).

Remote sensing (ISPRS): each full tile is predicted by sliding windows (window =
the config's data.window, 256 in the paper configs; stride 32) and the logits of
overlapping windows are summed, exactly as predict.py --blend sum does. Tiles are
scored on the eroded (*_noBoundary*) labels: OA over all classes, mF1 / mIoU over
all but clutter. A tile without eroded labels is refused with the file looked
for; --labels full scores every tile on the full labels, --labels eroded-or-full
falls back per tile, and metrics.json records the labels of every tile.

Natural images: whole images, optionally multi-scale + flip (--scales 0.5 0.75 1
1.25 1.5 1.75 --flip): the logits of every view are resized back and summed. KTB
checkpoints are scored that way by default on natural images, as KTB reports its
results (--scales 1 --no-flip for single scale); everything else defaults to
single scale, no flip.

Each input mode (both inputs, RGB only, X only: the absent input zeroed after
normalisation) gets a per-class table, a confusion-matrix figure and a JSON
report; one table summarises the modes. The --out folder receives metrics.json
(OA, mF1, mIoU, per-class F1 / IoU as fractions, per tile), reports/, prediction
overlays overlays/<stem>.png and, with --save-predictions, each test tile's
<stem>_classes.tif exactly as predict.py writes it.

Example:
  python scripts/evaluate.py --ckpt last.ckpt --cfg vaihingen_mobanet --out eval/
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rsfusion.allocator import keep_freed_memory
from rsfusion.cli import USER_ERRORS, show_messages
from rsfusion.evaluation.api import evaluate as evaluate_checkpoint
from rsfusion.evaluation.labels import LABEL_CHOICES
from rsfusion.evaluation.overlays import ERROR_COLOUR, save_overlay
from rsfusion.evaluation.protocol import MODES, EvalOptions, tta_protocol

#: the protocol, labels and overlays live in :mod:`rsfusion.evaluation`; these stay importable
#: from here for code written against this module
__all__ = ["ERROR_COLOUR", "build_parser", "evaluate", "main", "save_overlay", "tta_protocol"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsfusion-evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    parser.add_argument("--cfg", required=True, help="config name in configs/ or a YAML path")
    parser.add_argument(
        "--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="override config values as train.py does, e.g. --set data.root=/data/vaihingen",
    )  # fmt: skip
    parser.add_argument("--out", default="eval", help="output folder (default ./eval)")
    parser.add_argument(
        "--split", choices=("test", "val"), default="test",
        help="split to score (default: test); val takes the config's data.val_tiles (ISPRS; "
        "without them the split preset's test tiles) or the dataset's validation images",
    )  # fmt: skip
    parser.add_argument(
        "--dataset", nargs="+", default=None,
        help="a generalist (joint) checkpoint: score only these of its datasets (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--inputs", nargs="+", choices=tuple(MODES), default=None,
        help="input modes to score (default: both, rgb and x for RGB+X models)",
    )  # fmt: skip
    parser.add_argument("--window", type=int, help="sliding window (default: data.window)")
    parser.add_argument("--stride", type=int, default=32, help="sliding-window stride (32)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (8)")
    parser.add_argument(
        "--labels", choices=LABEL_CHOICES, default=None,
        help="ISPRS labels to score on (default: data.eval_labels, eroded); eroded-or-full uses "
        "the full labels only for tiles without eroded ones, recorded per tile",
    )  # fmt: skip
    parser.add_argument(
        "--scales", type=float, nargs="+", default=None,
        help="TTA scales (default: 1, or the method's published protocol: KTB on natural "
        "images 0.5 0.75 1 1.25 1.5 1.75)",
    )  # fmt: skip
    parser.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=None,
        help="horizontal-flip TTA (default: off, or the method's published protocol)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), default="fp32",
        help="autocast precision (default fp32: the reference numbers)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--save-predictions", action="store_true",
                        help="write each test tile's <stem>_classes.tif into --out")  # fmt: skip
    parser.add_argument("--overlays", type=int, default=8,
                        help="prediction overlay PNGs for the first N tiles (0: none)")  # fmt: skip
    return parser


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Score the checkpoint the parsed command line names
    (:func:`rsfusion.evaluation.evaluate`); returns what ``metrics.json`` holds."""
    return evaluate_checkpoint(
        args.cfg, args.ckpt, args.out, overrides=args.set, options=EvalOptions.from_namespace(args)
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    show_messages()
    keep_freed_memory()  # no page faults for every batch's tensors (rsfusion/allocator.py)
    try:
        evaluate(args)
        return 0
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
