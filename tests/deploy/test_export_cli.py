"""scripts/export.py end to end: a trained checkpoint to a .onnx that predicts as the checkpoint
(same windows, blending and writers), a Deepness export of an RGB+X model, and refusals."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch

from rsfusion.cli.export import main as export_main
from rsfusion.cli.train import main as train_main
from rsfusion.deploy.onnx import OnnxModel, load_onnx_predictor, read_onnx_meta
from rsfusion.inference.predict import PredictOptions, load_predictor, pair_spec, predict_pair
from tests.deploy.test_deepness import deepness_preprocess

TINY = ["data.window=28", "data.batch_size=2", "data.samples_per_epoch=4",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "data.test_tiles=[2]",
        "data.eval_batch_size=4", "trainer.enable_progress_bar=false"]  # fmt: skip
MOBANET = ["model.name=mobanet", "model.backbone=vit_small_patch14_dinov2",
           "model.kwargs={backbone_kwargs: {depth: 2, embed_dim: 32, num_heads: 2}, "
           "proj_dim: 16, head_channels: 8}"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vaihingen_root):
    """A MoBaNet (tiny ViT, UPerNet head) trained for 2 steps on the fake Vaihingen tiles."""
    out = tmp_path_factory.mktemp("run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["--cfg", "demo_baseline", "--out", str(out), "--set",
                f"data.root={vaihingen_root}", *TINY, *MOBANET, "trainer.max_steps=2",
                "trainer.limit_val_batches=1"]  # fmt: skip
        assert train_main(args) == 0
    return out / "checkpoints" / "last.ckpt"


def _pair(root, area: int):
    return (root / "top" / f"top_mosaic_09cm_area{area}.tif",
            root / "dsm" / f"dsm_09cm_matching_area{area}.tif")  # fmt: skip


def test_export_then_predict_like_the_checkpoint(trained, tmp_path, vaihingen_root, capsys):
    onnx_path = tmp_path / "model.onnx"
    assert export_main(["--ckpt", str(trained), "--onnx", str(onnx_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {onnx_path}" in out and "inputs rgb (batch x 3 x 28 x 28), x (batch" in out
    assert "argmax equal on 100.000 % of pixels" in out
    assert "Deepness: NOT compatible: rsfusion normalises X (dsm) by each raster's own" in out
    model, meta = load_predictor(trained)
    assert read_onnx_meta(onnx_path) == meta
    onnx_model, onnx_meta = load_onnx_predictor(onnx_path)
    rgb, x = _pair(vaihingen_root, 2)  # a test tile: the windows, blending and writers of predict
    options = PredictOptions(device="cpu", precision="fp32", probs=True)
    torch_out = predict_pair(model, meta, rgb, x, tmp_path / "torch", options)
    onnx_out = predict_pair(onnx_model, onnx_meta, rgb, x, tmp_path / "onnx", options)
    with rasterio.open(torch_out["classes"]) as a, rasterio.open(onnx_out["classes"]) as b:
        equal = float((a.read() == b.read()).mean())
        assert (a.crs, a.transform) == (b.crs, b.transform)
    print(f"predict.py classes, ONNX Runtime vs checkpoint: {100 * equal:.3f} % equal")
    assert equal >= 0.999
    with rasterio.open(torch_out["probs"]) as a, rasterio.open(onnx_out["probs"]) as b:
        assert np.abs(a.read().astype(int) - b.read().astype(int)).max() <= 1


def test_export_for_deepness_runs_as_rsfusion(trained, tmp_path, vaihingen_root, capsys):
    """With --deepness-pair the model takes Deepness's one stacked layer and OUT.vrt is that
    layer: Deepness's reading and preprocessing of it give the logits rsfusion gives."""
    import onnxruntime

    rgb_path, x_path = _pair(vaihingen_root, 1)
    onnx_path = tmp_path / "deepness.onnx"
    args = ["--ckpt", str(trained), "--onnx", str(onnx_path), "--deepness-pair", str(rgb_path),
            str(x_path)]  # fmt: skip
    assert export_main(args) == 0
    out = capsys.readouterr().out
    assert "inputs rgb_x (batch x 4 x 28 x 28)" in out and "Deepness: ready (one input" in out
    assert f"wrote {tmp_path / 'deepness.vrt'}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deepness.onnx", "deepness.vrt"]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()) == 1  # Deepness loads models of one input only
    props = session.get_modelmeta().custom_metadata_map
    mean, std = (json.loads(props[k]) for k in ("standardization_mean", "standardization_std"))
    with rasterio.open(tmp_path / "deepness.vrt") as stack:  # each band's raw values
        assert stack.dtypes == ("uint8", "uint8", "uint8", "float32")
        tile = np.stack([stack.read(b)[:28, :28].astype(np.float32) for b in range(1, 5)], -1)
    deepness = session.run(None, {"rgb_x": deepness_preprocess(tile, mean, std)})[0]
    meta = read_onnx_meta(onnx_path)
    with rasterio.open(rgb_path) as src, rasterio.open(x_path) as xsrc:
        rgb, dsm = src.read()[:, :28, :28], xsrc.read()[:, :28, :28]
    assert np.array_equal(tile, np.concatenate([rgb, dsm]).astype(np.float32).transpose(1, 2, 0))
    norm = pair_spec(meta, rgb_path, x_path).norm  # rsfusion's normalisation of this pair
    r, s = norm(torch.from_numpy(rgb[None]), torch.from_numpy(dsm[None]))
    np.testing.assert_allclose(deepness, OnnxModel(onnx_path)(r, s).numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt", "{tmp}/none.ckpt", "--onnx", "{tmp}/m.onnx"], "no such checkpoint file"),
        (["--ckpt", "{ckpt}", "--onnx", "{tmp}/m.pt"], "ending in .onnx"),
        (["--ckpt", "{ckpt}", "--onnx", "{tmp}/m.onnx", "--window", "0"], "--window 0"),
        (["--ckpt", "{ckpt}", "--onnx", "{tmp}/m.onnx", "--x-range", "5", "1"], "must exceed"),
        (["--ckpt", "{ckpt}", "--onnx", "{tmp}/m.onnx", "--overlap", "28"], "below the window"),
        (["--ckpt", "{ckpt}", "--onnx", "{tmp}/m.onnx", "--deepness-pair", "{rgb}", "{x5}"],
         "not on the grid"),
    ],
)  # fmt: skip
def test_refusals_are_one_error_line(extra, message, trained, tmp_path, vaihingen_root, capsys):
    rgb, _ = _pair(vaihingen_root, 1)
    _, x5 = _pair(vaihingen_root, 5)  # area 5's DSM lies on another grid (1 m pixels)
    args = [a.format(tmp=tmp_path, ckpt=trained, rgb=rgb, x5=x5) for a in extra]
    assert export_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []  # nothing written
