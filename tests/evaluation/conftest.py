"""A tiny trained checkpoint of demo_baseline (early fusion) on the fake Vaihingen tiles, and
the evaluation settings the tests share: 32 px windows, test tiles 2 and 4 (40 x 48 px)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

#: the config overrides of the checkpoint (training and evaluation)
TINY = ["data.window=32", "data.batch_size=2", "data.samples_per_epoch=2",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "data.test_tiles=[2,4]",
        "data.eval_batch_size=4", "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false"]  # fmt: skip


def overrides(root: Path) -> list[str]:
    """The ``--set`` values of an evaluation of the tiny checkpoint on ``root``."""
    return [f"data.root={root}", *TINY]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, vaihingen_root) -> Path:
    """A one-step checkpoint of demo_baseline written by scripts/train.py."""
    from rsfusion.cli.train import main as train_main

    out = tmp_path_factory.mktemp("evaluation-run") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["--cfg", "demo_baseline", "--out", str(out), "--set",
                *overrides(vaihingen_root), "trainer.max_steps=1"]  # fmt: skip
        assert train_main(args) == 0
    return out / "checkpoints" / "last.ckpt"
