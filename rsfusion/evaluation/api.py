"""Score a checkpoint from Python: :func:`evaluate`, what ``scripts/evaluate.py`` runs.

The config (a name in configs/, a YAML path, or a loaded config) rebuilds the task the
checkpoint was trained as; the checkpoint must fit it (classes, bands, frozen backbone). Each
input mode is scored with the protocol of the data (:mod:`rsfusion.evaluation.protocol`);
a generalist (joint) checkpoint is scored on each of its datasets in its own classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsfusion.errors import CheckpointMismatchError, ConfigError, MissingFileError
from rsfusion.evaluation.labels import tile_labels
from rsfusion.evaluation.protocol import (
    LABELS,
    MODES,
    TAGS,
    EvalOptions,
    format_modality_table,
    score_images,
    score_tiles,
    tta_protocol,
)
from rsfusion.models.checkpoint import CheckpointMeta, check_frozen, read_checkpoint

Echo = Callable[[str], None]


def evaluate(
    cfg: Any,
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    options: EvalOptions | None = None,
    echo: Echo | None = print,
    **settings: Any,
) -> dict[str, Any]:
    """Score a checkpoint on its config's test tiles or images, as ``scripts/evaluate.py`` does.

    Args:
        cfg: a config name in configs/, a YAML path, or a loaded
            :class:`~rsfusion.config_schema.ExperimentConfig`.
        checkpoint: a checkpoint written by training (``last.ckpt``).
        out: folder receiving ``metrics.json``, ``reports/``, ``overlays/`` and, with
            ``save_predictions``, the predicted rasters (what the command line writes into
            ``--out``). None: nothing is kept (no overlays either); only the metrics return.
        overrides: ``key.path=value`` strings applied to a config name or path (``--set``).
        options: an :class:`EvalOptions`; ``settings`` (its field names, e.g. ``stride=16``,
            ``inputs=["both"]``) replace single fields.
        echo: where the per-class and per-mode tables go (``print``; None: nowhere).

    Returns:
        What ``metrics.json`` holds: per input mode (``both``, ``rgb``, ``x``) OA, mF1, mIoU,
        per-class scores, per-tile (or per-image) scores and the confusion matrix, and the
        ``protocol`` used; for a generalist checkpoint ``{"datasets": {name: ...}, "mean":
        ...}``.

    Raises:
        ConfigError: a config, override or option that does not work.
        CheckpointMismatchError: a checkpoint that does not fit the config.
        MissingFileError: test tiles or their labels missing (the message names the files).

    Example (the quick start's demo scene and MoBaNet run)::

        import rsfusion

        ckpt = "runs/demo_mobanet/latest/checkpoints/last.ckpt"
        metrics = rsfusion.evaluate("demo_mobanet", ckpt, out="eval", inputs=["both"])
        print(metrics["both"]["mIoU"], metrics["protocol"]["labels"])
    """
    opts = options if options is not None else EvalOptions()
    if settings:
        opts = dataclasses.replace(opts, **settings)
    opts.check()
    say: Echo = echo if echo is not None else _silent
    if out is not None:
        return _evaluate(cfg, checkpoint, Path(out), overrides, opts, say)
    if opts.save_predictions:
        raise ConfigError("save_predictions=True writes the predictions into out: give out=FOLDER")
    with tempfile.TemporaryDirectory(prefix="rsfusion-eval-") as scratch:
        kept = dataclasses.replace(opts, overlays=0)
        return _evaluate(cfg, checkpoint, Path(scratch), overrides, kept, say)


def _silent(line: str) -> None:
    """An echo that shows nothing."""


def load_trained(task: Any, ckpt_path: str | Path) -> CheckpointMeta:
    """Load a (slim) checkpoint into a freshly built task; refuse one that does not fit.

    Raises:
        CheckpointMismatchError: other classes, bands or model than the task's, or another
            frozen backbone (the message names ``--ckpt PATH``).
    """
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


def _load_config(cfg: Any, overrides: Sequence[str]) -> Any:
    """A config name or path loaded with ``overrides``; a loaded config as it is."""
    from rsfusion.config import load_config

    if isinstance(cfg, (str, os.PathLike)):
        return load_config(cfg, overrides)
    if overrides:
        raise ConfigError(
            f"overrides {list(overrides)} apply to a config name or file: give cfg as one, or "
            "set the values on the loaded config (dataclasses.replace)"
        )
    return cfg


def _evaluate(
    cfg_source: Any,
    checkpoint: str | Path,
    out: Path,
    overrides: Sequence[str],
    opts: EvalOptions,
    echo: Echo,
) -> dict[str, Any]:
    """Score the checkpoint; a generalist (joint) one on each of its datasets in turn, each in
    its own classes (``out/<dataset>/``), with the mean over the datasets in ``metrics.json``."""
    import lightning as L

    from rsfusion.inference.joint import dataset_view, joint_sources

    cfg = _load_config(cfg_source, overrides)
    L.seed_everything(cfg.seed, workers=True)
    from rsfusion.data import make_datamodule
    from rsfusion.models.backbones.factory import building_for
    from rsfusion.training import SegmentationTask

    dm = make_datamodule(cfg.data, cfg.seed)
    with building_for("checkpoint"):
        task = SegmentationTask.from_config(cfg, dm)
    saved = load_trained(task, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    sources = joint_sources(saved)
    if not sources:
        # normalisation exactly as trained (X statistics of the training rasters included)
        config_meta = CheckpointMeta.from_dict(task.hparams.meta, "config")
        meta = dataclasses.replace(config_meta, rgb_norm=saved.rgb_norm, x_norm=saved.x_norm)
        metric = list(task.hparams.metric_classes)
        return score_dataset(opts, cfg, dm, task.model, meta, metric, out, checkpoint, echo)
    from rsfusion.catalog import load_card
    from rsfusion.data.joint import joint_sources as config_sources

    result: dict[str, Any] = {}
    for name, data_cfg, _ in config_sources(cfg.data):
        if opts.dataset and name not in opts.dataset:
            continue
        sub_cfg = dataclasses.replace(cfg, data=data_cfg)
        sub_dm = make_datamodule(data_cfg, cfg.seed)
        view, meta = dataset_view(task.model, saved, name, None, f"--ckpt {checkpoint}")
        echo(f"\n=== {name} ({meta.card}, X {meta.x_modality}) ===")
        metric = list(load_card(meta.card).metric_classes)
        result[name] = score_dataset(
            opts, sub_cfg, sub_dm, view, meta, metric, out / name, checkpoint, echo
        )
    if not result:
        raise ConfigError(f"--dataset {opts.dataset}: none of the checkpoint's {sources}")
    mean = {
        mode: {k: float(np.mean([r[mode][k] for r in result.values()])) for k in ("OA", "mIoU")}
        for mode in next(iter(result.values()))
        if mode != "protocol"
    }
    summary = {"datasets": result, "mean": mean}
    _write_json(summary, out / "metrics.json")
    lines = [f"{'dataset':<16} {'mode':<6} {'OA':>7} {'mIoU':>7}"]
    for name, r in [*result.items(), ("mean", mean)]:
        for mode in (m for m in r if m != "protocol"):
            lines.append(
                f"{name:<16} {mode:<6} {100 * r[mode]['OA']:7.2f} {100 * r[mode]['mIoU']:7.2f}"
            )
    echo("\n" + "\n".join(lines))
    return summary


def _write_json(data: dict[str, Any], path: Path) -> None:
    """``data`` as indented JSON at ``path``, written atomically."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def score_dataset(
    opts: EvalOptions,
    cfg: Any,
    dm: Any,
    model: Any,
    meta: CheckpointMeta,
    metric_classes: list[int],
    out: Path,
    checkpoint: str | Path = "",
    echo: Echo = print,
) -> dict[str, Any]:
    """Every input mode of one dataset: reports, figures and ``out/metrics.json``; returns
    what that file holds. ``checkpoint`` is named in the closing table."""
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
    modes = list(opts.inputs) if opts.inputs else (["both", "rgb", "x"] if cfg.data.x else ["both"])
    card = dm.card
    natural = meta.get("kind") == "natural"
    window = opts.window or cfg.data.window
    scales, flip, tta_source = tta_protocol(opts, cfg, natural)
    labels: dict[str, tuple[Any, str]] = {}
    if natural:
        tiles: list[Any] = []
        protocol: dict[str, Any] = {"split": opts.split, "images": "whole"}
    else:
        wanted = dm.tiles_of(opts.split)
        tiles, missing = find_tiles(
            card, cfg.data.root, wanted, cfg.data.rgb, cfg.data.x, align_x=cfg.data.align_x
        )
        if not tiles:
            raise MissingFileError(f"no {opts.split} tile of {wanted} under {cfg.data.root}")
        if missing:
            warnings.warn(
                f"{opts.split} tiles missing under {cfg.data.root}: {missing}", stacklevel=2
            )
        if not 0 < opts.stride <= window:
            raise ConfigError(f"--stride {opts.stride} must lie in (0, window={window}]")
        wanted = opts.labels or cfg.data.eval_labels
        labels = tile_labels(tiles, wanted, card, cfg.data.root, opts.split)  # before predicting
        kinds = {kind for _, kind in labels.values()}
        protocol = {
            "split": opts.split, "tiles": [t.tile_id for t in tiles],
            "labels": kinds.pop() if len(kinds) == 1 else "mixed", "labels_requested": wanted,
            "labels_per_tile": {tid: kind for tid, (_, kind) in labels.items()},
            "window": window, "stride": opts.stride, "logits": "summed",
        }  # fmt: skip
    options = PredictOptions(
        window=window, overlap=window - opts.stride, blend="sum", batch_size=opts.batch_size,
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
                model, device=opts.device, precision=opts.precision, flip=flip,  # type: ignore[arg-type]
                scales=scales, drop=MODES[mode], pad_multiple=pad,
            )  # fmt: skip
            keep = opts.save_predictions and mode == "both"
            overlays = out / "overlays" if mode == "both" and opts.overlays > 0 else None
            if natural:
                dest = out / "predictions" if keep else None
                cm, per_item = score_images(
                    runner, dm, meta, opts.split, dest, overlays, opts.overlays, LABELS[mode]
                )
            else:
                dest = out if keep else Path(scratch) / mode
                cm, per_item = score_tiles(
                    runner, meta, tiles, labels, options, dest, overlays, opts.overlays,
                    LABELS[mode],
                )  # fmt: skip
            scores = scores_from_confusion(cm, metric_classes)
            rows[mode] = scores
            tag = f"{opts.split}{TAGS[mode]}"
            save_scores_json(scores, names, out / "reports" / f"{tag}_scores.json")
            save_confusion_figure(cm, names, out / "reports" / f"{tag}_confusion.png",
                                  title=f"{card.name} {opts.split}: {LABELS[mode]}")  # fmt: skip
            result[mode] = scores_to_json(scores, names) | {
                "per_tile" if not natural else "per_image": per_item,
                "confusion": cm.tolist(),
            }
            echo(f"\n{LABELS[mode]}\n{format_class_table(scores, names, metric_classes)}")
    protocol |= {
        "scales": scales, "flip": flip, "tta_source": tta_source,
        "precision": runner.precision, "metric_classes": metric_classes,
    }  # fmt: skip
    result = {**result, "protocol": protocol}
    _write_json(result, out / "metrics.json")
    echo(f"\n{opts.split} tiles, checkpoint {checkpoint}\n{format_modality_table(rows)}")
    return result
