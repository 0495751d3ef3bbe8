"""scripts/predict.py end to end on the fake Vaihingen tiles: georeferenced, blended, refused."""

import shutil
import warnings

import numpy as np
import pytest
import rasterio
import torch

from rsfusion.cli.predict import main as predict_main
from rsfusion.cli.train import main as train_main
from rsfusion.data.normalise import XNorm
from rsfusion.inference.predict import PredictOptions, load_predictor, predict_pair

TINY = ["data.window=32", "data.batch_size=2", "data.samples_per_epoch=4",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "trainer.max_steps=2",
        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"]  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, vaihingen_root):
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["--cfg", "demo_baseline", "--out", str(out), "--set",
                f"data.root={vaihingen_root}", *TINY]  # fmt: skip
        assert train_main(args) == 0
    return out / "checkpoints" / "last.ckpt"


def _pair(root):
    return root / "top" / "top_mosaic_09cm_area2.tif", root / "dsm" / "dsm_09cm_matching_area2.tif"


def test_outputs_land_on_the_input_grid_with_colours_and_names(ckpt, vaihingen_root, tmp_path):
    rgb, x = _pair(vaihingen_root)
    args = [
        "--ckpt",
        str(ckpt),
        "--rgb",
        str(rgb),
        "--x",
        str(x),
        "--out",
        str(tmp_path),
        "--probs",
        "--confidence",
        "--vector",
        "--cog",
        "--window",
        "32",
        "--overlap",
        "8",
    ]
    assert predict_main(args) == 0
    with rasterio.open(rgb) as a, rasterio.open(tmp_path / f"{rgb.stem}_classes.tif") as b:
        assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
        classes = b.read(1)
        assert b.colormap(1)[1][:3] == (0, 0, 255) and "building" in b.tags()["CLASS_NAMES"]
        assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert classes.max() < 6
    with rasterio.open(tmp_path / f"{rgb.stem}_probs.tif") as p:
        probs = p.read().astype(int)
    assert probs.shape[0] == 6 and np.all(np.abs(probs.sum(0) - 255) <= 6)
    assert np.array_equal(probs.argmax(0)[probs.max(0) > 140], classes[probs.max(0) > 140])
    assert (tmp_path / f"{rgb.stem}.gpkg").is_file()
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_one_window_equals_a_direct_forward(ckpt, vaihingen_root, tmp_path):
    model, meta = load_predictor(ckpt)
    rgb, x = _pair(vaihingen_root)
    written = predict_pair(model, meta, rgb, x, tmp_path, PredictOptions(window=64, overlap=0))
    with rasterio.open(rgb) as a, rasterio.open(x) as b:
        img, dsm = a.read().astype(np.float32), b.read().astype(np.float32)
    mean = np.asarray(meta["rgb_norm"]["mean"], np.float32).reshape(-1, 1, 1)
    std = np.asarray(meta["rgb_norm"]["std"], np.float32).reshape(-1, 1, 1)
    off, scale = XNorm(**meta["x_norm"]).affine(str(x))
    pad = ((0, 0), (0, 64 - img.shape[1]), (0, 64 - img.shape[2]))
    # as in training: RGB padded with pixel value 0, X with 0 after normalisation
    rgb_t = torch.from_numpy((np.pad(img, pad) - mean) / std)[None]
    x_t = torch.from_numpy(np.pad((dsm - off) / scale, pad))[None]
    with torch.no_grad():
        expected = model(rgb_t, x_t)[0].argmax(0).numpy()[: img.shape[1], : img.shape[2]]
    with rasterio.open(written["classes"]) as out:
        assert np.array_equal(out.read(1), expected)


def test_misaligned_x_is_refused_or_aligned(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, x = _pair(vaihingen_root)
    shifted = tmp_path / "dsm.tif"
    shutil.copy(x, shifted)
    with rasterio.open(shifted, "r+") as dst:
        dst.transform = dst.transform * rasterio.Affine.translation(2, 0)
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(shifted), "--out",
            str(tmp_path / "o")]  # fmt: skip
    assert predict_main(args) == 2
    assert "--align" in capsys.readouterr().err
    assert predict_main([*args, "--align"]) == 0


def test_wrong_band_count_is_refused(ckpt, vaihingen_root, tmp_path, capsys):
    rgb, _ = _pair(vaihingen_root)
    args = ["--ckpt", str(ckpt), "--rgb", str(rgb), "--x", str(rgb), "--out", str(tmp_path)]
    assert predict_main(args) == 2
    assert "has 3 bands, the checkpoint expects ['elevation']" in capsys.readouterr().err
