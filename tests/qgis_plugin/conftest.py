"""Fixtures for the QGIS plugin: a tiny checkpoint, a demo pair, QGIS in a throwaway profile.

QGIS runs with its own Python (/usr/bin/python3 on Debian, not the venv); tests that need it
skip with "QGIS not installed" where that Python cannot import ``qgis.core``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QGIS_PYTHON = "/usr/bin/python3"
QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
TINY = ["data.window=32", "data.batch_size=2", "data.samples_per_epoch=4",
        "data.train_tiles=[1,3]", "data.val_tiles=[2]", "trainer.max_steps=2",
        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"]  # fmt: skip


#: the start of every PyQGIS script: headless QGIS, Processing, the installed plugin loaded as
#: QGIS loads it (package ``rsfusion`` from the profile's plugins folder); ``done(result)``
#: prints the result as one JSON line and leaves without QGIS's exit (it may crash headless)
PRELUDE = """
import json, os, sys, threading, time
VALUES = json.loads({values!r})
sys.path.insert(0, VALUES["plugins"])
from qgis.core import *
app = QgsApplication([], False)
app.initQgis()
sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
from processing.core.Processing import Processing
Processing.initialize()
import rsfusion
plugin = rsfusion.classFactory(None)
plugin.initProcessing()

def done(result):
    sys.stdout.write("RESULT " + json.dumps(result) + "\\n")
    sys.stdout.flush()
    os._exit(0)
"""


@dataclass
class Qgis:
    """QGIS set up in a temporary home: its environment and the installed plugin's profile."""

    home: Path
    profile: Path
    env: dict[str, str]

    @property
    def plugins(self) -> Path:
        return self.profile / "python" / "plugins"

    def process(
        self, *args: str, cwd: Path | None = None, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess:
        """``qgis_process.bin ARGS`` (Debian's wrapper adds an option 3.22 rejects)."""
        return subprocess.run(
            [QGIS_PROCESS, *args], env={**self.env, **env}, capture_output=True, text=True,
            timeout=timeout, cwd=cwd or self.home,
        )  # fmt: skip

    def pyqgis(self, body: str, timeout: float = 300, **values: object) -> dict:
        """Run :data:`PRELUDE` + ``body`` with QGIS's Python (``VALUES``: ``values`` and the
        plugins folder); the dict ``body`` passed to ``done``."""
        values["plugins"] = str(self.plugins)
        script = self.home / "script.py"
        script.write_text(PRELUDE.format(values=json.dumps(values)) + body)
        done = subprocess.run(
            [QGIS_PYTHON, str(script)], env=self.env, capture_output=True, text=True,
            timeout=timeout, cwd=self.home,
        )  # fmt: skip
        found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert found, f"no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        return json.loads(found[-1].removeprefix("RESULT "))


def qgis_environment(home: Path) -> dict[str, str]:
    """A headless QGIS whose profile, settings and caches are all under ``home``."""
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "QGIS_"))}
    env.pop("RSFUSION_PYTHON", None)
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), QT_QPA_PLATFORM="offscreen",
               XDG_DATA_HOME=str(home / ".local" / "share"),
               XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"))  # fmt: skip
    return env


def has_qgis() -> bool:
    """Whether QGIS's Python imports ``qgis.core`` and ``qgis_process.bin`` is there."""
    if not (Path(QGIS_PYTHON).is_file() and Path(QGIS_PROCESS).is_file()):
        return False
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def qgis(tmp_path_factory) -> Qgis:
    """QGIS with the plugin installed (scripts/install_qgis_plugin.py) in a temporary profile."""
    if not has_qgis():
        pytest.skip("QGIS not installed")
    home = tmp_path_factory.mktemp("qgis_home")
    env = qgis_environment(home)
    profile = home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "install_qgis_plugin.py"), "--profile-dir",
         str(profile), "--python", sys.executable, "--no-check"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Qgis(home, profile, env)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A demo_baseline checkpoint trained for two steps on the committed fake Vaihingen tiles."""
    from rsfusion.cli.train import main as train_main

    out = tmp_path_factory.mktemp("run")
    root = REPO / "tests" / "data" / "vaihingen"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = ["--cfg", "demo_baseline", "--out", str(out), "--set", f"data.root={root}", *TINY]
        assert train_main(args) == 0
    return out / "checkpoints" / "last.ckpt"


def demo_pair(root: Path, size: int) -> tuple[Path, Path]:
    """The demo scene's area 1 at ``size`` px: (orthophoto, DSM)."""
    from rsfusion.data.demo import make_demo_scene

    make_demo_scene(root, areas=[1], size=size)
    return root / "top" / "top_mosaic_09cm_area1.tif", root / "dsm" / "dsm_09cm_matching_area1.tif"


@pytest.fixture(scope="session")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A 64 px demo pair."""
    return demo_pair(tmp_path_factory.mktemp("demo"), 64)


@pytest.fixture(scope="session")
def slow_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A 256 px demo pair: with 32 px windows at stride 8 it takes minutes (Cancel tests)."""
    return demo_pair(tmp_path_factory.mktemp("demo_slow"), 256)


def ensure_styles(out: Path, stem: str, ckpt: Path) -> list[str]:
    """Default styles for the outputs that have none (when predict.py writes no styles): the
    plugin's loading of default styles is what the tests check. Returns the class names."""
    from rsfusion.inference.predict import load_predictor
    from rsfusion.inference.styles import (
        classes_qml,
        polygons_qml,
        probability_qml,
        store_gpkg_style,
    )

    _, meta = load_predictor(ckpt)
    classes, palette = list(meta.classes), [list(c) for c in meta.palette]
    for name, text in (("classes", classes_qml(classes, palette)),
                       ("probs", probability_qml()), ("confidence", probability_qml())):  # fmt: skip
        qml = out / f"{stem}_{name}.qml"
        if not qml.exists():
            qml.write_text(text)
    gpkg = out / f"{stem}.gpkg"
    with sqlite3.connect(gpkg) as db:
        styled = db.execute("SELECT name FROM sqlite_master WHERE name='layer_styles'").fetchone()
    if not styled:
        store_gpkg_style(gpkg, "classes", polygons_qml(classes, palette))
    return classes


@dataclass
class Predicted:
    """predict.py's outputs for :func:`pair` (all four, styled) and the class names."""

    out: Path
    stem: str
    classes: list[str]


@pytest.fixture(scope="session")
def predicted(ckpt, pair, tmp_path_factory) -> Predicted:
    """The demo pair predicted by predict.py (in this process) with every output."""
    from rsfusion.cli.predict import main

    rgb, x = pair
    out = tmp_path_factory.mktemp("predicted")
    args = ["--ckpt", ckpt, "--rgb", rgb, "--x", x, "--out", out, "--vector", "--probs",
            "--confidence"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    return Predicted(out, rgb.stem, ensure_styles(out, rgb.stem, ckpt))
