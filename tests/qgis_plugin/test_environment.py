"""Which Python the plugin runs the prediction with: variable, setting, record, checkout."""

from __future__ import annotations

import json

import pytest

from rsfusion.qgis_plugin.environment import (
    ENV_FILE,
    ENV_VAR,
    EnvironmentNotFound,
    find_env,
    venv_python,
)


def _python(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def test_variable_then_setting_then_record(tmp_path):
    plugin = tmp_path / "plugins" / "rsfusion"
    plugin.mkdir(parents=True)
    repo = tmp_path / "repo"
    recorded = _python(repo / ".venv" / "bin" / "python")
    (plugin / ENV_FILE).write_text(json.dumps({"python": str(recorded), "repo": str(repo)}))
    by_var, by_setting = _python(tmp_path / "a" / "python"), _python(tmp_path / "b" / "python")
    env = find_env(str(by_setting), plugin, {ENV_VAR: str(by_var)})
    assert (env.python, env.repo) == (str(by_var), str(repo)) and ENV_VAR in env.source
    env = find_env(str(by_setting), plugin, {})
    assert env.python == str(by_setting) and "setting" in env.source
    env = find_env("", plugin, {})
    assert env.python == str(recorded) and env.source.endswith(ENV_FILE)


def test_a_named_python_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(EnvironmentNotFound, match=f"{ENV_VAR} names .*nowhere.*install_qgis"):
        find_env(None, tmp_path, {ENV_VAR: str(tmp_path / "nowhere")})


def test_nothing_found_says_how_to_install(tmp_path):
    with pytest.raises(EnvironmentNotFound, match="no Python .* scripts/install_qgis_plugin.py"):
        find_env(None, tmp_path, {})


def test_a_checkout_uses_its_venv(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    plugin = tmp_path / "rsfusion" / "qgis_plugin"
    plugin.mkdir(parents=True)
    python = _python(venv_python(tmp_path / ".venv"))
    env = find_env(None, plugin, {})
    assert (env.python, env.repo) == (str(python), str(tmp_path))
