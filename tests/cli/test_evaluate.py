"""scripts/evaluate.py: a trained checkpoint scored with both inputs, RGB only and X only."""

import json
import warnings

import pytest
import torch

from rsfusion.cli.evaluate import main as evaluate_main
from rsfusion.cli.train import main as train_main

TINY = ["data.window=28", "data.batch_size=2", "data.samples_per_epoch=4",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "data.test_tiles=[2,4]",
        "data.eval_batch_size=4", "trainer.enable_progress_bar=false"]  # fmt: skip
MOBANET = ["model.name=mobanet", "model.backbone=vit_small_patch14_dinov2",
           "model.kwargs={backbone_kwargs: {depth: 2, embed_dim: 32, num_heads: 2}, "
           "proj_dim: 16, head_channels: 8}",
           "model.aux_loss.mode=hard", "model.masking.mode=mcrm"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vaihingen_root):
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["--cfg", "demo_baseline", "--out", str(out), "--set",
                f"data.root={vaihingen_root}", *TINY, *MOBANET, "trainer.max_steps=4",
                "trainer.limit_val_batches=1"]  # fmt: skip
        assert train_main(args) == 0
    return out / "checkpoints" / "last.ckpt"


def _evaluate(ckpt, out, root, *extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_main(["--ckpt", str(ckpt), "--cfg", "demo_baseline", "--out", str(out),
                              "--set", f"data.root={root}", *TINY, *MOBANET, *extra])  # fmt: skip


def test_missing_modality_table(trained, tmp_path, vaihingen_root, capsys):
    assert _evaluate(trained, tmp_path / "eval", vaihingen_root) == 0
    table = capsys.readouterr().out
    assert "RGB + X" in table and "RGB only (X zeroed)" in table and "X only (RGB zeroed)" in table
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"both", "rgb", "x"}
    assert all(0.0 <= m["mIoU"] <= 1.0 for m in metrics.values())
    support = {m: [c["Support"] for c in v["per_class"].values()] for m, v in metrics.items()}
    assert support["both"] == support["rgb"] == support["x"] and sum(support["both"]) > 0
    assert (tmp_path / "eval" / "reports" / "test_rgb_only_scores.json").is_file()


def test_slim_checkpoint_lacks_the_frozen_backbone(trained):
    ckpt = torch.load(trained, map_location="cpu", weights_only=False)
    assert not any(k.startswith("model.backbone.") for k in ckpt["state_dict"])
    assert any(k.startswith("model.recipe.cpia.") for k in ckpt["state_dict"])
    assert len(ckpt["rsfusion"]["frozen_sha256"]) == 64


def test_a_different_frozen_backbone_is_refused(trained, tmp_path, vaihingen_root, capsys):
    code = _evaluate(trained, tmp_path / "e2", vaihingen_root, "seed=7")  # other random init
    assert code == 2
    assert "frozen backbone with sha256" in capsys.readouterr().err
