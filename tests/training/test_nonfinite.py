"""Non-finite values never train silently: a NaN/inf loss or weights stop training with one
``error:`` line naming the step, and ``last.ckpt`` stays the last finite state."""

from __future__ import annotations

import warnings

import pytest
import torch

from rsfusion.cli.train import main
from rsfusion.errors import NonFiniteError
from rsfusion.training.task import SegmentationTask

TINY = ["data.window=32", "data.batch_size=2", "data.samples_per_epoch=2",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false"]  # fmt: skip


def _task() -> SegmentationTask:
    model = dict(name="rgb_only", num_classes=3, rgb_channels=3, x_channels=0)
    return SegmentationTask(model, {}, 255, [0, 1, 2], list("abc"))


def test_a_nan_loss_stops_and_an_unlabelled_batch_does_not():
    task = _task()
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(NonFiniteError, match=r"training stopped at step 0 .*the loss is nan"):
        task.finite_loss(torch.tensor(float("nan")), target)
    with pytest.raises(NonFiniteError, match="the loss is inf"):
        task.finite_loss(torch.tensor(float("inf")), target)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits, target)
    same = task.finite_loss(loss, target)
    assert same.item() == loss.item()
    (grad,) = torch.autograd.grad(same, logits, retain_graph=True)
    assert torch.allclose(grad, torch.autograd.grad(loss, logits)[0])
    unlabelled = torch.full((2, 4, 4), 255)  # cross-entropy's 0/0 on a batch with no label
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    nan = torch.nn.functional.cross_entropy(logits, unlabelled, ignore_index=255)
    zero = task.finite_loss(nan, unlabelled)
    assert torch.isnan(nan) and zero.item() == 0.0
    zero.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_non_finite_weights_are_never_written_to_a_checkpoint():
    task = _task()
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)  # finite: written
    name = "model.net.segmentation_head.0.weight"
    checkpoint = {"state_dict": {**task.state_dict(), name: torch.full((3, 16, 3, 3), torch.inf)}}
    with pytest.raises(NonFiniteError, match=rf"1 of \d+ weight tensors \(e.g. {name}\) hold"):
        task.on_save_checkpoint(checkpoint)


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_finite_checkpoint(
    tmp_path, vaihingen_root, capsys
):
    # the LR warms up from 0: step 0 changes nothing (epoch 0 of one step ends finite and
    # writes last.ckpt), then an absurd LR makes the weights and the loss explode
    out = tmp_path / "run"
    args = ["--cfg", "demo_baseline", "--out", str(out), "--set", f"data.root={vaihingen_root}",
            *TINY, "optim.lr=1e12", "optim.warmup_steps=2", "trainer.max_steps=6"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    last = out / "checkpoints" / "last.ckpt"
    line = errors[0]
    assert line.startswith("error: training stopped at step ") and "optim.lr" in line, line
    assert any(s in line for s in ("the loss is nan", "the loss is inf", "hold NaN or inf"))
    assert f"the last finite checkpoint is {last}" in line
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no interrupted.ckpt
