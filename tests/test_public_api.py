"""What a notebook imports is exported, and the docstring examples run with the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    ("package", "names"),
    [
        ("rsfusion.data", ["make_datamodule", "model_card"]),
        ("rsfusion.models", ["DualStreamEngine", "Recipe", "StageOutput", "SampleMeta",
                             "ModelSpec", "build_model"]),
        ("rsfusion.models.peft", ["LoRALinear", "inject_lora", "fold_lora", "CrossModalPrompt"]),
        ("rsfusion.training", ["SegmentationTask", "model_spec"]),
        ("rsfusion.inference", ["load_predictor", "predict_pair", "ModelRunner",
                                "PredictOptions"]),
        ("rsfusion.evaluation", ["evaluate", "EvalOptions", "save_overlay", "tile_labels"]),
        ("rsfusion.deploy", ["export_onnx", "load_onnx_predictor", "load_int8_predictor"]),
    ],
)  # fmt: skip
def test_subpackages_export_what_a_notebook_uses(package, names):
    import importlib

    module = importlib.import_module(package)
    assert set(names) <= set(module.__all__)
    assert all(callable(getattr(module, n)) for n in names)


def test_the_docstring_examples_are_collected():
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "rsfusion/models/engine.py", "rsfusion/models/backbones/base.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "engine.py::rsfusion.models.engine.DualStreamEngine" in out.stdout, out.stdout[-2000:]
    assert "base.py::rsfusion.models.backbones.base.StreamState" in out.stdout


def test_segmentation_task_from_config_builds_what_train_py_trains(vaihingen_root):
    from rsfusion.config import load_config
    from rsfusion.data import make_datamodule
    from rsfusion.training import SegmentationTask

    cfg = load_config("demo_baseline", [f"data.root={vaihingen_root}"])
    task = SegmentationTask.from_config(cfg, make_datamodule(cfg.data, cfg.seed))
    meta = task.hparams.meta
    assert meta["card"] == "vaihingen" and meta["model"]["modality"] == "dsm"
    assert meta["config"]["model"]["name"] == "early_fusion"
