"""Export a checkpoint's model to ONNX, for ONNX Runtime and the Deepness QGIS plugin.

Exports a checkpoint's model to ONNX for windows of a fixed size (default: the training window):
inputs normalised as the model takes them, output logits (B, K, N, N). ONNX Runtime's logits
are checked against PyTorch's (float32) on random windows before the file is written; the file
lands under its final name only when complete.

The file carries the checkpoint's metadata, so scripts/predict.py --ckpt OUT.onnx ...
predicts with ONNX Runtime exactly as from the checkpoint, and the metadata of the Deepness
QGIS plugin (class names, resolution in cm/px from the dataset card, tile size and overlap,
standardisation), so Deepness runs an RGB model with no settings typed in. Deepness feeds one
stacked layer (the RGB bands then X) standardised with fixed numbers: an RGB+X model whose X
normalisation is each raster's own min-max is exported for Deepness only with --deepness-pair
RGB X (X's min and max are fixed into the metadata, and OUT.vrt stacks the pair as the layer to
open in QGIS), --x-raster X or --x-range MIN MAX; otherwise it is exported with separate rgb and
x inputs (Deepness refuses a model with two inputs), marked not Deepness-compatible.

Example:
  python scripts/export.py --ckpt runs/demo_mobanet/checkpoints/last.ckpt --onnx demo.onnx
  python scripts/predict.py --ckpt demo.onnx --rgb RGB.tif --x DSM.tif --out pred/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rsfusion.cli import USER_ERRORS, check_out_folder, show_messages
from rsfusion.errors import ConfigError

if TYPE_CHECKING:
    from rsfusion.deploy.onnx import ExportResult


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rsfusion-export", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--onnx", required=True, help="the ONNX file to write (OUT.onnx)")
    p.add_argument("--window", type=int, help="window size fixed in the model (default: training)")
    p.add_argument(
        "--overlap", type=int,
        help="tile overlap suggested to Deepness, in pixels (default: window / 4, as predict.py)",
    )  # fmt: skip
    p.add_argument(
        "--dataset",
        help="a generalist (joint) checkpoint's dataset to export (its classes, normalisation and "
        "modality; a source name or card)",
    )
    p.add_argument("--modality", help="the X modality the model is told (SegRGB-X's LoRA)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    fix = p.add_mutually_exclusive_group()
    fix.add_argument(
        "--deepness-pair", nargs=2, metavar=("RGB", "X"),
        help="RGB+X models with per-raster min-max X normalisation: fix it for Deepness to this "
        "X raster's min and max, and write OUT.vrt beside OUT.onnx: the pair stacked as the one "
        "layer Deepness reads (open it in QGIS)",
    )  # fmt: skip
    fix.add_argument(
        "--x-raster", metavar="PATH",
        help="RGB+X models with per-raster min-max X normalisation: fix it for Deepness to this "
        "X raster's min and max",
    )  # fmt: skip
    fix.add_argument(
        "--x-range", nargs=2, type=float, metavar=("MIN", "MAX"),
        help="as --x-raster, with the X range given",
    )  # fmt: skip
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before the model loads, options that cannot work."""
    onnx = Path(args.onnx)
    if onnx.suffix.lower() != ".onnx":
        raise ConfigError(
            f"--onnx {onnx}: give a file name ending in .onnx (predict.py and Deepness know "
            "ONNX models by it)"
        )
    if onnx.is_dir():
        raise ConfigError(f"--onnx {onnx} is a folder: give a file name ending in .onnx")
    check_out_folder(onnx.parent, "--onnx (its folder)")
    if args.window is not None and args.window < 1:
        raise ConfigError(
            f"--window {args.window}: must be at least 1 (leave it out for the training window)"
        )
    if args.overlap is not None and args.overlap < 0:
        raise ConfigError(f"--overlap {args.overlap}: must be 0 or more")
    if not 7 <= args.opset <= 20:
        raise ConfigError(f"--opset {args.opset}: the exporter writes opsets 7 to 20 (use 17)")
    if args.x_range is not None and not args.x_range[1] > args.x_range[0]:
        low, high = args.x_range
        raise ConfigError(f"--x-range {low:g} {high:g}: the maximum must exceed the minimum")
    if args.x_raster is not None and not Path(args.x_raster).is_file():
        raise ConfigError(f"--x-raster {args.x_raster}: no such file")
    for name in args.deepness_pair or ():
        if not Path(name).is_file():
            raise ConfigError(f"--deepness-pair {name}: no such file")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_messages()
    try:
        check_args(args)
        from rsfusion.deploy.deepness import check_pair, fixed_x, stack_vrt
        from rsfusion.deploy.onnx import export_onnx, require_onnx, takes_x
        from rsfusion.inference.predict import load_predictor

        require_onnx()  # missing packages are refused before the model loads
        model, meta = load_predictor(args.ckpt, args.dataset, args.modality)
        window = int(meta.window if args.window is None else args.window)
        if args.overlap is not None and args.overlap >= window:
            raise ConfigError(f"--overlap {args.overlap}: must be below the window ({window})")
        x_raster = args.deepness_pair[1] if args.deepness_pair else args.x_raster
        if (x_raster or args.x_range) and not takes_x(meta):
            raise ConfigError(
                "--deepness-pair / --x-raster / --x-range: this model reads no X (open the "
                "orthophoto itself in Deepness); leave them out"
            )
        x = fixed_x(meta, x_raster, tuple(args.x_range) if args.x_range else None)
        if args.deepness_pair:
            check_pair(*args.deepness_pair)
        print(
            f"exporting {meta.spec.name} ({meta.spec.backbone}, {len(meta.classes)} classes) for "
            f"{window} px windows, opset {args.opset} ...",
            file=sys.stderr,
        )
        facts = {
            "source": Path(args.ckpt).name,
            "dataset": args.dataset,
            "modality": args.modality or meta.x_modality,
        }
        result = export_onnx(
            model, meta, args.onnx, window=window, overlap=args.overlap, opset=args.opset, x=x,
            export=facts,
        )  # fmt: skip
        vrt = None
        if args.deepness_pair:
            vrt = stack_vrt(*args.deepness_pair, Path(args.onnx).with_suffix(".vrt"))
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report(result, window, meta.x_bands)
    if vrt is not None:
        print(f"wrote {vrt}: {args.deepness_pair[0]} then {args.deepness_pair[1]}, one layer to "
              "open in QGIS and run the model on with Deepness")  # fmt: skip
    return 0


def report(result: ExportResult, window: int, x_bands: list[str]) -> None:
    """What was written and measured, on stdout."""
    size = result.bytes / 1e6
    inputs = ", ".join(
        f"{name} ({'batch' if result.batch == 'dynamic' else 1} x {shape[1]} x {window} x {window})"
        for name, shape in result.inputs.items()
    )
    data = f" + {result.path.name}.data" if result.external else ""
    print(f"wrote {result.path}{data} ({size:.1f} MB): inputs {inputs}, output logits")
    print(
        f"ONNX Runtime vs PyTorch float32 on {result.windows} random windows: max |logit "
        f"difference| {result.max_abs_diff:.2g}, argmax equal on {100 * result.agreement:.3f} % "
        "of pixels"
    )
    for note in result.notes:
        print(f"note: {note}")
    plan = result.plan
    if plan.compatible:
        print(f"Deepness: ready ({plan.note})")
    else:
        print(f"Deepness: NOT compatible: {plan.note}")
    x = " --x X.tif" if x_bands else ""
    print(
        f"predict with: python scripts/predict.py --ckpt {result.path} --rgb RGB.tif{x} --out DIR"
    )


if __name__ == "__main__":
    raise SystemExit(main())
