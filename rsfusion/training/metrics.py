"""Segmentation scores from a confusion matrix, for both benchmark conventions.

Which protocol reports what:

- ISPRS Vaihingen / Potsdam (the ISPRS protocol): ``OA`` over all 6 classes; ``mF1`` and
  ``mIoU`` over the 5 classes without clutter (``metric_classes=[0, 1, 2, 3, 4]``); eroded-boundary
  pixels are ``ignore_index`` and never reach the matrix.
- Natural-image RGB-X datasets (NYU Depth v2, MFNet, ...): ``mIoU``, ``mAcc`` and ``PA`` over all
  classes (``metric_classes=range(K)``); the "unlabelled" id is ``ignore_index``, not a class.

``PA`` and ``OA`` are the same number under the name each community uses.

A class absent from both ground truth and prediction is left out of every mean (it would otherwise
count as 0); a class in the ground truth that is never predicted counts as 0; a class predicted but
absent from the ground truth counts as 0 in ``mIoU`` / ``mF1`` (its false positives are real
errors) and is left out of ``mAcc`` (its recall is undefined). Per-class values that are undefined
(no pixels in the denominator) are reported as 0, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_CHUNK = 1 << 24  # pixels per bincount call: bounds the int64 index buffer to 128 MiB


def scores_from_confusion(cm: Tensor, metric_classes: Sequence[int]) -> dict[str, Tensor]:
    """Overall, per-class and mean scores of a confusion matrix.

    Args:
        cm: (K, K) confusion matrix, rows = ground truth, columns = prediction.
        metric_classes: class indices averaged in mF1 / mIoU / mAcc.

    Returns:
        Scalars ``OA``, ``PA`` (same value), ``mIoU``, ``mF1``, ``mAcc``; (K,) tensors ``IoU``,
        ``F1``, ``Acc`` (recall), ``Precision``, ``Support`` (ground-truth pixels) and
        ``Predicted`` (predicted pixels). All float64, fractions in [0, 1].

    Example:
        >>> cm = torch.tensor([[8, 2], [0, 10]])
        >>> s = scores_from_confusion(cm, [0, 1])
        >>> round(float(s["mAcc"]), 2), round(float(s["PA"]), 2)
        (0.9, 0.9)
    """
    cm = torch.as_tensor(cm).double()
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got {tuple(cm.shape)}")
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    iou = tp / (gt + pred - tp).clamp(min=1e-12)
    f1 = 2 * tp / (gt + pred).clamp(min=1e-12)
    acc = tp / gt.clamp(min=1e-12)
    precision = tp / pred.clamp(min=1e-12)
    idx = torch.as_tensor(list(metric_classes), dtype=torch.long)
    present = (gt[idx] + pred[idx]) > 0  # classes absent from both never count as 0
    labelled = gt[idx] > 0  # recall is defined only where the ground truth has the class
    oa = tp.sum() / cm.sum().clamp(min=1e-12)
    return {
        "OA": oa,
        "PA": oa.clone(),
        "mIoU": _masked_mean(iou[idx], present),
        "mF1": _masked_mean(f1[idx], present),
        "mAcc": _masked_mean(acc[idx], labelled),
        "IoU": iou,
        "F1": f1,
        "Acc": acc,
        "Precision": precision,
        "Support": gt,
        "Predicted": pred,
    }


def _masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``values[keep]``; 0 when nothing is kept."""
    return values[keep].mean() if keep.any() else torch.tensor(0.0, dtype=torch.float64)


def confusion_from_arrays(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int | None = None,
) -> Tensor:
    """Confusion matrix of label arrays by ``torch.bincount``, for use outside torchmetrics.

    Works on any shape and device, in chunks so memory stays bounded on whole scenes. Matrices of
    several tiles add up: ``sum(confusion_from_arrays(p, t, K) for p, t in tiles)``.

    Args:
        pred: predicted class ids (already arg-maxed), any integer shape.
        target: ground-truth class ids, same shape as ``pred``.
        num_classes: K.
        ignore_index: target id whose pixels are skipped (e.g. 255, or an eroded boundary).

    Returns:
        (K, K) int64 tensor on ``pred``'s device, rows = ground truth, columns = prediction.

    Raises:
        ValueError: on a shape mismatch, or a non-ignored id outside ``[0, K)``.

    Example:
        >>> confusion_from_arrays(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 255]), 2, 255)
        tensor([[1, 0],
                [0, 1]])
    """
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target, device=pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must hold integer class ids (arg-max the logits first)")
    k = int(num_classes)
    pred, target = pred.reshape(-1), target.reshape(-1)
    cm = torch.zeros(k * k, dtype=torch.long, device=pred.device)
    for start in range(0, pred.numel(), _CHUNK):
        p = pred[start : start + _CHUNK].long()
        t = target[start : start + _CHUNK].long()
        if ignore_index is not None:
            keep = t != ignore_index
            p, t = p[keep], t[keep]
        if t.numel() == 0:
            continue
        for name, ids in (("target", t), ("pred", p)):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= k:
                raise ValueError(
                    f"{name} holds ids in [{lo}, {hi}] outside [0, {k})"
                    + (f" and not ignore_index={ignore_index}" if name == "target" else "")
                )
        cm += torch.bincount(t * k + p, minlength=k * k)
    return cm.reshape(k, k)
