"""scripts/install_qgis_plugin.py: the plugin copied into a profile, recorded and enabled.

(It tests rsfusion/cli/install_qgis_plugin.py; it sits here with the plugin's other tests.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rsfusion.cli.install_qgis_plugin import enabled_ini, main

REPO = Path(__file__).resolve().parents[2]


def test_install_copies_records_and_enables(tmp_path, capsys):
    profile = tmp_path / "profile"
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[qgis]\nsymbolsListGroupsIndex=0\n\n[PythonPlugins]\nother=true\n")
    stale = profile / "python" / "plugins" / "rsfusion" / "stale.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    assert main(["--profile-dir", str(profile), "--python", sys.executable, "--no-check"]) == 0
    plugin = profile / "python" / "plugins" / "rsfusion"
    assert "installed the rsfusion QGIS plugin in" in capsys.readouterr().out
    assert not stale.exists()  # an earlier copy is replaced, not merged
    assert {"__init__.py", "metadata.txt", "provider.py", "runner.py"} <= {
        p.name for p in plugin.iterdir()
    }
    assert not (plugin / "conftest.py").exists() and not (plugin / "__pycache__").exists()
    record = json.loads((plugin / "rsfusion_env.json").read_text())
    assert record["python"] == sys.executable and Path(record["repo"]) == REPO
    assert ini.read_text() == (
        "[qgis]\nsymbolsListGroupsIndex=0\n\n[PythonPlugins]\nother=true\nrsfusion=true\n"
    )
    assert not [p for p in plugin.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_the_plugin_version_is_the_package_version():
    import rsfusion

    metadata = (REPO / "rsfusion" / "qgis_plugin" / "metadata.txt").read_text().splitlines()
    assert f"version={rsfusion.__version__}" in metadata
    assert "hasProcessingProvider=yes" in metadata  # qgis_process loads only these plugins


def test_enabling_twice_keeps_one_line():
    text = enabled_ini(enabled_ini("[PythonPlugins]\nrsfusion=false\n"))
    assert text == "[PythonPlugins]\nrsfusion=true\n"


def test_a_python_without_rsfusion_is_refused(tmp_path, capsys):
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    assert main(["--profile-dir", str(tmp_path / "p"), "--python", str(fake)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --python") and "No module named 'torch'" in err
    assert "setup_env.sh" in err and not (tmp_path / "p").exists()
    assert main(["--profile-dir", str(tmp_path / "p"), "--python", str(tmp_path / "no")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_any_python_runs_the_installer(tmp_path):
    """QGIS's (or the system's) Python has no torch: the installer needs none."""
    python = "/usr/bin/python3"
    if not Path(python).is_file():
        pytest.skip(f"no {python}")
    script = REPO / "scripts" / "install_qgis_plugin.py"
    args = [python, str(script), "--profile-dir", str(tmp_path), "--python", sys.executable]
    done = subprocess.run([*args, "--no-check"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "python" / "plugins" / "rsfusion" / "__init__.py").is_file()
