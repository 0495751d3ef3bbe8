"""ISPRS scores from a confusion matrix, checked against hand computation."""

import numpy as np
import pytest
import torch

from rsfusion.training.metrics import scores_from_confusion


def test_scores_match_numpy_reference():
    rng = np.random.default_rng(1)
    cm = rng.integers(0, 50, (6, 6)) + np.eye(6, dtype=int) * 200
    s = scores_from_confusion(torch.tensor(cm), metric_classes=[0, 1, 2, 3, 4])
    tp = np.diag(cm)
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    f1 = 2 * tp / (cm.sum(0) + cm.sum(1))
    assert float(s["OA"]) == pytest.approx(tp.sum() / cm.sum())
    assert float(s["mIoU"]) == pytest.approx(iou[:5].mean())  # clutter excluded
    assert float(s["mF1"]) == pytest.approx(f1[:5].mean())
    assert float(s["mIoU"]) != pytest.approx(iou.mean())


def test_absent_class_does_not_drag_the_mean_to_zero():
    cm = torch.zeros(3, 3, dtype=torch.long)
    cm[0, 0], cm[1, 1] = 10, 10  # class 2 never in truth nor prediction
    assert float(scores_from_confusion(cm, [0, 1, 2])["mIoU"]) == pytest.approx(1.0)
