"""Scores from a confusion matrix, with the ISPRS convention (METHODS.md section 5).

OA counts every class; mF1 and mIoU average only the ``metric_classes`` (ISPRS: all but clutter).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def scores_from_confusion(cm: Tensor, metric_classes: Sequence[int]) -> dict[str, Tensor]:
    """OA, per-class F1 and IoU, and their means over ``metric_classes``.

    Args:
        cm: (K, K) confusion matrix, rows = ground truth, columns = prediction.
        metric_classes: class indices averaged in mF1 / mIoU.
    """
    cm = cm.double()
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    iou = tp / (gt + pred - tp).clamp(min=1e-12)
    f1 = 2 * tp / (gt + pred).clamp(min=1e-12)
    idx = torch.as_tensor(list(metric_classes), dtype=torch.long)
    present = (gt[idx] + pred[idx]) > 0  # classes absent from both never count as 0
    return {
        "OA": tp.sum() / cm.sum().clamp(min=1e-12),
        "mIoU": iou[idx][present].mean() if present.any() else torch.tensor(0.0),
        "mF1": f1[idx][present].mean() if present.any() else torch.tensor(0.0),
        "IoU": iou,
        "F1": f1,
    }
