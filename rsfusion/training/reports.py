"""Human- and machine-readable reports of segmentation scores: text table, JSON, confusion figure.

The inputs are the dict of :func:`rsfusion.training.metrics.scores_from_confusion` and the
confusion matrix itself. Files are written atomically (a temporary name in the same folder, then
``os.replace``), so a reader never sees half a file. Figures use matplotlib's Agg canvas directly:
no pyplot state, no display needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor

Normalise = Literal["true", "pred", "all"] | None

_SPARSE_ABOVE = 12  # above this many classes, cells that round to 0 are left blank

_MEANS = (("OA", "OA"), ("mF1", "mF1"), ("mIoU", "mIoU"), ("mAcc", "mAcc"))


def format_class_table(
    scores: Mapping[str, Any], class_names: Sequence[str], metric_classes: Sequence[int]
) -> str:
    """Fixed-width table: F1 / IoU / Acc per class in percent, then OA / mF1 / mIoU / mAcc.

    Classes outside ``metric_classes`` are marked ``*`` (ISPRS: clutter). A class with no pixel in
    ground truth nor prediction shows ``-`` (it is left out of the means); so does Acc of a class
    with no ground-truth pixel.

    Args:
        scores: output of ``scores_from_confusion``.
        class_names: names in class order.
        metric_classes: the class indices that were averaged.

    Example:
        >>> import torch
        >>> from rsfusion.training.metrics import scores_from_confusion
        >>> s = scores_from_confusion(torch.tensor([[9, 1], [1, 9]]), [0])
        >>> print(format_class_table(s, ["road", "clutter"], [0]).splitlines()[2])
        road          90.00   81.82   90.00
    """
    k = len(class_names)
    f1, iou, acc = (_vector(scores[key], k) for key in ("F1", "IoU", "Acc"))
    support = _vector(scores["Support"], k) if "Support" in scores else np.ones(k)
    predicted = _vector(scores["Predicted"], k) if "Predicted" in scores else np.ones(k)
    included = set(int(c) for c in metric_classes)
    labels = [f"{n}{'' if i in included else ' *'}" for i, n in enumerate(class_names)]
    width = max([len("Class"), *map(len, labels)]) + 2
    header = f"{'Class':<{width}}{'F1':>8}{'IoU':>8}{'Acc':>8}"
    rule = "-" * len(header)
    lines = [header, rule]
    for i, label in enumerate(labels):
        seen = support[i] + predicted[i] > 0
        cells = (
            _pct(f1[i]) if seen else "-",
            _pct(iou[i]) if seen else "-",
            _pct(acc[i]) if support[i] > 0 else "-",
        )
        lines.append(f"{label:<{width}}" + "".join(f"{c:>8}" for c in cells))
    lines.append(rule)
    for key, title in _MEANS:
        if key in scores:
            lines.append(f"{title:<{width}}{_pct(float(scores[key])):>8}")
    notes = []
    if len(included) < k:
        notes.append("* excluded from mF1 / mIoU / mAcc (OA counts every class)")
    if any(support[i] + predicted[i] == 0 for i in range(k)):
        notes.append("- no pixel in ground truth nor prediction: left out of the means")
    return "\n".join(lines + notes)


def scores_to_json(scores: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Scores as plain JSON data: scalar means at the top, per-class values under ``per_class``.

    Values are Python floats (fractions in [0, 1]); ``Support`` / ``Predicted`` pixel counts are
    ints. Unknown keys are kept: 0-d values go to the top, length-K vectors under ``per_class``.

    Args:
        scores: output of ``scores_from_confusion``.
        class_names: names in class order; keys of ``per_class``.
    """
    k = len(class_names)
    out: dict[str, Any] = {"class_names": list(class_names)}
    per_class: dict[str, dict[str, float | int]] = {name: {} for name in class_names}
    for key, value in scores.items():
        arr = _numpy(value)
        if arr.ndim == 0:
            out[key] = _finite(float(arr))
        elif arr.shape == (k,):
            cast = int if key in ("Support", "Predicted") else float
            for name, v in zip(class_names, arr.tolist()):
                per_class[name][key] = cast(_finite(float(v)))
        else:
            raise ValueError(f"scores[{key!r}] has shape {arr.shape}, expected () or ({k},)")
    out["per_class"] = per_class
    return out


def save_scores_json(
    scores: Mapping[str, Any], class_names: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Write :func:`scores_to_json` to ``path`` atomically; returns the path."""
    text = json.dumps(scores_to_json(scores, class_names), indent=2, allow_nan=False) + "\n"
    with _atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def normalise_confusion(cm: Tensor | np.ndarray, normalise: Normalise = "true") -> np.ndarray:
    """Confusion matrix as float64 fractions: per row (recall), per column, over all, or counts.

    Rows / columns without pixels stay 0 instead of NaN.

    Args:
        cm: (K, K) counts, rows = ground truth.
        normalise: ``"true"`` (rows sum to 1), ``"pred"`` (columns), ``"all"``, or None (counts).
    """
    m = _numpy(cm).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got {m.shape}")
    if normalise is None:
        return m
    if normalise == "true":
        den = m.sum(1, keepdims=True)
    elif normalise == "pred":
        den = m.sum(0, keepdims=True)
    elif normalise == "all":
        den = np.array([[m.sum()]])
    else:
        raise ValueError(f"normalise must be 'true', 'pred', 'all' or None, got {normalise!r}")
    return np.divide(m, den, out=np.zeros_like(m), where=den > 0)


def save_confusion_figure(
    cm: Tensor | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    normalise: Normalise = "true",
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Heatmap of the (row-normalised) confusion matrix, written atomically as PNG.

    Class names label both axes, each cell carries its percentage (or count when ``normalise`` is
    None), and the figure and fonts scale with the number of classes (readable from 2 to ~40).
    Rows without ground-truth pixels are drawn hatched and labelled "(no pixels)". Above 12
    classes, cells that round to 0.0 are left blank.

    Args:
        cm: (K, K) counts, rows = ground truth, columns = prediction.
        class_names: K names in class order.
        path: output PNG path; its folder is created if missing.
        normalise: see :func:`normalise_confusion`.
        title: optional figure title.
        dpi: output resolution.

    Returns:
        ``path`` as a :class:`Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = normalise_confusion(cm, normalise)
    counts = _numpy(cm)
    k = m.shape[0]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}x{k} matrix")
    cell = float(np.clip(0.9 - 0.0125 * k, 0.4, 0.85))  # inches per cell
    font = float(np.clip(11 - 0.12 * k, 6, 10))  # cell text size, pt
    label_font = float(np.clip(font + 1, 7, 11))
    side = cell * k
    fig = Figure(figsize=(side + 2.2, side + 1.6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmax = 1.0 if normalise is not None else max(float(m.max()), 1.0)
    image = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    empty_rows = counts.sum(1) == 0
    for r in np.flatnonzero(empty_rows):  # hatch rows with nothing to normalise
        ax.axhspan(r - 0.5, r + 0.5, facecolor="0.92", edgecolor="0.75", hatch="///", lw=0)
    for r in range(k):
        if empty_rows[r]:
            continue
        for c in range(k):
            v = m[r, c]
            text = f"{100 * v:.1f}" if normalise is not None else f"{int(round(v))}"
            if k > _SPARSE_ABOVE and text in ("0.0", "0"):
                continue  # blank reads as 0 and keeps large matrices legible (and quick)
            colour = "white" if v > 0.55 * vmax else "black"
            cell_text = ax.text(c, r, text, ha="center", va="center", fontsize=font, color=colour)
            cell_text.set_in_layout(False)  # inside the axes: skip it when measuring margins
    ylabels = [f"{n} (no pixels)" if e else n for n, e in zip(class_names, empty_rows)]
    ax.set_xticks(range(k), labels=list(class_names), fontsize=label_font)
    ax.set_yticks(range(k), labels=ylabels, fontsize=label_font)
    ax.tick_params(axis="x", labelrotation=45)
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")
        lab.set_rotation_mode("anchor")
    ax.set_xlabel("Prediction", fontsize=label_font + 1)
    ax.set_ylabel("Ground truth", fontsize=label_font + 1)
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_ylim(k - 0.5, -0.5)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=label_font)
    if normalise is not None:
        bar.set_ticks(np.linspace(0, 1, 6), labels=[f"{p}%" for p in range(0, 101, 20)])
    unit = {"true": "% of ground truth", "pred": "% of prediction", "all": "% of all pixels"}
    heading = title or "Confusion matrix"
    ax.set_title(f"{heading} ({unit.get(normalise, 'pixel counts')})", fontsize=label_font + 2)
    # a measured box instead of bbox_inches="tight", which lays out every cell text twice
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.15)
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches=box)
    return Path(path)


@contextlib.contextmanager
def _atomic(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path``, else delete it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _numpy(value: Any) -> np.ndarray:
    """Tensor / array / number as a NumPy array on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _vector(value: Any, k: int) -> np.ndarray:
    """A length-``k`` float vector, or a clear error."""
    arr = _numpy(value).astype(np.float64).reshape(-1)
    if arr.shape != (k,):
        raise ValueError(f"expected {k} per-class values, got {arr.shape[0]}")
    return arr


def _pct(fraction: float) -> str:
    """A fraction as a percentage with 2 decimals."""
    return f"{100 * float(fraction):.2f}"


def _finite(x: float) -> float:
    """``x``, or 0.0 when it is NaN / inf (JSON has no NaN)."""
    return x if np.isfinite(x) else 0.0
