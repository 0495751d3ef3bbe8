"""Text table, JSON and confusion-figure reports, checked against hand-computed numbers."""

import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from PIL import Image

from rsfusion.training.metrics import scores_from_confusion
from rsfusion.training.reports import (
    format_class_table,
    normalise_confusion,
    save_confusion_figure,
    save_scores_json,
    scores_to_json,
)

ISPRS = ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]


@pytest.fixture
def cm3() -> torch.Tensor:
    # road: tp 8, gt 10, pred 9 | tree: tp 6, gt 8, pred 9 | clutter: tp 1, gt 2, pred 2
    return torch.tensor([[8, 2, 0], [1, 6, 1], [0, 1, 1]])


def test_table_has_hand_computed_numbers_and_marks_clutter(cm3):
    s = scores_from_confusion(cm3, [0, 1])
    table = format_class_table(s, ["road", "tree", "clutter"], [0, 1])
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    # road: F1 = 16 / 19, IoU = 8 / 11, Acc = 8 / 10
    assert rows["road"] == ["84.21", "72.73", "80.00"]
    # tree: F1 = 12 / 17, IoU = 6 / 11, Acc = 6 / 8
    assert rows["tree"] == ["70.59", "54.55", "75.00"]
    # clutter: F1 = 2 / 4, IoU = 1 / 3, Acc = 1 / 2, and starred
    assert rows["clutter"] == ["*", "50.00", "33.33", "50.00"]
    assert rows["OA"] == ["75.00"]  # 15 / 20
    assert rows["mF1"] == [f"{100 * (16 / 19 + 12 / 17) / 2:.2f}"]
    assert rows["mIoU"] == [f"{100 * (8 / 11 + 6 / 11) / 2:.2f}"]
    assert rows["mAcc"] == ["77.50"]
    assert "* excluded from mF1 / mIoU / mAcc" in table
    widths = {len(line) for line in table.splitlines()[:6]}
    assert len(widths) == 1  # header, rules and class rows line up


def test_table_without_excluded_class_has_no_star_and_dashes_absent_class():
    cm = torch.tensor([[5, 0, 0], [0, 0, 0], [1, 0, 4]])
    table = format_class_table(scores_from_confusion(cm, range(3)), ["a", "b", "c"], range(3))
    assert "*" not in table
    row_b = next(line for line in table.splitlines() if line.startswith("b "))
    assert row_b.split() == ["b", "-", "-", "-"]
    assert "nan" not in table.lower()


def test_json_round_trips_with_per_class_values(cm3, tmp_path):
    s = scores_from_confusion(cm3, [0, 1])
    data = scores_to_json(s, ["road", "tree", "clutter"])
    assert data == json.loads(json.dumps(data, allow_nan=False))
    assert data["OA"] == pytest.approx(0.75) and isinstance(data["OA"], float)
    assert data["per_class"]["tree"]["IoU"] == pytest.approx(6 / 11)
    assert data["per_class"]["clutter"]["Precision"] == pytest.approx(0.5)
    assert data["per_class"]["road"]["Support"] == 10
    assert isinstance(data["per_class"]["road"]["Support"], int)
    path = save_scores_json(s, ["road", "tree", "clutter"], tmp_path / "sub" / "scores.json")
    assert json.loads(path.read_text()) == data
    assert [p.name for p in path.parent.iterdir()] == ["scores.json"]  # no temp file left


def test_json_refuses_mismatched_class_names(cm3):
    with pytest.raises(ValueError, match="shape"):
        scores_to_json(scores_from_confusion(cm3, [0]), ["a", "b"])


def test_normalise_rows_columns_all_and_zero_rows():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    rows = normalise_confusion(cm, "true")
    np.testing.assert_allclose(rows, [[0.75, 0.25, 0], [0, 0, 0], [0.5, 0, 0.5]])
    cols = normalise_confusion(torch.tensor(cm), "pred")
    np.testing.assert_allclose(cols, [[0.6, 1, 0], [0, 0, 0], [0.4, 0, 1]])
    np.testing.assert_allclose(normalise_confusion(cm, "all"), cm / 8)
    np.testing.assert_array_equal(normalise_confusion(cm, None), cm)
    assert np.isfinite(normalise_confusion(np.zeros((3, 3)), "true")).all()
    with pytest.raises(ValueError, match="normalise"):
        normalise_confusion(cm, "rows")  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [2, 6, 40])
def test_confusion_figure_is_a_png_and_leaves_no_temp_file(tmp_path, k):
    rng = np.random.default_rng(k)
    cm = np.eye(k, dtype=np.int64) * 100
    cm[rng.integers(0, k, 3 * k), rng.integers(0, k, 3 * k)] += 7  # NYU-like: mostly sparse
    cm[k - 1] = 0  # a class with no ground-truth pixels
    names = ISPRS if k == 6 else [f"class {i}" for i in range(k)]
    out = save_confusion_figure(torch.from_numpy(cm), names, tmp_path / "cm.png")
    assert out == tmp_path / "cm.png"
    img = imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.05  # something was drawn
    with Image.open(out) as im:
        assert im.format == "PNG" and min(im.size) > 100
        assert im.size[0] > 40 * k  # the figure grows with the classes
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    target = tmp_path / "cm.png"
    target.write_bytes(b"old")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        save_confusion_figure(np.eye(3, dtype=int), ["a", "b", "c"], target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def test_confusion_figure_refuses_wrong_number_of_names(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        save_confusion_figure(np.eye(3, dtype=int), ["a", "b"], tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []
