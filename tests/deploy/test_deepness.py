"""Deepness metadata: the documented keys with their JSON types, and a standardisation that
gives the model exactly rsfusion's normalised inputs (or an incompatibility, with its reason)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from rsfusion.deploy.deepness import (
    DEEPNESS_KEYS,
    deepness_metadata,
    deepness_plan,
    fixed_x,
    resolution_cm,
    stack_vrt,
)
from rsfusion.errors import ConfigError, PredictionError
from rsfusion.inference.predict import pair_spec
from tests.deploy.cases import CASES, meta_for

#: the keys of Deepness's "add metadata to model" page a segmentation model uses, and their
#: documented types (``tile_size`` is the name the plugin's code reads for ``tiles_size``)
DOCUMENTED = {
    "model_type": str, "class_names": dict, "resolution": float, "tiles_size": int,
    "tiles_overlap": int, "standardization_mean": list, "standardization_std": list,
    "seg_thresh": float,
}  # fmt: skip
SPEC = CASES["early_fusion"][0]


def deepness_preprocess(tile: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """Deepness's preprocessing of a tile (H, W, C) as its model wrapper does it: divide by 255,
    standardise per channel, channels first."""
    t = np.float32(tile[None] * 1.0 / 255.0)
    t = (t - np.array(mean)) / np.array(std)
    return np.transpose(t, (0, 3, 1, 2)).astype(np.float32)


def _metadata(meta, x=None, takes_x=True, window=256, overlap=64):
    plan = deepness_plan(meta, takes_x, x)
    return plan, {
        k: json.loads(v) for k, v in deepness_metadata(meta, window, overlap, plan).items()
    }


def test_an_rgb_model_gets_every_documented_key_with_its_type():
    meta = meta_for(CASES["rgb_only"][0], 256, x_bands=[], x_modality=None)
    plan, values = _metadata(meta, takes_x=False)
    assert plan.compatible
    assert set(values) == set(DOCUMENTED) | {"tile_size"}
    for key, kind in DOCUMENTED.items():
        assert isinstance(values[key], kind if kind is not float else (int, float)), key
    for key, kind in DEEPNESS_KEYS.items():
        assert isinstance(values[key], kind), key
    assert values["model_type"] == "Segmentor" and values["seg_thresh"] == 0  # logits: no threshold
    names = values["class_names"]
    assert [int(k) for k in names] == list(range(6)) and list(names.values()) == meta.classes
    assert values["resolution"] == 9.0  # Vaihingen's 9 cm GSD
    assert values["tiles_size"] == values["tile_size"] == 256 and values["tiles_overlap"] == 25
    assert len(values["standardization_mean"]) == len(values["standardization_std"]) == 3


def test_deepness_standardisation_gives_rsfusions_inputs(vaihingen_root):
    """RGB from rsfusion's 0-255 statistics, X fixed from one raster: Deepness's /255 and
    standardisation of the stacked layer equal rsfusion's normalisation of that pair."""
    rgb_path = vaihingen_root / "top" / "top_mosaic_09cm_area1.tif"
    x_path = vaihingen_root / "dsm" / "dsm_09cm_matching_area1.tif"
    meta = meta_for(SPEC, 32)
    x = fixed_x(meta, x_raster=x_path)
    plan, values = _metadata(meta, x)
    assert plan.compatible and "dsm_09cm_matching_area1.tif" in plan.note
    with rasterio.open(rgb_path) as src, rasterio.open(x_path) as xsrc:
        rgb, dsm = src.read(), xsrc.read()
    stacked = np.concatenate([rgb.astype(np.float32), dsm.astype(np.float32)]).transpose(1, 2, 0)
    got = deepness_preprocess(
        stacked, values["standardization_mean"], values["standardization_std"]
    )
    norm = pair_spec(meta, rgb_path, x_path).norm  # what rsfusion's prediction does
    r, s = norm(torch.from_numpy(rgb[None]), torch.from_numpy(dsm[None]))
    want = torch.cat([r, s], dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert want[:, 3].min() == 0.0 and np.isclose(want[:, 3].max(), 1.0)  # the raster's min-max


def test_per_raster_min_max_is_not_deepness_compatible_without_a_fixed_range():
    plan, values = _metadata(meta_for(SPEC, 32))
    assert not plan.compatible and values == {}
    assert "each raster's own minimum and maximum" in plan.note and "--x-raster" in plan.note
    plan, values = _metadata(meta_for(SPEC, 32), fixed_x(meta_for(SPEC, 32), x_range=(0, 40)))
    assert plan.compatible and values["standardization_std"][-1] == pytest.approx(40 / 255)
    assert "differs from rsfusion's on rasters whose range differs" in plan.note


@pytest.mark.parametrize(
    ("x_norm", "offset", "scale"),
    [({"mode": "dataset", "scale": 1.0, "mean": 12.0, "std": 4.0}, 12.0, 4.0),
     ({"mode": "scale", "scale": 255.0, "mean": None, "std": None}, 0.0, 255.0)],
)  # fmt: skip
def test_fixed_x_normalisations_are_exact_and_not_overridden(x_norm, offset, scale):
    meta = meta_for(SPEC, 32, x_norm=x_norm)
    x = fixed_x(meta)
    assert (x.offset, x.scale) == (offset, scale) and "as rsfusion uses" in x.statistic
    plan = deepness_plan(meta, True, x)
    assert plan.compatible and "differs" not in plan.note
    assert plan.mean[-1] == pytest.approx(offset / 255) and plan.std[-1] == pytest.approx(
        scale / 255
    )
    with pytest.raises(ConfigError, match="fixed already"):
        fixed_x(meta, x_range=(0, 1))


def test_refusals_and_omissions():
    with pytest.raises(ConfigError, match="must exceed the minimum"):
        fixed_x(meta_for(SPEC, 32), x_range=(5, 5))
    natural = meta_for(SPEC, 32, kind="natural", x_encoding="hha")
    plan = deepness_plan(natural, True, fixed_x(natural, x_range=(0, 1)))
    assert not plan.compatible and "'hha'" in plan.note
    unknown = meta_for(CASES["rgb_only"][0], 32, card="no_such_card")
    assert resolution_cm(unknown) is None
    _, values = _metadata(unknown, takes_x=False)
    assert "resolution" not in values and "class_names" in values  # omitted, not guessed
    assert resolution_cm(meta_for(SPEC, 32, card="potsdam")) == 5.0


def test_stack_vrt_is_the_rgb_bands_then_x(vaihingen_root, tmp_path):
    rgb_path = vaihingen_root / "top" / "top_mosaic_09cm_area1.tif"
    x_path = vaihingen_root / "dsm" / "dsm_09cm_matching_area1.tif"
    out = stack_vrt(rgb_path, x_path, tmp_path / "stack.vrt")
    with rasterio.open(out) as stack, rasterio.open(rgb_path) as src, rasterio.open(x_path) as x:
        assert stack.count == 4 and stack.dtypes == ("uint8", "uint8", "uint8", "float32")
        assert (stack.crs, stack.transform, stack.shape) == (src.crs, src.transform, src.shape)
        assert np.array_equal(stack.read([1, 2, 3]), src.read())
        assert np.array_equal(stack.read(4), x.read(1))
    assert [p.name for p in tmp_path.iterdir()] == ["stack.vrt"]  # no staging left
    other = vaihingen_root / "dsm" / "dsm_09cm_matching_area5.tif"  # another grid
    with pytest.raises(PredictionError, match="not on the grid"):
        stack_vrt(rgb_path, other, tmp_path / "bad.vrt")
    assert not (tmp_path / "bad.vrt").exists()
