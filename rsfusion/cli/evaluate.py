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
import dataclasses
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rsfusion.allocator import keep_freed_memory
from rsfusion.cli import USER_ERRORS, show_messages
from rsfusion.config import ConfigError, load_config
from rsfusion.errors import CheckpointMismatchError, MissingFileError
from rsfusion.models.checkpoint import CheckpointMeta, check_frozen, read_checkpoint

MODES = {"both": None, "rgb": "x", "x": "rgb"}  # input kept -> input zeroed
LABELS = {"both": "RGB + X", "rgb": "RGB only (X zeroed)", "x": "X only (RGB zeroed)"}
TAGS = {"both": "", "rgb": "_rgb_only", "x": "_x_only"}
LABEL_CHOICES = ("eroded", "full", "eroded-or-full")
#: The test-time augmentation a method's paper reports, per data kind, used where neither the
#: command line nor the config says: KTB's multi-scale (0.5-1.75) + flip on natural images (it
#: publishes no remote-sensing numbers; those keep the ISPRS sliding-window protocol).
PAPER_TTA: dict[tuple[str, str], tuple[tuple[float, ...], bool]] = {
    ("ktb", "natural"): ((0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True),
}


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


def load_trained(task: Any, ckpt_path: str) -> CheckpointMeta:
    """Load a (slim) checkpoint into a freshly built task; refuse one that does not fit."""
    saved, old = read_checkpoint(ckpt_path, "--ckpt")
    source = f"--ckpt {ckpt_path}"
    old.check_fits(CheckpointMeta.from_dict(task.hparams.meta, "config"), source)
    check_frozen(old, task.model, source)
    try:
        task.on_load_checkpoint(saved)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{source}: {err}") from err
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


def read_labels(source: str, palette: list, ignore_index: int) -> np.ndarray:
    """Class ids of a label raster: colour-coded through the palette, or single-band ids."""
    import rasterio
    import torch

    from rsfusion.data.labels import PaletteDecoder

    with rasterio.open(source) as src:
        data = src.read()
    if data.shape[0] == 1:
        return data[0].astype(np.int64)
    return PaletteDecoder(palette, ignore_index)(torch.from_numpy(data), source).numpy()


def read_classes(path: Path) -> tuple[np.ndarray, int | None]:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1).astype(np.int64), None if src.nodata is None else int(src.nodata)


def tile_labels(
    tiles: list[Any], wanted: str, card: Any, root: str | Path, split: str
) -> dict[str, tuple[Any, str]]:
    """Each tile's label raster and its kind ('eroded' or 'full') for ``--labels wanted``.

    ``eroded`` and ``full`` take exactly that kind for every tile; ``eroded-or-full`` takes the
    full labels where a tile has no eroded ones. Never falls back silently.

    Raises:
        MissingFileError: a tile lacks the labels asked for (the message names the files
            looked for and the fix).
    """
    chosen: dict[str, tuple[Any, str]] = {}
    missing: list[str] = []
    for tile in tiles:
        tid = str(tile.tile_id)
        if wanted == "eroded-or-full" and tile.eroded is None:
            kind = "full"
        else:
            kind = "full" if wanted == "full" else "eroded"
        raster = tile.eroded if kind == "eroded" else tile.label
        if raster is None:
            where = [str(Path(root) / card.format_pattern(p, tid)) for p in
                     card.label_patterns.get(kind, ())]  # fmt: skip
            missing.append(f"tile {tid} ({' or '.join(where) or 'no pattern in the card'})")
            continue
        chosen[tid] = (raster, kind)
    if missing:
        if wanted == "full":
            fix = "extract the full ground truth there, or score on the eroded labels: --labels eroded"
        else:
            fix = (
                "extract the eroded (noBoundary) ground truth there, or score on the full labels "
                "and say so: --labels full (every tile) or --labels eroded-or-full (full labels "
                "only for the tiles without eroded ones; metrics.json records each tile's labels)"
            )
        raise MissingFileError(
            f"{len(missing)} {split} tile(s) have no {wanted} labels: {'; '.join(missing)}. "
            f"Fix: {fix}"
        )
    return chosen


def score_tiles(
    runner: Any,
    meta: CheckpointMeta,
    tiles: list[Any],
    labels: dict[str, tuple[Any, str]],
    options: Any,
    dest: Path,
    overlays: Path | None,
    max_overlays: int,
    mode: str = LABELS["both"],
) -> tuple[Any, dict[str, Any]]:
    """Predict every tile with ``runner`` into ``dest`` and sum the confusion on its labels
    (``labels``: tile id -> (label raster, kind), from :func:`tile_labels`); ``mode`` names
    the inputs in the overlays' titles."""
    import torch

    from rsfusion.inference.predict import predict_pair
    from rsfusion.training.metrics import confusion_from_arrays, scores_from_confusion

    k, ignore = len(meta.classes), int(meta.ignore_index)
    total = torch.zeros(k, k, dtype=torch.long)
    per_tile: dict[str, Any] = {}
    for n, tile in enumerate(tiles):
        label, kind = labels[str(tile.tile_id)]
        stem = tile.rgb.path.stem
        x_source = tile.x.source if tile.x is not None else None
        written = predict_pair(runner, meta, tile.rgb.source, x_source, dest, options, stem=stem)
        pred, nodata = read_classes(written["classes"])
        target = read_labels(label.source, meta.palette, ignore)
        unpredicted = pred == nodata if nodata is not None else np.zeros_like(pred, bool)
        target = np.where(unpredicted, ignore, target)
        cm = confusion_from_arrays(np.where(unpredicted, 0, pred), target, k, ignore)
        total += cm
        s = scores_from_confusion(cm, _metric_classes(meta))
        per_tile[str(tile.tile_id)] = {key: float(s[key]) for key in ("OA", "mF1", "mIoU")} | {
            "unpredicted_pixels": int((unpredicted & (target != ignore)).sum()),
            "labels": kind,
            "label_file": label.path.name,
        }
        if overlays is not None and n < max_overlays:
            image, step = read_preview(tile.rgb.source)
            p, t = pred[::step, ::step], target[::step, ::step]
            save_overlay(image, p, t, meta, overlays / f"{stem}.png", f"{stem}: {mode}")
    return total, per_tile


def _metric_classes(meta: CheckpointMeta) -> list[int]:
    """The classes averaged in mF1 / mIoU (the task's, put in ``extra`` by :func:`main`)."""
    return list(meta.get("metric_classes", range(len(meta.classes))))


def read_preview(rgb_source: str, max_side: int = 800) -> tuple[np.ndarray, int]:
    """The first three bands of a raster, decimated to at most ``max_side``, and the step."""
    import rasterio

    with rasterio.open(rgb_source) as src:
        step = max(1, int(np.ceil(max(src.width, src.height) / max_side)))
        out_shape = (min(src.count, 3), -(-src.height // step), -(-src.width // step))
        img = src.read(list(range(1, out_shape[0] + 1)), out_shape=out_shape)
    return img.astype(np.float32), step


#: the colour errors are painted in on the overlays' third panel (the next one of
#: ERROR_COLOURS when a class has it, e.g. Vaihingen's red clutter)
ERROR_COLOUR = (255, 0, 0)
ERROR_COLOURS = (ERROR_COLOUR, (255, 0, 255), (255, 128, 0), (0, 0, 0))


def error_colour(palette: Any) -> tuple[int, int, int]:
    """The first of ERROR_COLOURS that no class of ``palette`` has.

    Example:
        >>> error_colour([[255, 255, 255], [255, 0, 0]]), error_colour([[0, 0, 255]])
        ((255, 0, 255), (255, 0, 0))
    """
    used = {tuple(int(v) for v in c[:3]) for c in palette}
    return next((c for c in ERROR_COLOURS if c not in used), ERROR_COLOUR)


def save_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    meta: CheckpointMeta,
    path: Path,
    title: str = "",
) -> Path:
    """PNG of three panels (the image, the prediction over it, the errors on it) under
    a title (``title``: the tile and input mode) and above a legend (each class's colour and
    name, the error colour: red, or :func:`error_colour` when a class is red), written
    atomically. The title and legend are also in the PNG's
    text chunks (``Title``, ``Legend``: JSON).

    ``image`` is (bands, h, w) at the resolution of ``pred`` and ``target`` (any value range).
    """
    from PIL import Image, PngImagePlugin

    img = np.repeat(image, 3, 0) if image.shape[0] == 1 else image[:3]
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    img = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).transpose(1, 2, 0)
    palette = np.asarray(list(meta.palette) + [[0, 0, 0]] * 256, np.float32)
    colours = palette[np.clip(pred, 0, len(palette) - 1)]
    over = 0.5 * img + 0.5 * colours
    wrong = (pred != target) & (target != int(meta.ignore_index))
    errors = img * 0.4
    red = error_colour(meta.palette)
    errors[wrong] = red
    panel = np.concatenate([img, over, errors], axis=1).astype(np.uint8)
    legend = [(str(name), tuple(int(v) for v in colour[:3]))
              for name, colour in zip(meta.classes, meta.palette)]  # fmt: skip
    legend.append(("error (prediction differs from the label)", red))
    figure = _titled_with_legend(Image.fromarray(panel), title, legend)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", title)
    info.add_text("Legend", json.dumps([[name, list(rgb)] for name, rgb in legend]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    figure.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    return path


def _titled_with_legend(panels: Any, title: str, legend: list[tuple[str, tuple]]) -> Any:
    """``panels`` (three side by side) on a white canvas with the title and panel captions
    above and the legend swatches below, wrapped to the canvas width (PIL's own font)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_width(text: str) -> int:
        return int(probe.textlength(text, font=font))

    line, pad, swatch = 18, 6, 12
    width = max(panels.width, 420, text_width(title) + 2 * pad)
    rows: list[list[tuple[str, tuple, int]]] = [[]]
    x = pad
    for name, rgb in legend:
        item = swatch + 4 + text_width(name) + 14
        if rows[-1] and x + item > width - pad:
            rows.append([])
            x = pad
        rows[-1].append((name, rgb, x))
        x += item
    top = pad + 2 * line
    canvas = Image.new("RGB", (width, top + panels.height + pad + len(rows) * line + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="black", font=font)
    third = panels.width / 3
    for i, caption in enumerate(("image", "prediction", "errors")):
        draw.text((round(i * third) + 2, pad + line), caption, fill=(60, 60, 60), font=font)
    canvas.paste(panels, (0, top))
    y = top + panels.height + pad
    for row in rows:
        for name, rgb, x0 in row:
            draw.rectangle([x0, y + 2, x0 + swatch, y + 2 + swatch], fill=rgb, outline="black")
            draw.text((x0 + swatch + 4, y), name, fill="black", font=font)
        y += line
    return canvas


def save_class_png(pred: np.ndarray, palette: list, path: Path) -> Path:
    """Class ids as a palette PNG (natural-image predictions), written atomically."""
    from PIL import Image

    img = Image.fromarray(pred.astype(np.uint8), mode="P")
    flat = [v for c in palette for v in c][:768]
    img.putpalette(flat + [0] * (768 - len(flat)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def score_images(
    runner: Any,
    dm: Any,
    meta: dict[str, Any],
    split: str,
    dest: Path | None,
    overlays: Path | None,
    max_overlays: int,
    mode: str = LABELS["both"],
) -> tuple[Any, dict[str, Any]]:
    """Natural images: each test image whole (padded to the model's multiple by the runner),
    multi-scale / flip as the runner says; confusion summed over the split."""
    import torch

    from rsfusion.training.metrics import confusion_from_arrays, scores_from_confusion

    k, ignore = len(meta.classes), int(meta.ignore_index)
    dataset = dm.make_dataset(split, dm.fit_x_norm())
    total = torch.zeros(k, k, dtype=torch.long)
    per_image: dict[str, Any] = {}
    for n in range(len(dataset)):
        sample, ref = dataset[n], dataset.samples[n]
        batch = dm.aug({key: v[None] for key, v in sample.items() if torch.is_tensor(v)})
        x = batch.get("image_x")
        logits = runner(batch["image"].numpy(), None if x is None else x.numpy())
        pred = logits[0].argmax(0)
        target = sample["mask"].numpy().astype(np.int64)
        cm = confusion_from_arrays(pred, target, k, ignore)
        total += cm
        name = ref.id if ref.condition is None else f"{ref.condition}_{ref.id}"
        s = scores_from_confusion(cm, _metric_classes(meta))
        per_image[name] = {key: float(s[key]) for key in ("PA", "mIoU")}
        if dest is not None:
            save_class_png(pred, meta.palette, dest / f"{name}_classes.png")
        if overlays is not None and n < max_overlays:
            save_overlay(
                sample["image"].numpy(), pred, target, meta, overlays / f"{name}.png",
                f"{name}: {mode}",
            )  # fmt: skip
    return total, per_image


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Score the checkpoint; a generalist (joint) one on each of its datasets in turn, each in
    its own classes (``DIR/<dataset>/``), with the mean over the datasets in ``metrics.json``."""
    import lightning as L

    from rsfusion.inference.joint import dataset_view, joint_sources

    cfg = load_config(args.cfg, args.set)
    L.seed_everything(cfg.seed, workers=True)
    from rsfusion.data import make_datamodule
    from rsfusion.training import SegmentationTask

    dm = make_datamodule(cfg.data, cfg.seed)
    task = SegmentationTask.from_config(cfg, dm)
    saved = load_trained(task, args.ckpt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = joint_sources(saved)
    if not sources:
        # normalisation exactly as trained (X statistics of the training rasters included)
        config_meta = CheckpointMeta.from_dict(task.hparams.meta, "config")
        meta = dataclasses.replace(config_meta, rgb_norm=saved.rgb_norm, x_norm=saved.x_norm)
        return score_dataset(
            args, cfg, dm, task.model, meta, list(task.hparams.metric_classes), out
        )
    from rsfusion.catalog import load_card
    from rsfusion.data.joint import joint_sources as config_sources

    result: dict[str, Any] = {}
    for name, data_cfg, _ in config_sources(cfg.data):
        if args.dataset and name not in args.dataset:
            continue
        sub_cfg = dataclasses.replace(cfg, data=data_cfg)
        sub_dm = make_datamodule(data_cfg, cfg.seed)
        view, meta = dataset_view(task.model, saved, name, None, f"--ckpt {args.ckpt}")
        print(f"\n=== {name} ({meta.card}, X {meta.x_modality}) ===")
        metric = list(load_card(meta.card).metric_classes)
        result[name] = score_dataset(args, sub_cfg, sub_dm, view, meta, metric, out / name)
    if not result:
        raise ConfigError(f"--dataset {args.dataset}: none of the checkpoint's {sources}")
    mean = {
        mode: {k: float(np.mean([r[mode][k] for r in result.values()])) for k in ("OA", "mIoU")}
        for mode in next(iter(result.values()))
        if mode != "protocol"
    }
    summary = {"datasets": result, "mean": mean}
    tmp = out / ".metrics.json.partial"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "metrics.json")
    lines = [f"{'dataset':<16} {'mode':<6} {'OA':>7} {'mIoU':>7}"]
    for name, r in [*result.items(), ("mean", mean)]:
        for mode in (m for m in r if m != "protocol"):
            lines.append(
                f"{name:<16} {mode:<6} {100 * r[mode]['OA']:7.2f} {100 * r[mode]['mIoU']:7.2f}"
            )
    print("\n" + "\n".join(lines))
    return summary


def tta_protocol(
    args: argparse.Namespace, cfg: Any, natural: bool
) -> tuple[list[float], bool, dict[str, str]]:
    """Test-time scales and flip, and where each came from: the command line, the config
    (``data.eval_scales`` / ``data.eval_flip``), the method's
    published protocol (:data:`PAPER_TTA`), or the default (single scale, no flip)."""
    paper = PAPER_TTA.get((cfg.model.name, "natural" if natural else "remote_sensing"))
    paper_source = f"{cfg.model.name} paper protocol"
    scales: list[float] = [1.0]
    flip = False
    source = {"scales": "default", "flip": "default"}
    if args.scales is not None:
        scales, source["scales"] = list(args.scales), "command line"
    elif cfg.data.eval_scales is not None:
        scales, source["scales"] = [float(v) for v in cfg.data.eval_scales], "config"
    elif paper is not None:
        scales, source["scales"] = list(paper[0]), paper_source
    if args.flip is not None:
        flip, source["flip"] = bool(args.flip), "command line"
    elif cfg.data.eval_flip is not None:
        flip, source["flip"] = bool(cfg.data.eval_flip), "config"
    elif paper is not None:
        flip, source["flip"] = paper[1], paper_source
    return scales, flip, source


def score_dataset(
    args: argparse.Namespace,
    cfg: Any,
    dm: Any,
    model: Any,
    meta: CheckpointMeta,
    metric_classes: list[int],
    out: Path,
) -> dict[str, Any]:
    """Every input mode of one dataset: reports, figures and ``out/metrics.json``."""
    from rsfusion.data.tiles import find_tiles
    from rsfusion.inference.predict import PredictOptions
    from rsfusion.inference.runner import ModelRunner
    from rsfusion.training.metrics import scores_from_confusion
    from rsfusion.training.reports import (
        format_class_table,
        save_confusion_figure,
        save_scores_json,
        scores_to_json,
    )

    meta = dataclasses.replace(meta, extra={**meta.extra, "metric_classes": metric_classes})
    out.mkdir(parents=True, exist_ok=True)
    modes = args.inputs or (["both", "rgb", "x"] if cfg.data.x else ["both"])
    card = dm.card
    natural = meta.get("kind") == "natural"
    window = args.window or cfg.data.window
    scales, flip, tta_source = tta_protocol(args, cfg, natural)
    labels: dict[str, tuple[Any, str]] = {}
    if natural:
        tiles: list[Any] = []
        protocol: dict[str, Any] = {"split": args.split, "images": "whole"}
    else:
        wanted = dm.tiles_of(args.split)
        tiles, missing = find_tiles(
            card, cfg.data.root, wanted, cfg.data.rgb, cfg.data.x, align_x=cfg.data.align_x
        )
        if not tiles:
            raise MissingFileError(f"no {args.split} tile of {wanted} under {cfg.data.root}")
        if missing:
            warnings.warn(
                f"{args.split} tiles missing under {cfg.data.root}: {missing}", stacklevel=2
            )
        if not 0 < args.stride <= window:
            raise ConfigError(f"--stride {args.stride} must lie in (0, window={window}]")
        wanted = args.labels or cfg.data.eval_labels
        labels = tile_labels(tiles, wanted, card, cfg.data.root, args.split)  # before predicting
        kinds = {kind for _, kind in labels.values()}
        protocol = {
            "split": args.split, "tiles": [t.tile_id for t in tiles],
            "labels": kinds.pop() if len(kinds) == 1 else "mixed", "labels_requested": wanted,
            "labels_per_tile": {tid: kind for tid, (_, kind) in labels.items()},
            "window": window, "stride": args.stride, "logits": "summed",
        }  # fmt: skip
    options = PredictOptions(
        window=window, overlap=window - args.stride, blend="sum", batch_size=args.batch_size,
        readers=1, x_missing="predict",  # every labelled pixel scored, missing X as 0
    )  # fmt: skip
    names = list(meta.classes)
    rows: dict[str, Any] = {}
    result: dict[str, Any] = {}
    # natural images are padded as in training; ISPRS windows reach the model as predict sends them
    pad = int(meta.get("pad_multiple") or 1) if natural else 1
    with tempfile.TemporaryDirectory(prefix=".eval-", dir=out) as scratch:
        for mode in modes:
            runner = ModelRunner(
                model, device=args.device, precision=args.precision, flip=flip,
                scales=scales, drop=MODES[mode], pad_multiple=pad,
            )  # fmt: skip
            keep = args.save_predictions and mode == "both"
            overlays = out / "overlays" if mode == "both" and args.overlays > 0 else None
            if natural:
                dest = out / "predictions" if keep else None
                cm, per_item = score_images(
                    runner, dm, meta, args.split, dest, overlays, args.overlays, LABELS[mode]
                )
            else:
                dest = out if keep else Path(scratch) / mode
                cm, per_item = score_tiles(
                    runner,
                    meta,
                    tiles,
                    labels,
                    options,
                    dest,
                    overlays,
                    args.overlays,
                    LABELS[mode],
                )
            scores = scores_from_confusion(cm, metric_classes)
            rows[mode] = scores
            tag = f"{args.split}{TAGS[mode]}"
            save_scores_json(scores, names, out / "reports" / f"{tag}_scores.json")
            save_confusion_figure(cm, names, out / "reports" / f"{tag}_confusion.png",
                                  title=f"{card.name} {args.split}: {LABELS[mode]}")  # fmt: skip
            result[mode] = scores_to_json(scores, names) | {
                "per_tile" if not natural else "per_image": per_item,
                "confusion": cm.tolist(),
            }
            print(f"\n{LABELS[mode]}\n{format_class_table(scores, names, metric_classes)}")
    protocol |= {
        "scales": scales, "flip": flip, "tta_source": tta_source,
        "precision": runner.precision, "metric_classes": metric_classes,
    }  # fmt: skip
    result = {**result, "protocol": protocol}
    tmp = out / ".metrics.json.partial"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out / "metrics.json")
    print(f"\n{args.split} tiles, checkpoint {args.ckpt}\n{format_modality_table(rows)}")
    return result


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
