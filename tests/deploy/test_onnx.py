"""ONNX export: ONNX Runtime matches PyTorch for every registered architecture; input layouts,
metadata read back, refusals, and nothing half-written."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rsfusion.deploy.deepness import XFixed
from rsfusion.deploy.onnx import (
    OnnxModel,
    export_onnx,
    load_onnx_predictor,
    read_onnx_export,
    read_onnx_meta,
)
from rsfusion.errors import (
    CheckpointMismatchError,
    ExportError,
    MissingFileError,
    PredictionError,
    UnknownNameError,
)
from rsfusion.models.heads.ham import NMF2D
from rsfusion.registry import MODELS
from tests.deploy.cases import CASES, SLOW, build, inputs

#: what each case's export must have changed or chosen (checked, so a silent change shows)
EXPECTED = {
    "rgb_only": {"inputs": ["rgb"], "batch": "dynamic"},
    "early_fusion": {"inputs": ["rgb", "x"], "batch": "dynamic"},
    "mobanet": {"inputs": ["rgb", "x"], "batch": "dynamic", "pools": 3,
                "constant_position_embeddings": 1},
    "ktb": {"inputs": ["rgb", "x"], "batch": "dynamic"},
    "cpal": {"inputs": ["rgb", "x"], "batch": "dynamic", "lora": 2,
             "nmf_seeds": {"recipe.head.hamburger.ham": 0}},
    "segrgbx": {"inputs": ["rgb", "x"], "batch": 1},
}  # fmt: skip


def test_every_registered_architecture_has_a_parity_case():
    missing = sorted(set(MODELS) - set(CASES))
    assert not missing, f"add an ONNX parity case to tests/deploy/cases.py for {missing}"
    assert set(EXPECTED) == set(CASES)


def _reference(model: torch.nn.Module, rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PyTorch float32 logits. A Hamburger head draws random NMF bases on every call: with
    ``eval_seed`` 0 and one window at a time it draws what the export fixed."""
    nmf = [m for m in model.modules() if isinstance(m, NMF2D) and m.bases is None]
    with torch.no_grad():
        if not nmf:
            return model(rgb, x)
        for m in nmf:
            m.eval_seed = 0
        return torch.cat([model(rgb[i : i + 1], x[i : i + 1]) for i in range(len(rgb))])


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_onnx_runtime_matches_pytorch(case, tmp_path, record_property):
    model, meta = build(case)
    spec, window = CASES[case]
    result = export_onnx(model, meta, tmp_path / f"{case}.onnx")
    want = EXPECTED[case]
    assert list(result.inputs) == want["inputs"] and result.batch == want["batch"]
    for key in ("pools", "lora", "nmf_seeds", "constant_position_embeddings"):
        assert result.changes[key] == want.get(key, {} if key == "nmf_seeds" else 0), key
    onnx_model = OnnxModel(result.path, threads=1)
    rgb, x = inputs(spec, 3, window)  # a batch of 3: other than the traced 2 (and than 1)
    got = onnx_model(rgb, x)
    ref = _reference(model, rgb, x)  # after the export: the model is restored
    diff = float((got - ref).abs().max())
    agree = float((got.argmax(1) == ref.argmax(1)).float().mean())
    record_property("max_abs_diff", diff)
    print(f"{case}: max |ONNX Runtime - PyTorch| = {diff:.2e}, argmax equal {100 * agree:.3f} %")
    assert got.shape == ref.shape == (3, spec.num_classes, window, window)
    assert got.dtype == torch.float32
    assert diff < 1e-4, diff
    assert agree >= 0.999
    assert result.max_abs_diff < 1e-4 and result.agreement >= 0.999  # the export's own check


@pytest.fixture(scope="module")
def fusion(tmp_path_factory):
    """early_fusion (trained on 32 px windows) exported twice: as it is (no fixed X: inputs rgb
    and x), and for Deepness (X fixed: one stacked input) at another window."""
    model, meta = build("early_fusion")
    folder = tmp_path_factory.mktemp("fusion")
    separate = export_onnx(model, meta, folder / "separate.onnx")
    stacked = export_onnx(
        model, meta, folder / "stacked.onnx", window=48, x=XFixed(250.0, 50.0, "a test range")
    )
    return model, meta, separate, stacked


def test_layouts_give_the_same_logits(fusion):
    model, meta, separate, stacked = fusion
    assert list(separate.inputs) == ["rgb", "x"] and not separate.plan.compatible
    assert stacked.inputs == {"rgb_x": ["dynamic", 4, 48, 48]} and stacked.plan.compatible
    for result, window in ((separate, 32), (stacked, 48)):
        rgb, x = inputs(CASES["early_fusion"][0], 2, window)
        with torch.no_grad():
            ref = model(rgb, x)
        torch.testing.assert_close(OnnxModel(result.path)(rgb, x), ref, atol=1e-4, rtol=0)


def test_metadata_reads_back_as_the_checkpoints(fusion):
    _, meta, separate, stacked = fusion
    assert read_onnx_meta(separate.path) == meta
    facts = read_onnx_export(separate.path)
    assert facts["window"] == facts["training_window"] == 32 and facts["normalised_inputs"]
    assert facts["parity"]["argmax_equal"] >= 0.999 and facts["layout"] == "separate"
    # exported for another window: predict's default window is the fixed one
    assert read_onnx_meta(stacked.path) == dataclasses.replace(meta, window=48)
    assert read_onnx_export(stacked.path)["training_window"] == 32
    assert OnnxModel(stacked.path).window == 48


def test_wrong_window_and_missing_x_are_refused(fusion):
    _, _, separate, stacked = fusion
    model = OnnxModel(separate.path)
    with pytest.raises(PredictionError, match="windows of 32 x 32 px, got 40 x 40.*--window 32"):
        model(torch.rand(1, 3, 40, 40), torch.rand(1, 1, 40, 40))
    for result, window in ((separate, 32), (stacked, 48)):
        with pytest.raises(PredictionError, match="needs the X input"):
            OnnxModel(result.path)(torch.rand(1, 3, window, window), None)


def test_missing_foreign_and_corrupt_files_are_refused(fusion, tmp_path):
    import onnx

    with pytest.raises(MissingFileError, match="no such file"):
        read_onnx_meta(tmp_path / "none.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model" * 50)
    with pytest.raises(CheckpointMismatchError, match="cannot"):
        read_onnx_meta(garbage)
    with pytest.raises(CheckpointMismatchError, match="cannot be loaded"):
        OnnxModel(garbage)
    foreign = tmp_path / "foreign.onnx"
    proto = onnx.load(str(fusion[2].path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    for reader in (read_onnx_meta, OnnxModel):
        with pytest.raises(CheckpointMismatchError, match="carries no rsfusion metadata"):
            reader(foreign)


def test_the_dataset_and_modality_are_those_of_the_export(fusion):
    path = fusion[2].path
    model, meta = load_onnx_predictor(path, dataset="vaihingen", modality="dsm")
    assert isinstance(model, OnnxModel) and meta.card == "vaihingen"
    with pytest.raises(UnknownNameError, match="exported for 'vaihingen'"):
        load_onnx_predictor(path, dataset="potsdam")
    with pytest.raises(UnknownNameError, match="exported with X modality 'dsm'"):
        load_onnx_predictor(path, modality="depth")


def test_large_models_keep_their_weights_beside_the_file(fusion, tmp_path, monkeypatch):
    import onnx

    import rsfusion.deploy.onnx as deploy_onnx

    model, meta, separate, _ = fusion
    monkeypatch.setattr(deploy_onnx, "EXTERNAL_DATA_BYTES", 0)  # as if over the 2 GiB limit
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(separate.path, staging / "traced.onnx")
    props = {p.key: p.value for p in onnx.load(str(separate.path)).metadata_props}
    out = tmp_path / "out" / "big.onnx"
    out.parent.mkdir()
    assert deploy_onnx._finish(onnx, staging / "traced.onnx", staging, out, props)
    assert sorted(p.name for p in out.parent.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert out.stat().st_size < 100_000 < Path(f"{out}.data").stat().st_size
    rgb, x = inputs(CASES["early_fusion"][0], 2, 32)
    with torch.no_grad():
        torch.testing.assert_close(OnnxModel(out)(rgb, x), model(rgb, x), atol=1e-4, rtol=0)
    assert read_onnx_meta(out) == meta


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import rsfusion.deploy.onnx as deploy_onnx

    def trace(graph, args, path, *rest, **kwargs):  # a traced file (and external weights)
        path.write_bytes(b"traced")
        path.with_name("weights.bin").write_bytes(b"w")

    model, meta = build("rgb_only")
    monkeypatch.setattr(deploy_onnx, "_trace", trace)
    monkeypatch.setattr(deploy_onnx, "_compare", lambda *a, **k: (0.5, 0.9, 1.0))
    with pytest.raises(ExportError, match=r"differ from PyTorch's by up to 0\.5.*90\.000 %"):
        export_onnx(model, meta, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []  # no file under the final name, no staging folder


def test_the_metadata_is_plain_json(fusion):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(fusion[3].path)).metadata_props}
    values = {k: json.loads(v) for k, v in props.items()}  # every value is JSON
    assert values["deepness_compatible"] is True and "a test range" in values["deepness_note"]
    assert values["rsfusion"]["classes"] == fusion[1].classes
    mean = np.array(values["standardization_mean"])
    assert mean.shape == (4,) and np.isclose(mean[-1], 250.0 / 255)
