"""int8 quantisation: a tiny model calibrated on the fake Vaihingen tiles, its check (and the
refusal below the threshold), its provenance, the cache tied to its checkpoint, and prediction
through the ONNX Runtime wrapper onto the input's grid."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnx
import pytest
import rasterio
import torch

import rsfusion.deploy.quantize as quantize_module
from rsfusion.deploy.calibration import config_pairs, sample_windows
from rsfusion.deploy.onnx import OnnxModel, onnx_options, read_onnx_meta
from rsfusion.deploy.quantize import (
    QuantSettings,
    agreement,
    auto_int8,
    cache_path,
    cached,
    file_digest,
    first_last_nodes,
    load_int8_predictor,
    matching_nodes,
    quantize,
    read_int8,
)
from rsfusion.errors import ConfigError, ExportError, MissingFileError, PredictionError
from rsfusion.inference.predict import PredictOptions, predict_pair
from tests.deploy.cases import CASES, meta_for, tiny_checkpoint
from tests.deploy.conftest import FAST


def test_int8_model_of_a_checkpoint_runs_with_its_provenance(tiny):
    ckpt, _, meta, exported, result = tiny
    assert result.path == cache_path(ckpt) == ckpt.with_name("last.int8.onnx")
    assert not result.reused
    facts = read_int8(result.path)
    assert facts == result.provenance
    assert facts["source"]["sha256"] == file_digest(ckpt)["sha256"]
    assert facts["source"]["kind"] == "checkpoint" and facts["source"]["file"] == "last.ckpt"
    cal = facts["calibration"]
    assert cal["source"] == "training tiles" and cal["tiles"] == ["1", "3", "5"]
    assert cal["check_tiles"] == ["2", "4"] and cal["check_from"] == "other tiles (validation)"
    assert cal["calibration_windows"] == 4 and cal["check_windows"] == 4 and cal["window"] == 32
    assert facts["scheme"]["weights"] == "int8, symmetric, per channel"
    assert facts["scheme"]["activations"] == "uint8, asymmetric"
    check = facts["check"]
    assert check["passed"] and check["threshold"] == 0.0 and check["windows"] == 4
    assert check["miou_fp32"] is not None and check["labelled"] > 0  # the eroded labels
    # the graph is quantised: QDQ pairs, int8 convolution weights
    graph = onnx.load(str(result.path)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert any(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)
    # the metadata prediction reads is the float32 export's
    assert read_onnx_meta(result.path) == read_onnx_meta(exported) == meta
    model = OnnxModel(result.path, threads=1)
    assert model.precision == "int8" and "CPU int8 (" in model.describe()
    assert OnnxModel(exported).precision == "fp32"
    rgb, x = torch.randn(3, 3, 32, 32), torch.rand(3, 1, 32, 32)
    logits = model(rgb, x)
    assert logits.shape == (3, 6, 32, 32) and logits.dtype == torch.float32


def test_the_stored_check_is_the_measured_one(tiny):
    _, _, meta, exported, result = tiny
    calib, check, _ = config_pairs(meta)
    _, held, _ = sample_windows(meta, calib, check, 32, 4, 4, seed=0)
    found = agreement(OnnxModel(exported), OnnxModel(result.path), held, meta)
    assert found.equal == pytest.approx(result.provenance["check"]["equal"])
    assert found.windows == 4 and found.pixels == 4 * 32 * 32


def test_below_the_threshold_it_refuses_and_writes_nothing(tiny, tmp_path):
    _, _, _, exported, result = tiny
    equal = result.agreement.equal
    assert equal < 1.0  # random weights: some pixels change class, so 100 % refuses for real
    source = tmp_path / "model.onnx"
    source.write_bytes(exported.read_bytes())
    with pytest.raises(ExportError) as err:
        quantize(source, settings=QuantSettings(threshold=1.0, **FAST))
    text = str(err.value)
    assert f"int8 against float32: {100 * equal:.2f} % of pixels keep their float32" in text
    assert "short of the threshold of 100 % of pixels; nothing was written" in text
    for option in ("--exclude-first-last", "--calib-windows 8", "--method percentile",
                   "--exclude NODE"):  # fmt: skip
        assert option in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no file, no staging


def test_the_refusal_names_what_to_try(tiny, tmp_path, monkeypatch):
    _, _, _, exported, _ = tiny
    found = quantize_module.Agreement(0.95, 4, 4096, 0.6, 0.55, 900)
    text = str(quantize_module._refusal(found, QuantSettings(per_channel=False), "model.onnx"))
    assert "95.00 % of pixels" in text and "60.00 (float32) -> 55.00 (int8), -5.00 points" in text
    assert "per-channel weights (leave --per-tensor out)" in text
    # the mIoU guard, where asked for
    monkeypatch.setattr(quantize_module, "agreement", lambda *a, **k: found)
    source = tmp_path / "model.onnx"
    source.write_bytes(exported.read_bytes())
    with pytest.raises(ExportError, match="short of an mIoU drop of at most 1 points"):
        quantize(source, settings=QuantSettings(threshold=0.9, max_miou_drop=1.0, **FAST))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_first_and_last_layers_and_patterns_stay_float(tiny, tmp_path):
    _, _, _, exported, _ = tiny
    proto = onnx.load(str(exported))
    ends = first_last_nodes(proto)
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    # the encoder's first convolution, the classifier, and any layer a skip connection feeds
    # the raw input to
    assert ends[0] == convs[0] and ends[-1] == convs[-1] and len(ends) < len(convs) // 2
    assert matching_nodes(proto, [ends[0], "/model/*/segmentation_head/*"]) == [ends[0], convs[-1]]
    with pytest.raises(ConfigError, match="--exclude /nothing/\\*: names no node"):
        matching_nodes(proto, ["/nothing/*"])
    source = tmp_path / "model.onnx"
    source.write_bytes(exported.read_bytes())
    settings = QuantSettings(threshold=0.0, exclude_first_last=True, **FAST)
    result = quantize(source, settings=settings)  # a float32 .onnx as the source
    assert result.path == tmp_path / "model.int8.onnx"
    assert result.provenance["source"]["sha256"] == file_digest(source)["sha256"]
    assert result.provenance["source"]["kind"] == "onnx"
    assert result.provenance["scheme"]["float32_nodes"] == ends
    graph = onnx.load(str(result.path)).graph
    produced = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "Conv":  # float weights where excluded, int8 (dequantised) elsewhere
            weight = produced.get(node.input[1])
            quantised = weight is not None and weight.op_type == "DequantizeLinear"
            assert quantised == (node.name not in ends), node.name


def test_the_cache_is_tied_to_the_checkpoint(tiny, tmp_path, monkeypatch):
    ckpt_src, _, _, _, made = tiny
    ckpt = tmp_path / "last.ckpt"  # both files copied: the cache follows the bytes, not the path
    ckpt.write_bytes(ckpt_src.read_bytes())
    (tmp_path / "last.int8.onnx").write_bytes(made.path.read_bytes())
    settings = QuantSettings(threshold=0.0, **FAST)
    first = quantize(ckpt, settings=settings)
    assert first.path == tmp_path / "last.int8.onnx" and first.reused
    stamp = first.path.stat().st_mtime_ns
    again = quantize(ckpt, settings=settings)
    assert again.reused and again.path.stat().st_mtime_ns == stamp
    assert again.agreement == first.agreement
    # asked otherwise: made again (prediction's reuse_any takes any current one)
    assert quantize(ckpt, settings=settings, reuse_any=True).reused

    def no_data(*args, **kwargs):
        raise MissingFileError("the training data is not on this machine")

    with monkeypatch.context() as patch:  # a current model needs no calibration data
        patch.setattr(quantize_module, "config_pairs", no_data)
        assert quantize(ckpt, settings=settings).reused
        assert load_int8_predictor(ckpt)[0].path == first.path
        with pytest.raises(MissingFileError, match="not on this machine"):
            quantize(ckpt, settings=settings, force=True)

    class Sampled(Exception):
        pass

    def sample(*args, **kwargs):
        raise Sampled

    with monkeypatch.context() as patch:
        patch.setattr(quantize_module, "sample_windows", sample)
        with pytest.raises(Sampled):
            quantize(ckpt, settings=dataclasses.replace(settings, calib_windows=2))
    # --precision auto: only a model that passed at the default threshold (99.5 %)
    assert first.agreement.equal < 0.995 and auto_int8(ckpt) is None  # random weights
    monkeypatch.setattr(quantize_module, "DEFAULT_THRESHOLD", 0.5)  # as if it had passed
    assert auto_int8(ckpt) == first.path
    # the checkpoint changes (same name): the cached model is stale, and made again
    folder = tmp_path / "other"
    folder.mkdir()
    new, _, _ = tiny_checkpoint(folder, tiny[2].config["data"]["root"], seed=1)
    os.replace(new, ckpt)
    assert not cached(first.path, ckpt) and auto_int8(ckpt) is None
    model, meta = load_int8_predictor(ckpt)  # with the default settings
    facts = read_int8(first.path)
    assert facts["source"]["sha256"] == file_digest(ckpt)["sha256"] != first.provenance[
        "source"]["sha256"]  # fmt: skip
    assert facts["settings"]["calib_windows"] == 64 and model.precision == "int8"
    assert cached(first.path, ckpt) and model.path == first.path


def test_int8_prediction_lands_on_the_input_grid(tiny, tmp_path, vaihingen_root):
    _, _, meta, exported, result = tiny
    rgb = vaihingen_root / "top" / "top_mosaic_09cm_area2.tif"
    x = vaihingen_root / "dsm" / "dsm_09cm_matching_area2.tif"
    model, onnx_meta = load_int8_predictor(result.path)  # an int8 file runs as it is
    assert onnx_meta == meta and model.precision == "int8"
    options = onnx_options(PredictOptions(precision="int8"), result.path, model)
    assert options.precision == "fp32" and options.device == "cpu"  # no autocast on top
    written = predict_pair(model, onnx_meta, rgb, x, tmp_path / "int8", options)
    reference = predict_pair(
        OnnxModel(exported), meta, rgb, x, tmp_path / "fp32", onnx_options(PredictOptions(),
                                                                           exported)
    )  # fmt: skip
    with rasterio.open(rgb) as src, rasterio.open(written["classes"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        classes = out.read(1)
    with rasterio.open(reference["classes"]) as ref:
        equal = float((classes == ref.read(1)).mean())
    assert classes.max() < 6 and equal > 0.5  # the same model, in int8


def test_precisions_an_onnx_model_cannot_run_are_refused(tiny):
    _, _, _, exported, result = tiny
    int8, fp32 = OnnxModel(result.path), OnnxModel(exported)
    with pytest.raises(PredictionError, match="run by ONNX Runtime in int8"):
        onnx_options(PredictOptions(precision="fp32"), result.path, int8)
    with pytest.raises(PredictionError, match="quantise it first: python scripts/quantize.py"):
        onnx_options(PredictOptions(precision="int8"), exported, fp32)
    assert onnx_options(PredictOptions(), exported, fp32).precision == "fp32"


def test_bad_settings_are_refused():
    for settings, flag in (
        (QuantSettings(method="kl"), "--method kl"),
        (QuantSettings(calib_windows=0), "--calib-windows 0"),
        (QuantSettings(threshold=1.5), "--threshold 150"),
        (QuantSettings(max_miou_drop=-1.0), "--max-miou-drop -1"),
    ):
        with pytest.raises(ConfigError, match=flag):
            settings.check()


def test_agreement_counts_pixels_and_scores_labels():
    class Fixed(torch.nn.Module):
        def __init__(self, flip: bool) -> None:
            super().__init__()
            self.flip = flip

        def forward(self, rgb, x=None):
            logits = torch.zeros(len(rgb), 6, 4, 4)
            logits[:, 1] = 1.0
            if self.flip:
                logits[:, 2, 0, :] = 2.0  # one row of four changes class
            return logits

    from rsfusion.deploy.calibration import Windows

    labels = np.full((2, 4, 4), 1, np.int64)
    labels[:, 3] = 255  # unlabelled
    windows = Windows(np.zeros((2, 3, 4, 4), np.float32), None, labels)
    meta = meta_for(CASES["early_fusion"][0], 4)
    found = agreement(Fixed(False), Fixed(True), windows, meta)
    assert found.equal == pytest.approx(0.75) and found.pixels == 32 and found.labelled == 24
    assert found.miou_fp32 is not None and found.miou_change is not None
    assert found.miou_change < 0
