"""The demo configs keep training, validation (best checkpoint) and test tiles apart."""

from __future__ import annotations

import pytest

from rsfusion.config import load_config
from rsfusion.data.demo import DEMO_AREAS, DEMO_TEST_AREAS, DEMO_TRAIN_AREAS, DEMO_VAL_AREAS
from rsfusion.paths import configs_dir

DEMO_CONFIGS = sorted(p.stem for p in configs_dir().glob("demo_*.yaml"))


def _ids(tiles: list | None) -> set[str]:
    return {str(t) for t in tiles or ()}


def test_every_demo_config_is_checked() -> None:
    assert {"demo_baseline", "demo_mobanet", "demo_ktb", "demo_rgb"} <= set(DEMO_CONFIGS)


@pytest.mark.parametrize("name", DEMO_CONFIGS)
def test_splits_are_disjoint_after_base_resolution(name: str) -> None:
    data = load_config(name).data
    train, val, test = (_ids(t) for t in (data.train_tiles, data.val_tiles, data.test_tiles))
    # all three named: without val_tiles validation would fall back to the test tiles
    assert train and val and test, name
    assert not val & test and not train & val and not train & test, name
    assert train | val | test <= {str(a) for a in DEMO_AREAS}  # make_demo writes them all
    assert (train, val, test) == tuple(
        {str(a) for a in areas} for areas in (DEMO_TRAIN_AREAS, DEMO_VAL_AREAS, DEMO_TEST_AREAS)
    )


def test_the_area_lists_are_disjoint() -> None:
    parts = [set(DEMO_TRAIN_AREAS), set(DEMO_VAL_AREAS), set(DEMO_TEST_AREAS)]
    assert sum(map(len, parts)) == len(set(DEMO_AREAS)) == len(DEMO_AREAS)
