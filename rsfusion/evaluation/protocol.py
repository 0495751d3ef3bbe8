"""The papers' evaluation protocols: what is predicted, how, and how it is scored.

Remote sensing (ISPRS): each full tile is predicted by sliding windows (the config's
``data.window``; stride 32) whose logits are summed where they overlap, exactly as prediction
with ``blend="sum"`` does, and scored on the eroded labels (:mod:`rsfusion.evaluation.labels`):
OA over all classes, mF1 / mIoU over the task's metric classes (ISPRS: all but clutter).

Natural images: each image whole, optionally multi-scale + flip (the logits of every view
resized back and summed). :func:`tta_protocol` says which scales and flip, and where they came
from.

Every input mode (both inputs, RGB only, X only: the absent input zeroed after normalisation)
is scored in turn; :func:`format_modality_table` summarises them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsfusion.errors import ConfigError
from rsfusion.evaluation.labels import LABEL_CHOICES, read_classes, read_labels
from rsfusion.evaluation.overlays import read_preview, save_class_png, save_overlay

MODES = {"both": None, "rgb": "x", "x": "rgb"}  # input kept -> input zeroed
LABELS = {"both": "RGB + X", "rgb": "RGB only (X zeroed)", "x": "X only (RGB zeroed)"}
TAGS = {"both": "", "rgb": "_rgb_only", "x": "_x_only"}
#: The test-time augmentation a method's paper reports, per data kind, used where neither the
#: command line nor the config says: KTB's multi-scale (0.5-1.75) + flip on natural images (it
#: publishes no remote-sensing numbers; those keep the ISPRS sliding-window protocol).
PAPER_TTA: dict[tuple[str, str], tuple[tuple[float, ...], bool]] = {
    ("ktb", "natural"): ((0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True),
}


@dataclass
class EvalOptions:
    """How a checkpoint is scored; the fields are ``scripts/evaluate.py``'s options.

    Attributes:
        split: ``"test"`` or ``"val"`` (the config's ``data.val_tiles`` on ISPRS, else the
            split preset's test tiles; the dataset's validation images otherwise).
        dataset: a generalist (joint) checkpoint: score only these of its datasets (None: all).
        inputs: input modes among ``both``, ``rgb``, ``x`` (None: all three for RGB+X models).
        window: sliding window (None: the config's ``data.window``).
        stride: sliding-window stride in pixels.
        batch_size: windows per forward pass.
        labels: ``eroded``, ``full`` or ``eroded-or-full`` (None: ``data.eval_labels``).
        scales: test-time scales (None: the config's, the method's paper protocol, or 1).
        flip: horizontal-flip test-time augmentation (None: as for ``scales``).
        precision: autocast precision; ``fp32`` gives the reference numbers.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        save_predictions: also write each test tile's ``<stem>_classes.tif``.
        overlays: overlay PNGs for the first N tiles (0: none).
    """

    split: str = "test"
    dataset: Sequence[str] | None = None
    inputs: Sequence[str] | None = None
    window: int | None = None
    stride: int = 32
    batch_size: int = 8
    labels: str | None = None
    scales: Sequence[float] | None = None
    flip: bool | None = None
    precision: str = "fp32"
    device: str = "auto"
    save_predictions: bool = False
    overlays: int = 8

    def __post_init__(self) -> None:
        for name in ("dataset", "inputs"):  # one name given as a string: a list of one
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])

    @classmethod
    def from_namespace(cls, args: Any) -> EvalOptions:
        """The options of parsed command-line arguments (attributes named as the fields)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def check(self) -> None:
        """Refuse a value outside the command line's choices (named as its options); the
        numbers are checked where they are used.

        Raises:
            ConfigError: naming the option, the value and the choices.

        Example:
            >>> EvalOptions(inputs=["both", "depth"]).check()
            Traceback (most recent call last):
            rsfusion.errors.ConfigError: --inputs depth: use both, rgb or x
        """
        if self.split not in ("test", "val"):
            raise ConfigError(f"--split {self.split}: use test or val")
        for mode in self.inputs or ():
            if mode not in MODES:
                raise ConfigError(f"--inputs {mode}: use both, rgb or x")
        if self.labels is not None and self.labels not in LABEL_CHOICES:
            raise ConfigError(f"--labels {self.labels}: use {', '.join(LABEL_CHOICES)}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"--precision {self.precision}: use auto, fp32, bf16 or fp16")


def tta_protocol(options: Any, cfg: Any, natural: bool) -> tuple[list[float], bool, dict[str, str]]:
    """Test-time scales and flip, and where each came from: ``options`` (an
    :class:`EvalOptions` or the parsed command line: its ``scales`` and ``flip``), the config
    (``data.eval_scales`` / ``data.eval_flip``), the method's published protocol
    (:data:`PAPER_TTA`), or the default (single scale, no flip)."""
    paper = PAPER_TTA.get((cfg.model.name, "natural" if natural else "remote_sensing"))
    paper_source = f"{cfg.model.name} paper protocol"
    scales: list[float] = [1.0]
    flip = False
    source = {"scales": "default", "flip": "default"}
    if options.scales is not None:
        scales, source["scales"] = list(options.scales), "command line"
    elif cfg.data.eval_scales is not None:
        scales, source["scales"] = [float(v) for v in cfg.data.eval_scales], "config"
    elif paper is not None:
        scales, source["scales"] = list(paper[0]), paper_source
    if options.flip is not None:
        flip, source["flip"] = bool(options.flip), "command line"
    elif cfg.data.eval_flip is not None:
        flip, source["flip"] = bool(cfg.data.eval_flip), "config"
    elif paper is not None:
        flip, source["flip"] = paper[1], paper_source
    return scales, flip, source


def format_modality_table(rows: dict[str, dict[str, Any]]) -> str:
    """One line per input mode: OA, mF1, mIoU in percent.

    Example:
        >>> print(format_modality_table({"both": {"OA": 0.9, "mF1": 0.8, "mIoU": 0.7}}))
        input                       OA     mF1    mIoU
        RGB + X                  90.00   80.00   70.00
    """
    lines = [f"{'input':<22} {'OA':>7} {'mF1':>7} {'mIoU':>7}"]
    for mode, s in rows.items():
        lines.append(
            f"{LABELS[mode]:<22} {100 * float(s['OA']):7.2f} {100 * float(s['mF1']):7.2f} "
            f"{100 * float(s['mIoU']):7.2f}"
        )
    return "\n".join(lines)


def metric_classes(meta: Any) -> list[int]:
    """The classes averaged in mF1 / mIoU (the task's, put in the checkpoint metadata's
    ``extra`` by :func:`rsfusion.evaluation.api.score_dataset`; all classes without it)."""
    return list(meta.get("metric_classes", range(len(meta.classes))))


def score_tiles(
    runner: Any,
    meta: Any,
    tiles: list[Any],
    labels: dict[str, tuple[Any, str]],
    options: Any,
    dest: Path,
    overlays: Path | None,
    max_overlays: int,
    mode: str = LABELS["both"],
) -> tuple[Any, dict[str, Any]]:
    """Predict every tile with ``runner`` into ``dest`` and sum the confusion on its labels
    (``labels``: tile id -> (label raster, kind), from
    :func:`~rsfusion.evaluation.labels.tile_labels`); ``options`` are the
    :class:`~rsfusion.inference.predict.PredictOptions` of the windows; ``mode`` names the
    inputs in the overlays' titles. Pixels the prediction leaves nodata are not scored, and
    counted per tile (``unpredicted_pixels``)."""
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
        s = scores_from_confusion(cm, metric_classes(meta))
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


def score_images(
    runner: Any,
    dm: Any,
    meta: Any,
    split: str,
    dest: Path | None,
    overlays: Path | None,
    max_overlays: int,
    mode: str = LABELS["both"],
) -> tuple[Any, dict[str, Any]]:
    """Natural images: each test image whole (padded to the model's multiple by the runner),
    multi-scale / flip as the runner says; confusion summed over the split. With ``dest``
    each image's classes are written as ``<name>_classes.png``."""
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
        s = scores_from_confusion(cm, metric_classes(meta))
        per_image[name] = {key: float(s[key]) for key in ("PA", "mIoU")}
        if dest is not None:
            save_class_png(pred, meta.palette, dest / f"{name}_classes.png")
        if overlays is not None and n < max_overlays:
            save_overlay(
                sample["image"].numpy(), pred, target, meta, overlays / f"{name}.png",
                f"{name}: {mode}",
            )  # fmt: skip
    return total, per_image
