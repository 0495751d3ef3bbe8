"""The LightningModule: masking and auxiliary supervision switched on from the config."""

import torch
from torch import nn

from rsfusion.training.task import SegmentationTask

MODEL = dict(name="early_fusion", num_classes=3, rgb_channels=3, x_channels=1)


class Recorder(nn.Module):
    """Stands in for a recipe: records its inputs, returns fixed main and aux logits."""

    def __init__(self, aux: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.aux = aux
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, rgb, x):
        self.seen.append((rgb.clone(), x.clone()))
        b, _, h, w = rgb.shape
        main = self.w.view(1, 3, 1, 1).expand(b, 3, h, w) + torch.tensor([5.0, 0, 0]).view(
            1, 3, 1, 1
        )
        if not self.aux:
            return main
        return {"out": main, "aux": {"rgb": torch.zeros(b, 3, h // 2, w // 2) + self.w.sum()}}


def _batch(b=4, size=16):
    torch.manual_seed(0)
    return {
        "image": torch.randn(b, 3, size, size) + 3,
        "image_x": torch.rand(b, 1, size, size) + 1,
        "mask": torch.randint(0, 3, (b, size, size)),
    }


def _task(**kw):
    task = SegmentationTask(MODEL, {}, 255, [0, 1, 2], ["a", "b", "c"], **kw)
    task.log = lambda *a, **k: None  # no trainer attached
    return task


def test_mcrm_masking_reaches_the_model_in_training_only():
    task = _task(masking={"mode": "mcrm", "fraction": 1.0})
    task.model = Recorder(aux=False)
    batch = _batch()
    task.train()
    task.training_step(batch, 0)
    rgb, x = task.model.seen[-1]
    zero_rgb = (rgb == 0).all(1).flatten(1).any(1)
    zero_x = (x == 0).all(1).flatten(1).any(1)
    assert zero_rgb.sum() == 2 and zero_x.sum() == 2 and not (zero_rgb & zero_x).any()
    task.eval()
    task.masking.eval()
    task(batch["image"], batch["image_x"])
    assert torch.equal(task.model.seen[-1][0], batch["image"])


def test_hard_pixel_aux_loss_is_added_with_its_weight():
    batch = _batch()
    plain, aux = _task(), _task(aux_loss={"mode": "hard", "weight": 0.5})
    plain.model, aux.model = Recorder(aux=True), Recorder(aux=True)
    loss_plain = plain.training_step(batch, 0)
    loss_aux = aux.training_step(batch, 0)
    # main head predicts class 0 everywhere; the aux head is uniform: CE = log 3 on hard pixels
    wrong = batch["mask"] != 0
    assert wrong.any()
    expected = loss_plain + 0.5 * torch.log(torch.tensor(3.0))
    assert torch.allclose(loss_aux, expected, atol=1e-5)


def test_missing_modality_evaluation_zeroes_the_dropped_input():
    task = _task()
    task.model = Recorder(aux=False)
    batch = _batch()
    for drop, zero_rgb, zero_x in ((None, False, False), ("x", False, True), ("rgb", True, False)):
        task.drop = drop
        task._step(batch)
        rgb, x = task.model.seen[-1]
        assert bool((rgb == 0).all()) == zero_rgb and bool((x == 0).all()) == zero_x
        assert torch.equal(rgb, batch["image"]) != zero_rgb
