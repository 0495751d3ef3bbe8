"""Quantise a checkpoint to int8 for fast prediction on CPUs, with its accuracy cost measured.

The checkpoint (or a float32 .onnx written by export.py) is exported to ONNX and quantised by
ONNX Runtime (static quantisation: int8 weights, one scale per output channel, and uint8
activations whose ranges are calibrated on windows of the checkpoint's own training tiles, or
of the rasters given with --calib-rgb / --calib-x). The int8 model is then compared with the
float32 one on check windows not used for calibration (the validation tiles where the config
has other ones): the share of pixels that keep their class, and the mIoU change where the
windows have labels, are printed and stored in the model. Below --threshold (default 99.5 %
of pixels) nothing is written and the error says what to try.

The model is written beside the checkpoint as NAME.int8.onnx (or to --out) with its provenance:
the checkpoint's size and SHA-256, the calibration data and the check. It is reused while the
checkpoint is unchanged; predict.py --precision int8 runs it (and quantises on first use), and
--precision auto picks it on CPUs once it has passed its check.

Example:
  python scripts/quantize.py --ckpt runs/demo_mobanet/checkpoints/last.ckpt
  python scripts/predict.py --ckpt runs/demo_mobanet/checkpoints/last.ckpt --precision int8 \\
      --rgb RGB.tif --x DSM.tif --out pred/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsfusion.cli import USER_ERRORS, check_out_folder, show_messages
from rsfusion.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rsfusion-quantize", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument(
        "--ckpt", required=True, help="checkpoint written by train.py, or a float32 .onnx"
    )
    p.add_argument(
        "--out", help="the int8 model to write (default: NAME.int8.onnx beside the checkpoint)"
    )
    p.add_argument("--window", type=int, help="window size fixed in the model (default: training)")
    p.add_argument("--dataset", help="a generalist (joint) checkpoint's dataset (as predict.py)")
    p.add_argument("--modality", help="the X modality the model is told (SegRGB-X's LoRA)")
    p.add_argument("--data-root", help="the training data folder, where it moved since training")
    p.add_argument(
        "--calib-rgb", metavar="PATH",
        help="calibrate on these RGB rasters (a file or a folder) instead of the training tiles",
    )  # fmt: skip
    p.add_argument(
        "--calib-x", metavar="PATH",
        help="the X rasters of --calib-rgb (a file or a folder, paired as predict.py pairs them)",
    )  # fmt: skip
    p.add_argument(
        "--calib-windows", type=int, default=64,
        help="windows to calibrate the activation ranges on (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--check-windows", type=int, default=32,
        help="windows, not used for calibration, to compare int8 with float32 on (default 32)",
    )  # fmt: skip
    p.add_argument(
        "--threshold", type=float, default=99.5,
        help="percent of check pixels that must keep their float32 class (default 99.5)",
    )  # fmt: skip
    p.add_argument(
        "--max-miou-drop", type=float, metavar="POINTS",
        help="where the check windows have labels, refuse an mIoU drop above this many points "
        "(default: not checked)",
    )  # fmt: skip
    p.add_argument(
        "--per-tensor", action="store_true",
        help="one weight scale per tensor (default: one per output channel, more accurate)",
    )  # fmt: skip
    p.add_argument(
        "--exclude-first-last", action="store_true",
        help="keep the first layer after each input and the last before the logits in float32",
    )  # fmt: skip
    p.add_argument(
        "--exclude", nargs="+", default=[], metavar="NODE",
        help="ONNX nodes to keep in float32: names or patterns such as '/model/blocks.0/*'",
    )  # fmt: skip
    p.add_argument(
        "--method", choices=("minmax", "percentile", "entropy"), default="minmax",
        help="how activation ranges are set from the calibration windows (default minmax)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="order of the windows drawn (default 0)")
    p.add_argument(
        "--force", action="store_true", help="quantise again even when a current model is cached"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_messages()
    try:
        from rsfusion.deploy.onnx import require_onnx
        from rsfusion.deploy.quantize import QuantSettings, cache_path, quantize

        settings = QuantSettings(
            per_channel=not args.per_tensor, exclude_first_last=args.exclude_first_last,
            exclude=tuple(args.exclude), method=args.method, calib_windows=args.calib_windows,
            check_windows=args.check_windows, threshold=args.threshold / 100.0,
            max_miou_drop=args.max_miou_drop, seed=args.seed,
        )  # fmt: skip
        settings.check()
        if args.window is not None and args.window < 1:
            raise ConfigError(f"--window {args.window}: must be at least 1")
        out = Path(args.out) if args.out else cache_path(args.ckpt, args.dataset, args.modality)
        if out.suffix.lower() != ".onnx":
            raise ConfigError(f"--out {out}: give a file name ending in .onnx")
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder: give a file name ending in .onnx")
        check_out_folder(
            out.parent, "--out (its folder)" if args.out else "the checkpoint's folder"
        )
        require_onnx()
        print(f"quantising {args.ckpt} to int8 ...", file=sys.stderr)
        result = quantize(
            args.ckpt, args.out, dataset=args.dataset, modality=args.modality,
            window=args.window, data_root=args.data_root, calib_rgb=args.calib_rgb,
            calib_x=args.calib_x, settings=settings, force=args.force,
        )  # fmt: skip
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    facts = result.provenance
    cal = facts.get("calibration", {})
    where = cal.get("tiles") or cal.get("files")
    if result.reused:
        print(f"{result.path}: current int8 model of {args.ckpt} (reused; --force to redo)")
    else:
        print(f"wrote {result.path}")
    print(
        f"calibrated on {cal.get('calibration_windows')} windows of {cal.get('window')} px "
        f"({cal.get('source')}: {', '.join(map(str, where or []))}); checked on "
        f"{cal.get('check_from')}"
    )
    print(f"int8 vs float32: {result.agreement.describe()}")
    print(f"predict with: python scripts/predict.py --ckpt {args.ckpt} --precision int8 ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
