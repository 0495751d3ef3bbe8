"""Scores from a confusion matrix (ISPRS and natural-image conventions), checked against NumPy."""

import numpy as np
import pytest
import torch

from rsfusion.training.metrics import confusion_from_arrays, scores_from_confusion


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


def test_natural_image_metrics_match_numpy_reference():
    rng = np.random.default_rng(2)
    cm = rng.integers(0, 40, (5, 5)) + np.eye(5, dtype=int) * 150
    s = scores_from_confusion(torch.tensor(cm), metric_classes=range(5))
    tp = np.diag(cm)
    recall, precision = tp / cm.sum(1), tp / cm.sum(0)
    np.testing.assert_allclose(s["Acc"].numpy(), recall)
    np.testing.assert_allclose(s["Precision"].numpy(), precision)
    np.testing.assert_allclose(s["Support"].numpy(), cm.sum(1))
    np.testing.assert_allclose(s["Predicted"].numpy(), cm.sum(0))
    assert float(s["mAcc"]) == pytest.approx(recall.mean())
    assert float(s["PA"]) == pytest.approx(tp.sum() / cm.sum())
    assert float(s["PA"]) == float(s["OA"])
    # F1 is the harmonic mean of precision and recall
    np.testing.assert_allclose(s["F1"].numpy(), 2 * precision * recall / (precision + recall))


def test_missed_class_counts_zero_and_absent_class_is_skipped():
    cm = torch.tensor([[10, 0, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 6]])
    s = scores_from_confusion(cm, [0, 1, 2, 3])  # 1: in truth, never predicted; 2: absent
    iou0 = 10 / 15
    assert float(s["mIoU"]) == pytest.approx((iou0 + 0.0 + 1.0) / 3)
    assert float(s["mAcc"]) == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert float(s["Acc"][1]) == 0.0 and float(s["IoU"][1]) == 0.0


def test_predicted_but_absent_class_counts_in_miou_not_in_macc():
    cm = torch.tensor([[8, 2], [0, 0]])  # class 1 only predicted (false positives)
    s = scores_from_confusion(cm, [0, 1])
    assert float(s["mIoU"]) == pytest.approx((0.8 + 0.0) / 2)
    assert float(s["mAcc"]) == pytest.approx(0.8)


def test_empty_matrix_and_zero_rows_give_no_nan():
    for cm in (torch.zeros(4, 4, dtype=torch.long), torch.tensor([[3, 1], [0, 0]])):
        s = scores_from_confusion(cm, range(cm.shape[0]))
        for key, value in s.items():
            assert torch.isfinite(value).all(), key


def test_scores_refuse_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        scores_from_confusion(torch.zeros(3, 4), [0])


def _naive_confusion(pred, target, k, ignore):
    cm = np.zeros((k, k), dtype=np.int64)
    for p, t in zip(pred.ravel(), target.ravel()):
        if t != ignore:
            cm[t, p] += 1
    return cm


def test_confusion_from_arrays_matches_naive_loop():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 6, (2, 31, 17))
    target[rng.random(target.shape) < 0.2] = 255
    pred = rng.integers(0, 6, target.shape)
    expected = _naive_confusion(pred, target, 6, 255)
    got = confusion_from_arrays(torch.from_numpy(pred), torch.from_numpy(target), 6, 255)
    assert got.dtype == torch.long
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(confusion_from_arrays(pred, target, 6, 255).numpy(), expected)
    assert int(got.sum()) == int((target != 255).sum())


def test_confusion_from_arrays_agrees_with_torchmetrics():
    from torchmetrics.classification import MulticlassConfusionMatrix

    g = torch.Generator().manual_seed(4)
    target = torch.randint(0, 5, (3, 20, 20), generator=g)
    target[:, :2] = 0  # an in-range ignore id: those pixels vanish from the matrix
    pred = torch.randint(0, 5, target.shape, generator=g)
    ref = MulticlassConfusionMatrix(5, ignore_index=0)(pred, target)
    np.testing.assert_array_equal(confusion_from_arrays(pred, target, 5, 0), ref)


def test_confusion_from_arrays_chunks_add_up(monkeypatch):
    import rsfusion.training.metrics as metrics

    rng = np.random.default_rng(5)
    pred, target = rng.integers(0, 3, 1000), rng.integers(0, 3, 1000)
    whole = confusion_from_arrays(pred, target, 3)
    monkeypatch.setattr(metrics, "_CHUNK", 64)
    np.testing.assert_array_equal(confusion_from_arrays(pred, target, 3), whole)


def test_confusion_from_arrays_rejects_bad_input():
    t = torch.tensor([0, 1, 7])
    with pytest.raises(ValueError, match="target"):
        confusion_from_arrays(torch.tensor([0, 1, 1]), t, 3)
    with pytest.raises(ValueError, match="pred"):
        confusion_from_arrays(torch.tensor([0, 3, 1]), torch.tensor([0, 1, 1]), 3)
    with pytest.raises(ValueError, match="differ"):
        confusion_from_arrays(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_from_arrays(torch.zeros(3), torch.zeros(3, dtype=torch.long), 3)
    # all pixels ignored: an empty matrix, no error
    assert int(confusion_from_arrays(t, torch.full((3,), 255), 3, 255).sum()) == 0
