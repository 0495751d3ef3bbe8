"""Shared fixtures: paths of the committed fake datasets, offline hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub retry otherwise costs ~46 s
os.environ.setdefault("GDAL_CACHEMAX", "64")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def vaihingen_root() -> Path:
    """tests/data/vaihingen: areas 1, 3, 5 (train) and 2, 4 (test) in the release layout."""
    return DATA / "vaihingen"


@pytest.fixture(scope="session")
def potsdam_root() -> Path:
    """tests/data/potsdam: tiles 2_10, 2_11 (train) and 2_13 (test) in the release layout."""
    return DATA / "potsdam"


@pytest.fixture(scope="session")
def nyudepthv2_root() -> Path:
    """tests/data/nyudepthv2: NYU ids 2, 3, 4 (train) and 1, 8 (test), 40x56, CMX/DFormer layout."""
    return DATA / "nyudepthv2"


@pytest.fixture(scope="session")
def sunrgbd_root() -> Path:
    """tests/data/sunrgbd: 3 train and 2 test samples of different sizes, DFormer layout."""
    return DATA / "sunrgbd"


@pytest.fixture(scope="session")
def aloe_root() -> Path:
    """tests/data/aloe: Middlebury 2006 Aloe left view and GT disparity (scripts/fetch_aloe.py)."""
    return DATA / "aloe"


#: a demo_baseline run small enough for tests: 32 px windows, two steps, one validation batch
TINY_DEMO_RUN = ["data.window=32", "data.batch_size=2", "data.samples_per_epoch=4",
                 "data.train_tiles=[1,3]", "data.val_tiles=[2]", "trainer.max_steps=2",
                 "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"]  # fmt: skip


@pytest.fixture(scope="session")
def demo_ckpt(tmp_path_factory, vaihingen_root) -> Path:
    """``last.ckpt`` of a tiny demo_baseline training run on tests/data/vaihingen (trained once
    per session; tests that change a checkpoint copy it first)."""
    import warnings

    from rsfusion.cli.train import main as train_main

    out = tmp_path_factory.mktemp("demo_run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["--cfg", "demo_baseline", "--out", str(out), "--set",
                f"data.root={vaihingen_root}", *TINY_DEMO_RUN]  # fmt: skip
        assert train_main(args) == 0
    return out / "checkpoints" / "last.ckpt"
