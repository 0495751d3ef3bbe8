"""The installed plugin in QGIS's own Python: no torch, the provider and its two algorithms."""

from __future__ import annotations

IMPORTS = """
from rsfusion import algorithms, environment, provider, runner
reg = QgsApplication.processingRegistry()
alg = reg.algorithmById("rsfusion:predict")
params = {p.name(): bool(p.flags() & QgsProcessingParameterDefinition.FlagOptional)
          for p in alg.parameterDefinitions()}
done({
    "torch": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "rasterio")),
    "foreign": sorted(m for m, mod in sys.modules.items() if m.split(".")[0] == "rsfusion"
                      and not (getattr(mod, "__file__", "") or "").startswith(VALUES["plugins"])),
    "algorithms": sorted(a.id() for a in reg.providerById("rsfusion").algorithms()),
    "params": params,
    "enum": alg.parameterDefinition("PRECISION").options(),
})
"""


def test_the_plugin_loads_in_qgis_python_without_torch(qgis):
    found = qgis.pyqgis(IMPORTS)
    assert found["torch"] == []  # neither torch nor rasterio: QGIS's Python has neither
    assert found["foreign"] == []  # every rsfusion module is the installed plugin's
    assert found["algorithms"] == ["rsfusion:predict", "rsfusion:predict_folder"]
    params = found["params"]
    for name in ("CHECKPOINT", "RGB", "OUTPUT"):
        assert params[name] is False  # required
    for name in ("X", "DATASET", "MODALITY", "WINDOW", "OVERLAP"):
        assert params[name] is True  # optional
    assert {"PRECISION", "PROBABILITIES", "CONFIDENCE", "VECTOR", "MIN_AREA", "COG"} <= set(params)
    assert found["enum"] == ["auto", "fp32", "bf16", "fp16"]


def test_qgis_process_lists_the_algorithms(qgis):
    done = qgis.process("list")
    assert done.returncode == 0, done.stderr
    assert "rsfusion:predict\t" in done.stdout and "rsfusion:predict_folder\t" in done.stdout
    plugins = qgis.process("plugins")
    assert "* rsfusion" in plugins.stdout  # enabled by the installer


SETTING = """
from processing.core.ProcessingConfig import ProcessingConfig
ProcessingConfig.setSettingValue("RSFUSION_PYTHON", VALUES["python"])
context = QgsProcessingContext()
feedback = QgsProcessingFeedback()
alg = QgsApplication.processingRegistry().algorithmById("rsfusion:predict")
params = {"CHECKPOINT": "m.ckpt", "RGB": VALUES["rgb"], "OUTPUT": VALUES["out"]}
try:
    alg.create().processAlgorithm(params, context, feedback)
    message = None
except QgsProcessingException as err:
    message = str(err)
ProcessingConfig.setSettingValue("RSFUSION_PYTHON", "")  # the profile is shared by the tests
QgsSettings().sync()
done({"message": message})
"""


def test_the_provider_setting_names_the_python(qgis, pair, tmp_path):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "error: the fake python ran" >&2\nexit 2\n')
    fake.chmod(0o755)
    found = qgis.pyqgis(SETTING, python=str(fake), rgb=str(pair[0]), out=str(tmp_path / "o"))
    assert found["message"] == "error: the fake python ran"  # not the recorded Python
