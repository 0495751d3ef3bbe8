"""Resume: N steps straight equal N/2 + --resume + N/2 with the same seed; mismatches refused."""

import re
import warnings

import pytest
import torch

from rsfusion.cli.train import main

TINY = [
    "data.window=32",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "data.train_tiles=[1,3]",
    "data.val_tiles=[2]",
    "data.eval_batch_size=4",
    "optim.total_steps=8",
    "optim.warmup_steps=2",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "data.augment.rot90=true",
]


def _train(root, out, *extra, resume=None):
    args = [
        "--cfg",
        "demo_baseline",
        "--out",
        str(out),
        "--set",
        f"data.root={root}",
        *TINY,
        *extra,
    ]
    if resume:
        args += ["--resume", str(resume)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_resume_gives_the_uninterrupted_result(tmp_path, vaihingen_root, capsys):
    straight = _train(vaihingen_root, tmp_path / "straight", "trainer.max_steps=8")
    first = _train(vaihingen_root, tmp_path / "first", "trainer.max_steps=4")
    assert first["global_step"] == 4
    resumed = _train(
        vaihingen_root,
        tmp_path / "second",
        "trainer.max_steps=8",
        resume=tmp_path / "first" / "checkpoints" / "last.ckpt",
    )
    assert resumed["global_step"] == straight["global_step"] == 8
    a, b = straight["state_dict"], resumed["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    digests = re.findall(r"weights sha256=(\w+)", capsys.readouterr().out)
    assert digests[0] == digests[2] != digests[1]


def test_resume_refuses_a_checkpoint_with_other_bands(tmp_path, vaihingen_root, capsys):
    _train(vaihingen_root, tmp_path / "a", "trainer.max_steps=1")
    args = [
        "--cfg",
        "demo_rgb",
        "--out",
        str(tmp_path / "b"),
        "--set",
        f"data.root={vaihingen_root}",
        *TINY,
        "trainer.max_steps=2",
        "--resume",
        str(tmp_path / "a" / "checkpoints" / "last.ckpt"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 2
    err = capsys.readouterr().err
    assert "x_bands ['elevation'] differ from this config's []" in err


def test_missing_checkpoint_file_is_named(tmp_path, vaihingen_root, capsys):
    args = [
        "--cfg",
        "demo_baseline",
        "--out",
        str(tmp_path / "c"),
        "--set",
        f"data.root={vaihingen_root}",
        *TINY,
        "--resume",
        str(tmp_path / "nope.ckpt"),
    ]
    assert main(args) == 2
    assert "nope.ckpt: no such checkpoint file" in capsys.readouterr().err


@pytest.mark.parametrize("frozen", [True])
def test_checkpoint_leaves_out_frozen_weights(frozen, tmp_path):
    from rsfusion.errors import CheckpointMismatchError
    from rsfusion.models.checkpoint import frozen_digest
    from rsfusion.training.task import SegmentationTask

    model = dict(name="rgb_only", num_classes=6, rgb_channels=3, x_channels=0)
    task = SegmentationTask(model, {}, 255, [0, 1, 2, 3, 4], list("abcdef"))
    task.model.net.encoder.requires_grad_(False)
    ckpt = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    keys = set(ckpt["state_dict"])
    assert not any(
        k.startswith("model.net.encoder.") and "running" not in k and "num_batches" not in k
        for k in keys
    )
    assert "model.net.encoder.bn1.running_mean" in keys  # buffers kept
    assert ckpt["rsfusion"]["frozen_sha256"] == frozen_digest(task.model)
    task.on_load_checkpoint(ckpt)  # frozen keys may be missing
    del ckpt["state_dict"]["model.net.segmentation_head.0.weight"]
    with pytest.raises(CheckpointMismatchError, match="segmentation_head"):
        task.on_load_checkpoint(ckpt)
